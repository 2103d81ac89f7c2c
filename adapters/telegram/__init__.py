"""The Telegram adapter (python-telegram-bot): private chats, groups, commands, streamed replies.

Run it with ``parley adapter telegram`` (or ``parley run`` with a token set); :func:`serve`
is its entry point. See the README's "Telegram" section for the set-up.
"""

from adapters.telegram.service import serve

__all__ = ["serve"]
