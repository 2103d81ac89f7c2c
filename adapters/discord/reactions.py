"""Reactions as feedback: a 👍 or 👎 on one of the bot's replies tells the trainer what the
reply was worth, and taking it off takes that back.

The client listens to the *raw* reaction events, which Discord sends for every message in
reach (the guild message reactions and DM reactions intents, neither privileged), whether
discord.py has the message cached or not. A reaction's way, one short step each:
:func:`reaction_facts` (discord.RawReactionActionEvent → :class:`~adapters.discord.policy.Reaction`,
or nothing for other emoji, bots and the bot itself), the reply the message belongs to (each
message of a finished reply is remembered in Redis; a reaction on any other message stops
here), the reactions standing on that reply (:meth:`DiscordState.react`), and
:meth:`bot.commands.Commands.feedback` with the reply's feedback: the value of the most recent
👍/👎 still on any of its messages, ``0`` once none is left. The trainer stores it with the
archived exchange (:class:`bot.wire.Feedback`, the same path the Telegram adapter and the web
page use).

Reactions are handled one at a time, in the order the gateway delivered them, so the trainer
receives the values in the order they happened.
"""

from __future__ import annotations

import asyncio
import logging
import time

import discord

from adapters.discord import policy
from adapters.discord.metrics import DiscordMetrics
from adapters.discord.policy import Reaction
from adapters.discord.state import DiscordState
from bot.commands import Caller, Commands
from bot.errors import ParleyError
from bot.settings import DiscordSettings

log = logging.getLogger(__name__)


def reaction_facts(event: discord.RawReactionActionEvent, bot_id: int) -> Reaction | None:
    """The 👍/👎 in ``event``, or ``None`` if it cannot be feedback.

    A removal names no member, so a bot's removal is not recognised here; it changes nothing
    later because the bot's add was never counted.
    """
    if event.user_id == bot_id or (event.member is not None and event.member.bot):
        return None
    if event.message_author_id is not None and event.message_author_id != bot_id:
        return None  # only an add names the author; removals are checked against Redis
    value = policy.thumb(event.emoji.name, custom=event.emoji.id is not None)
    if value is None:
        return None
    return Reaction(
        message_id=event.message_id,
        channel_id=event.channel_id,
        user_id=event.user_id,
        emoji=event.emoji.name or "",
        super_reaction=event.burst,
        value=value,
        added=event.event_type == "REACTION_ADD",
    )


class DiscordReactions:
    """Turns reactions on the bot's replies into feedback for the trainer."""

    def __init__(
        self,
        settings: DiscordSettings,
        *,
        state: DiscordState,
        commands: Commands,
        metrics: DiscordMetrics,
        adapter_id: str,
    ) -> None:
        self.settings = settings
        self.state = state
        self.commands = commands
        self.metrics = metrics
        self.adapter_id = adapter_id
        self._in_order = asyncio.Lock()
        """FIFO: handlers take it before their first await, so they run in gateway order."""

    async def handle(self, reaction: Reaction) -> None:
        """Send the feedback ``reaction`` makes on the reply it is on, if it is on one."""
        async with self._in_order:
            try:
                await self._handle(reaction)
            except ParleyError as e:  # Redis trouble: this reaction is lost, the rest go on
                self.metrics.errors.labels(self.adapter_id, "queue").inc()
                log.warning("discord reaction on %s not recorded: %s", reaction.message_id, e)

    async def _handle(self, reaction: Reaction) -> None:
        request_id = await self.state.reply_of(reaction.message_id)
        if request_id is None:
            return
        at_ms = int(time.time() * 1000)
        value = await self.state.react(request_id, reaction, at_ms=at_ms)
        if value is None:
            return
        await self.commands.feedback(self._caller(reaction), request_id, value)
        log.info("discord: feedback %+d on %s", value, request_id)

    def _caller(self, reaction: Reaction) -> Caller:
        return Caller(
            platform=policy.PLATFORM,
            user=str(reaction.user_id),
            conversation=policy.context_key(
                self.settings,
                channel_id=reaction.channel_id,
                user_id=reaction.user_id,
                chain_root=None,
            ),
            request_id=policy.reaction_request_id(reaction.message_id, reaction.user_id),
            reply_to=self.adapter_id,
        )
