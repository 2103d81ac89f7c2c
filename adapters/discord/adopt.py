"""Delivering the replies a dead process of this adapter left owed (:mod:`adapters.discord.owed`).

Once the gateway is ready (and on every later READY, after a reconnect), :meth:`Adoption.adopt`
loads the records kept under this adapter id that are not being delivered here, reads the
reply stream each was answered to from before its first event, and delivers each reply like
any other: in the record's channel, as a reply to the user's message, under the reply's claim.
A reply that was posted already is therefore not posted again; one whose process died while it
streamed stays as far as it got.

An owed ``/chat`` reply cannot go into the interaction's follow-up any more (its token lives
in the dead process and expires after 15 minutes): it is posted as a plain message in the
interaction's channel, replying to nothing, with a log line saying so.

Adoption needs a process to come back under the same adapter id: set ``discord.adapter_id``
(the default, ``discord-<host>-<pid>``, changes with every process).
"""

from __future__ import annotations

import asyncio
import logging

import discord
from redis.exceptions import RedisError

from adapters.discord.chat import DiscordChat
from adapters.discord.owed import DiscordOwed, Ledger
from adapters.discord.policy import PLATFORM
from bot.errors import ParleyError
from bot.queue import ParleyClient
from bot.wire import ChatRequest

log = logging.getLogger(__name__)


class Adoption:
    """Finds and delivers the replies owed under this adapter id by processes now gone."""

    def __init__(self, chat: DiscordChat, ledger: Ledger, *, timeout_s: float) -> None:
        self.chat = chat
        self.ledger = ledger
        self.timeout_s = timeout_s

    async def adopt(self, client: discord.Client) -> None:
        """Start delivering every reply still owed that is not being delivered here."""
        try:
            records = await self.ledger.pending.load()
        except (RedisError, OSError) as e:
            log.warning("discord: could not read the replies still owed: %s", e)
            return
        owed = [r for r in records if r.request_id not in self.ledger.in_flight]
        by_stream: dict[str, list[DiscordOwed]] = {}
        for record in owed:
            by_stream.setdefault(record.reply_to, []).append(record)
        for reply_to, group in by_stream.items():
            await self._adopt_from(client, reply_to, group)

    async def _adopt_from(
        self, client: discord.Client, reply_to: str, records: list[DiscordOwed]
    ) -> None:
        tracked = self.ledger.client
        source = await tracked.adopt_from(reply_to, records, timeout_s=self.timeout_s)
        if source is None:
            return
        self.ledger.in_flight.update(r.request_id for r in records)
        log.info("discord: delivering %d repl(ies) owed by %s", len(records), reply_to)
        self.chat.spawn(self._deliver(client, source, records), f"owed by {reply_to}")

    async def _deliver(
        self, client: discord.Client, source: ParleyClient, records: list[DiscordOwed]
    ) -> None:
        try:
            await asyncio.gather(*(self._deliver_one(client, r) for r in records))
        finally:
            await source.close()

    async def _deliver_one(self, client: discord.Client, record: DiscordOwed) -> None:
        request = ChatRequest(
            id=record.request_id,
            conversation=record.conversation,
            reply_to=record.reply_to,
            text="",  # not kept: the reply only needs where it goes
            user=record.user,
            platform=PLATFORM,
            created_ms=record.created_ms,
        )
        channel = client.get_partial_messageable(record.channel_id)
        reference = None
        if record.message_id is not None:
            reference = channel.get_partial_message(record.message_id)
        else:
            log.info(
                "discord: the /chat reply owed to %s goes to channel %s as a plain message",
                record.request_id,
                record.channel_id,
            )
        sink = self.chat.reply_sink(channel, reference, record)
        try:
            await self.chat.stream(request, sink, typing=channel, owed=record)
        except (ParleyError, discord.HTTPException) as e:
            log.warning("discord: the reply owed to %s failed: %s", record.request_id, e)
