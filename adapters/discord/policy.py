"""What the Discord adapter decides, as pure functions of plain facts (no discord.py types).

Whether to answer a message and why, the conversation key it belongs to, the request id that
makes a redelivery recognisable, which reactions are feedback (👍 and 👎), who counts as an
admin, and how a reply's text is made harmless (``@everyone``/``@here`` broken with a
zero-width space; the allowed-mentions setting that stops every other ping is set where
messages are sent).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from bot.settings import DiscordSettings

PLATFORM = "discord"

Reason = Literal["dm", "mention", "reply", "thread", "channel", "random"]
"""Why the bot answers a message."""

ZERO_WIDTH_SPACE = "\u200b"
_MASS_MENTION = re.compile(r"@(everyone|here)")


@dataclass(frozen=True)
class Incoming:
    """The facts of one Discord message that the decisions need."""

    message_id: int
    channel_id: int
    author_id: int
    author_is_bot: bool
    is_dm: bool
    mentions_bot: bool
    replies_to: int | None
    """Id of the message this one replies to, if any."""
    replies_to_bot: bool
    in_thread: bool
    thread_joined: bool
    """The bot takes part in this thread (it answered in it before, or started it)."""
    parent_channel_id: int | None
    """For a thread, the channel it belongs to."""
    text: str
    """The message text with the bot's own mention taken out."""
    has_attachments: bool


def why_answer(
    message: Incoming, settings: DiscordSettings, *, chance: Callable[[], float]
) -> Reason | None:
    """Why the bot answers ``message``, or ``None`` if it stays quiet.

    ``chance()`` returns a number in [0, 1) for the random replies (``random.random``).
    """
    if message.author_is_bot:
        return None
    if message.is_dm:
        return "dm" if settings.allow_dms else None
    if message.mentions_bot:
        return "mention"
    if message.replies_to_bot:
        return "reply"
    if message.in_thread and message.thread_joined:
        return "thread"
    channels = set(settings.answer_channels)
    if message.channel_id in channels or (
        message.in_thread and message.parent_channel_id in channels
    ):
        return "channel"
    p = settings.random_reply_probability
    if p > 0 and message.text.strip() and chance() < p:
        return "random"
    return None


def strip_mention(text: str, bot_id: int) -> str:
    """``text`` without the bot's own mention (``<@id>`` or ``<@!id>``), tidied."""
    return re.sub(rf"<@!?{bot_id}>", "", text).strip()


def neutralise(text: str) -> str:
    """``text`` with ``@everyone`` and ``@here`` broken so they can never ping, and masked
    links (``[text](url)``) broken so a model cannot dress a link up as other words."""
    text = _MASS_MENTION.sub("@" + ZERO_WIDTH_SPACE + r"\1", text)
    return text.replace("](", "]" + ZERO_WIDTH_SPACE + "(")


def context_key(
    settings: DiscordSettings, *, channel_id: int, user_id: int, chain_root: int | None
) -> str:
    """The conversation a message belongs to, per ``settings.context``.

    ``reply-chain`` without a chain (a slash command) falls back to channel and user.
    """
    if settings.context == "channel":
        return f"{PLATFORM}:{channel_id}"
    if settings.context == "reply-chain" and chain_root is not None:
        return f"{PLATFORM}:{channel_id}:chain:{chain_root}"
    return f"{PLATFORM}:{channel_id}:{user_id}"


@dataclass(frozen=True)
class Reaction:
    """A 👍 or 👎 a user (not a bot) put on a message, or took off it."""

    message_id: int
    channel_id: int
    user_id: int
    emoji: str
    """As Discord names it, skin tone included: the removal names it the same way."""
    super_reaction: bool
    value: Literal[-1, 1]
    added: bool
    """True when put on, false when taken off."""


THUMBS: dict[str, Literal[-1, 1]] = {"\N{THUMBS UP SIGN}": 1, "\N{THUMBS DOWN SIGN}": -1}
_SKIN_TONE = re.compile("[\U0001f3fb-\U0001f3ff]")
_VARIATION_SELECTOR = "\ufe0f"


def thumb(emoji_name: str | None, *, custom: bool) -> Literal[-1, 1] | None:
    """``1`` for a 👍 reaction (any skin tone), ``-1`` for a 👎, ``None`` for anything else
    (a server's own emoji is never a thumb, whatever its name)."""
    if custom or not emoji_name:
        return None
    plain = _SKIN_TONE.sub("", emoji_name).replace(_VARIATION_SELECTOR, "")
    return THUMBS.get(plain)


def reaction_request_id(message_id: int, user_id: int) -> str:
    """Names the feedback a user's reaction on message ``message_id`` sends."""
    return f"{PLATFORM}-r-{message_id}-{user_id}"


def message_request_id(message_id: int) -> str:
    """The request id of a chat message: the same for every delivery of that message."""
    return f"{PLATFORM}-m-{message_id}"


def interaction_request_id(interaction_id: int) -> str:
    """The request id of a slash command: the same for every delivery of that interaction."""
    return f"{PLATFORM}-i-{interaction_id}"


def is_admin(settings: DiscordSettings, user_id: int, role_ids: Iterable[int]) -> bool:
    """Whether the user is an admin: listed by id, or holding a listed role."""
    if user_id in settings.admin_ids:
        return True
    return not set(settings.admin_role_ids).isdisjoint(role_ids)


def too_long(settings: DiscordSettings, text: str) -> str | None:
    """The answer to a message over the length limit, else ``None``."""
    if len(text) <= settings.max_message_chars:
        return None
    return (
        f"That message is too long for me ({len(text)} characters); "
        f"please keep it under {settings.max_message_chars}."
    )


def slow_down(retry_after_s: float | None) -> str:
    """The notice a rate-limited user gets (once per blocked spell for messages)."""
    text = "You're sending messages faster than I can answer."
    if retry_after_s is None:
        return text + " Try again in a moment."
    return text + f" Try again in {max(1, round(retry_after_s))} s."


ONLY_TEXT = "I can only read text messages."
"""The note in DMs for a message that is only attachments."""

NO_DMS = "I only chat in servers here, not in direct messages."
"""The answer to ``/chat`` in a DM when ``allow_dms`` is off (plain DMs get no answer)."""
