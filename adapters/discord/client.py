"""The discord.py client Parley runs: intents, no pings, 429s counted, commands synced,
reactions handed on as feedback, and the replies a dead process owed delivered once the
gateway is ready.

:func:`point_library_at` aims discord.py at the configured REST base and gateway, which is
how Parley runs against a Discord-compatible server and the test fake.
"""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import aiohttp
import discord
import yarl
from discord.gateway import DiscordWebSocket

from adapters.discord.adopt import Adoption
from adapters.discord.chat import DiscordChat
from adapters.discord.reactions import DiscordReactions, reaction_facts
from adapters.discord.sinks import NO_PINGS
from adapters.discord.slash import SlashCommands
from bot.settings import DiscordSettings

log = logging.getLogger(__name__)


def point_library_at(settings: DiscordSettings) -> None:
    """Make discord.py talk to ``settings.api_base`` and ``settings.gateway_url``.

    discord.py builds every REST URL (interaction callbacks and webhooks included) from the
    class attribute ``discord.http.Route.BASE``, which it sets itself when the API version
    changes, and opens its first gateway connection at ``DiscordWebSocket.DEFAULT_GATEWAY``
    (later ones at the ``resume_gateway_url`` the gateway names). Setting both is the way the
    library offers to point it elsewhere; they are process-wide, so one process runs one
    Discord adapter.
    """
    discord.http.Route.BASE = settings.api_base.rstrip("/")
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.gateway_url)


def intents(message_content: bool) -> discord.Intents:
    """Guilds, guild and DM messages and their reactions (👍/👎 as feedback); message content
    only when asked for (the one privileged intent)."""
    wanted = discord.Intents.none()
    wanted.guilds = True
    wanted.guild_messages = True
    wanted.dm_messages = True
    wanted.guild_reactions = True
    wanted.dm_reactions = True
    wanted.message_content = message_content
    return wanted


class ParleyDiscordClient(discord.Client):
    """Hands messages to :class:`DiscordChat`, interactions to :class:`SlashCommands` and
    reactions to :class:`DiscordReactions`."""

    def __init__(
        self,
        settings: DiscordSettings,
        chat: DiscordChat,
        slash: SlashCommands,
        reactions: DiscordReactions,
        *,
        message_content: bool,
        ready: asyncio.Event | None = None,
        adoption: Adoption | None = None,
    ) -> None:
        trace = aiohttp.TraceConfig()
        trace.on_request_end.append(self._count_429)
        super().__init__(
            intents=intents(message_content),
            allowed_mentions=NO_PINGS,
            http_trace=trace,
            guild_ready_timeout=settings.guild_ready_timeout_s,
        )
        self.chat = chat
        self.slash = slash
        self.reactions = reactions
        self.parley_ready = ready
        self.adoption = adoption
        self.tree = slash.tree(self)

    async def setup_hook(self) -> None:
        await self.slash.sync(self.tree)

    async def on_ready(self) -> None:
        assert self.user is not None
        log.info(
            "discord: connected as %s (id %s) in %d guild(s)",
            self.user,
            self.user.id,
            len(self.guilds),
        )
        if self.adoption is not None:
            self.chat.spawn(self.adoption.adopt(self), "adopting owed replies")
        if self.parley_ready is not None:
            self.parley_ready.set()

    async def on_resumed(self) -> None:
        log.info("discord: gateway session resumed")

    async def on_message(self, message: discord.Message) -> None:
        if self.user is None or message.author.id == self.user.id:
            return
        self.chat.spawn(self.chat.on_message(message, self.user.id), f"message {message.id}")

    async def on_raw_reaction_add(self, event: discord.RawReactionActionEvent) -> None:
        self._reaction(event)

    async def on_raw_reaction_remove(self, event: discord.RawReactionActionEvent) -> None:
        self._reaction(event)

    def _reaction(self, event: discord.RawReactionActionEvent) -> None:
        """Hand a 👍/👎 to :class:`DiscordReactions`, in the order the gateway sent them."""
        if self.user is None:
            return
        reaction = reaction_facts(event, self.user.id)
        if reaction is not None:
            self.chat.spawn(self.reactions.handle(reaction), f"reaction on {event.message_id}")

    async def _count_429(
        self,
        session: aiohttp.ClientSession,
        context: SimpleNamespace,
        params: aiohttp.TraceRequestEndParams,
    ) -> None:
        """Count Discord's 429s; the library itself waits and retries them."""
        if params.response.status == 429:
            self.chat.metrics.rate_limited.labels(self.chat.adapter_id).inc()
