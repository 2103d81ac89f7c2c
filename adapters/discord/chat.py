"""The Discord chat path: a message (or ``/chat``) in, a streamed reply out.

A message's way, one short step each: :func:`facts` (discord.Message → :class:`Incoming`),
:func:`~adapters.discord.policy.why_answer`, the claim of its request id (a redelivery stops
here), the per-user rate limit (one notice per blocked spell), the length check, a
:class:`~bot.wire.ChatRequest`, and :meth:`DiscordChat.stream`, which shows the reply events
through a sink (typing indicator until the first message, edits at most once per
``edit_interval_s``, continuation messages past 2,000 characters). A failed reply becomes a
short human message, never silence and never a traceback in the channel. The messages of a
finished reply are remembered, so a 👍/👎 on them is feedback on it
(:mod:`adapters.discord.reactions`). A chat reply is kept as owed from its submit until it is
delivered (:mod:`adapters.discord.owed`), and its first message is posted only under its
claim, so a later process delivers it if this one dies, and nobody posts it twice.

Handlers run as tasks this class tracks, so :meth:`DiscordChat.drain` lets the replies in
flight finish before the adapter stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import aclosing
from typing import Any

import discord

from adapters.discord import policy
from adapters.discord.metrics import DiscordMetrics
from adapters.discord.owed import DiscordOwed, Ledger
from adapters.discord.policy import Incoming
from adapters.discord.sinks import ChannelSink, Claim
from adapters.discord.state import DiscordState
from adapters.pump import MessageSink, ReplyGone, StreamedReply, keep_typing, pump
from adapters.replies import Replies, now_ms
from bot.errors import ParleyError
from bot.ratelimit import RateLimiter
from bot.settings import DiscordSettings
from bot.wire import ChatRequest, Done, Error

log = logging.getLogger(__name__)

MESSAGE_LIMIT = 2000
"""Discord's cap on one message's content."""
TYPING_EVERY_S = 8.0
"""A typing indicator lasts about 10 s on Discord; renew it before it fades."""
EMPTY_REPLY = "…"
"""Shown when the model's whole reply is empty, so a user is never left without an answer."""
FAILED = "Something went wrong on my side. Please try again in a moment."


async def facts(message: discord.Message, bot_id: int, state: DiscordState) -> Incoming:
    """The facts :func:`~adapters.discord.policy.why_answer` needs about ``message``."""
    channel = message.channel
    thread = channel if isinstance(channel, discord.Thread) else None
    joined = thread is not None and (
        thread.owner_id == bot_id or await state.joined_thread(thread.id)
    )
    resolved = message.reference.resolved if message.reference else None
    return Incoming(
        message_id=message.id,
        channel_id=channel.id,
        author_id=message.author.id,
        author_is_bot=message.author.bot,
        is_dm=isinstance(channel, discord.DMChannel),
        mentions_bot=any(user.id == bot_id for user in message.mentions),
        replies_to=message.reference.message_id if message.reference else None,
        replies_to_bot=isinstance(resolved, discord.Message) and resolved.author.id == bot_id,
        in_thread=thread is not None,
        thread_joined=joined,
        parent_channel_id=thread.parent_id if thread is not None else None,
        text=policy.strip_mention(message.content, bot_id),
        has_attachments=bool(message.attachments),
    )


