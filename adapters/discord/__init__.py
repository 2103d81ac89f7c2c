"""The Discord adapter (discord.py): chat in servers, threads and DMs, slash commands,
streamed replies. It meets the engine only through the queue; :func:`serve` runs it."""

from adapters.discord.service import serve

__all__ = ["serve"]
