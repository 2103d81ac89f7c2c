"""Where a reply goes on Discord: a channel (as a reply to the user's message) or the
follow-ups of a slash command. Both are :class:`adapters.pump.MessageSink` s.

Every text is neutralised (``@everyone``/``@here`` broken) and sent with no allowed mentions,
so nothing the model writes pings anyone. A message deleted while its reply streams (404) or
out of reach (403) raises :class:`ReplyGone`, which ends that reply quietly. A sink given a
``claim`` posts a reply's first message only if the claim is new, else raises
:class:`ReplyGone` (the reply was posted, by this process or another).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import discord

from adapters.discord.metrics import DiscordMetrics
from adapters.discord.policy import neutralise
from adapters.pump import ReplyGone

log = logging.getLogger(__name__)

Claim = Callable[[], Awaitable[bool]]
"""True if this process may post the reply (it is the first to claim it)."""

NO_PINGS = discord.AllowedMentions.none()
"""No user, role, @everyone/@here or replied-user ping, whatever the text says."""


class ChannelSink:
    """Posts a reply in the channel of the user's message; the first message references it.

    ``on_sent`` is awaited with each message as soon as it is posted, before the reply goes
    on, so what it records (the reply chain, a joined thread) holds for a user message that
    comes while the reply still streams.
    """

    def __init__(
        self,
        channel: discord.abc.Messageable,
        *,
        reference: discord.Message | discord.PartialMessage | None,
        metrics: DiscordMetrics,
        adapter_id: str,
        on_sent: Callable[[discord.Message], Awaitable[None]] | None = None,
        claim: Claim | None = None,
    ) -> None:
        self.channel = channel
        self.reference = reference
        self.on_sent = on_sent
        self.claim = claim
        self._sent = metrics.sent.labels(adapter_id)

    async def send(self, text: str, *, first: bool) -> discord.Message:
        if first:
            await _claimed(self.claim)
        content = neutralise(text)
        if first and self.reference is not None:
            # The reply still lands if the user deleted their message meanwhile.
            ref = self.reference.to_reference(fail_if_not_exists=False)
            message = await self.channel.send(content, reference=ref, allowed_mentions=NO_PINGS)
        else:
            message = await self.channel.send(content, allowed_mentions=NO_PINGS)
        self._sent.inc()
        if self.on_sent is not None:
            await self.on_sent(message)
        return message

    async def edit(self, handle: discord.Message, text: str) -> None:
        try:
            await handle.edit(content=neutralise(text), allowed_mentions=NO_PINGS)
        except (discord.NotFound, discord.Forbidden) as e:
            raise ReplyGone(str(e)) from e


class FollowupSink:
    """Answers a deferred slash command with follow-up messages (edited while it streams)."""

    def __init__(
        self,
        interaction: discord.Interaction,
        *,
        ephemeral: bool,
        metrics: DiscordMetrics,
        adapter_id: str,
        claim: Claim | None = None,
    ) -> None:
        self.interaction = interaction
        self.ephemeral = ephemeral
        self.claim = claim
        self._sent = metrics.sent.labels(adapter_id)

    async def send(self, text: str, *, first: bool) -> discord.Message:
        if first:
            await _claimed(self.claim)
        message = await self.interaction.followup.send(
            neutralise(text), wait=True, ephemeral=self.ephemeral, allowed_mentions=NO_PINGS
        )
        self._sent.inc()
        return message

    async def edit(self, handle: discord.Message, text: str) -> None:
        try:
            await handle.edit(content=neutralise(text), allowed_mentions=NO_PINGS)
        except (discord.NotFound, discord.Forbidden) as e:
            raise ReplyGone(str(e)) from e


async def _claimed(claim: Claim | None) -> None:
    """Go on only if ``claim`` is new (or there is none); else :class:`ReplyGone`."""
    if claim is not None and not await claim():
        log.info("discord: this reply was posted already; not posting it again")
        raise ReplyGone("already replied")