class DiscordChat:
    """Answers Discord messages and ``/chat`` through the queue."""

    def __init__(
        self,
        settings: DiscordSettings,
        *,
        replies: Replies,
        limiter: RateLimiter,
        state: DiscordState,
        metrics: DiscordMetrics,
        ledger: Ledger | None = None,
        chance: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.replies = replies
        self.limiter = limiter
        self.state = state
        self.metrics = metrics
        self.chance = chance
        self.adapter_id = replies.adapter_id
        self.accepting = True
        self._tasks: set[asyncio.Task[None]] = set()

    # -- task bookkeeping --------------------------------------------------------------------

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``work`` as a tracked task; a failure is logged and counted, never raised."""
        if not self.accepting:
            work.close()
            return
        task = asyncio.create_task(self._guarded(work, name), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guarded(self, work: Awaitable[None], name: str) -> None:
        try:
            await work
        except discord.HTTPException as e:  # e.g. no permission to post in that channel
            self.metrics.errors.labels(self.adapter_id, "discord").inc()
            log.warning("discord %s: Discord refused a request: %s", name, e)
        except Exception:  # one failing message must not take the adapter down
            self.metrics.errors.labels(self.adapter_id, "handler").inc()
            log.exception("discord %s failed", name)

    async def drain(self, timeout_s: float) -> None:
        """Take no new messages; wait up to ``timeout_s`` for the replies in flight."""
        self.accepting = False
        if self._tasks:
            log.info("discord: finishing %d reply(ies) in flight", len(self._tasks))
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
            for task in pending:
                task.cancel()

    # -- messages ----------------------------------------------------------------------------

    async def on_message(self, message: discord.Message, bot_id: int) -> None:
        """Answer ``message`` if the settings say so."""
        incoming = await facts(message, bot_id, self.state)
        reason = policy.why_answer(incoming, self.settings, chance=self.chance)
        if reason is None:
            return
        if not incoming.text:
            if incoming.is_dm and incoming.has_attachments:
                await self._notice(message, policy.ONLY_TEXT)
            return
        try:
            await self._answer(message, incoming, reason)
        except ParleyError as e:  # Redis trouble: say so briefly rather than go silent
            self.metrics.errors.labels(self.adapter_id, "queue").inc()
            log.warning("discord message %s could not be answered: %s", message.id, e)
            await self._notice(message, FAILED)

    async def _answer(self, message: discord.Message, incoming: Incoming, reason: str) -> None:
        request_id = policy.message_request_id(message.id)
        if not await self.state.claim(request_id):
            log.info("discord message %s was delivered again; already answered", message.id)
            return
        self.metrics.messages.labels(self.adapter_id, reason).inc()
        refusal = await self.refusal(incoming.author_id, incoming.text)
        if refusal is not None:
            if refusal:
                await self._notice(message, refusal)
            return
        root = await self._chain_root(incoming)
        request = self.chat_request(
            request_id,
            incoming.text,
            channel_id=incoming.channel_id,
            user_id=incoming.author_id,
            chain_root=root,
        )
        owed = DiscordOwed(
            request_id=request_id,
            reply_to=self.adapter_id,
            conversation=request.conversation,
            user=request.user,
            created_ms=request.created_ms,
            channel_id=incoming.channel_id,
            message_id=message.id,
            chain_root=root,
            in_thread=incoming.in_thread,
        )
        sink = self.reply_sink(message.channel, message, owed)
        await self.stream(request, sink, typing=message.channel, owed=owed)

    def reply_sink(
        self,
        channel: discord.abc.Messageable,
        reference: discord.Message | discord.PartialMessage | None,
        owed: DiscordOwed,
    ) -> ChannelSink:
        """Where the reply ``owed`` describes goes: ``channel``, answering ``reference``."""
        return ChannelSink(
            channel,
            reference=reference,
            metrics=self.metrics,
            adapter_id=self.adapter_id,
            on_sent=self._bookkeeping(owed.channel_id, owed.in_thread, owed.chain_root),
            claim=self.claim(owed.request_id),
        )

    def claim(self, request_id: str) -> Claim:
        """The claim under which the reply to ``request_id`` is posted (once, anywhere)."""

        async def claim() -> bool:
            return await self.state.claim_reply(request_id)

        return claim

    async def refusal(self, user_id: int, text: str) -> str | None:
        """Why not to answer (a notice to send, or ``""`` to stay quiet), else ``None``."""
        verdict = await self.limiter.hit(policy.PLATFORM, str(user_id))
        if not verdict.allowed:
            self.metrics.throttled.labels(self.adapter_id).inc()
            return policy.slow_down(verdict.retry_after_s) if verdict.notify else ""
        return policy.too_long(self.settings, text)

    def chat_request(
        self, request_id: str, text: str, *, channel_id: int, user_id: int, chain_root: int | None
    ) -> ChatRequest:
        conversation = policy.context_key(
            self.settings, channel_id=channel_id, user_id=user_id, chain_root=chain_root
        )
        log.debug("discord %s on %s: %.80r", request_id, conversation, text)
        return ChatRequest(
            id=request_id,
            conversation=conversation,
            reply_to=self.adapter_id,
            text=text,
            user=str(user_id),
            platform=policy.PLATFORM,
            created_ms=now_ms(),
        )

    async def _chain_root(self, incoming: Incoming) -> int | None:
        if self.settings.context != "reply-chain":
            return None
        if incoming.replies_to is not None:
            root = await self.state.chain_root(incoming.replies_to)
            if root is not None:
                return root
        return incoming.message_id

    def _bookkeeping(
        self, channel_id: int, in_thread: bool, root: int | None
    ) -> Callable[[discord.Message], Awaitable[None]]:
        """What each message of a reply records for the next user message, as soon as it is
        posted: its link to the reply chain started at ``root`` (if any), and that the bot
        takes part in the thread it is in."""

        async def record(sent: discord.Message) -> None:
            try:
                if root is not None:
                    await self.state.extend_chain([sent.id], root)
                if in_thread:
                    await self.state.join_thread(channel_id)
            except ParleyError as e:  # the reply goes on; only this bookkeeping is lost
                self.metrics.errors.labels(self.adapter_id, "queue").inc()
                log.warning("discord: message %s posted, not recorded: %s", sent.id, e)

        return record

    async def _notice(self, message: discord.Message, text: str) -> None:
        sink = ChannelSink(
            message.channel, reference=message, metrics=self.metrics, adapter_id=self.adapter_id
        )
        await sink.send(text, first=True)

    # -- replies -----------------------------------------------------------------------------

    async def stream(
        self,
        request: ChatRequest,
        sink: MessageSink[discord.Message],
        *,
        typing: discord.abc.Messageable | None,
        owed: DiscordOwed | None = None,
    ) -> list[discord.Message]:
        """Show ``request``'s reply through ``sink``; the messages it posted. ``owed``: the
        reply's record, kept from the submit until the reply is delivered."""
        if owed is None or self.ledger is None:
            return await self._show(request, sink, typing)
        self.ledger.owe(owed)
        delivered = False
        try:
            messages = await self._show(request, sink, typing)
            delivered = True
            return messages
        finally:
            await self.ledger.settle(request.id, delivered=delivered)

    async def _show(
        self,
        request: ChatRequest,
        sink: MessageSink[discord.Message],
        typing: discord.abc.Messageable | None,
    ) -> list[discord.Message]:
        reply: StreamedReply[discord.Message] = StreamedReply(
            sink,
            limit=MESSAGE_LIMIT,
            interval_s=self.settings.edit_interval_s,
            measure=lambda text: len(policy.neutralise(text)),
        )
        typing_cm: contextlib.AbstractAsyncContextManager[None] = contextlib.nullcontext()
        if typing is not None:
            typing_cm = keep_typing(
                _typer(typing), every_s=TYPING_EVERY_S, until=lambda: reply.started
            )
        async with typing_cm, aclosing(self.replies.events(request)) as events:
            final = await pump(reply, events)
        if reply.edits:
            self.metrics.edits.labels(self.adapter_id).inc(reply.edits)
        if reply.gone:
            return reply.messages
        if isinstance(final, Done) and reply.messages:
            await self._remember(request.id, reply.messages)
        try:
            if isinstance(final, Error):
                await sink.send(final.message, first=not reply.started)
            elif not reply.started:
                text = EMPTY_REPLY if isinstance(final, Done) else FAILED
                await sink.send(text, first=True)
        except ReplyGone as e:  # claimed elsewhere, or the channel is gone
            log.info("discord %s: the reply's last message was not posted: %s", request.id, e)
        return reply.messages

    async def _remember(self, request_id: str, messages: list[discord.Message]) -> None:
        """Which request ``messages`` answer, so a reaction on them is feedback on it."""
        try:
            await self.state.remember_reply((m.id for m in messages), request_id)
        except ParleyError as e:  # the reply itself is out; only its feedback is lost
            self.metrics.errors.labels(self.adapter_id, "queue").inc()
            log.warning(
                "discord %s: answered, but reactions on it will not count: %s", request_id, e
            )


def _typer(channel: discord.abc.Messageable) -> Callable[[], Awaitable[None]]:
    async def show() -> None:
        await channel.typing()

    return show
