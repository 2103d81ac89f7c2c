"""Handling Telegram updates: each becomes a streamed reply, a command's answer, a note,
feedback, or nothing.

:meth:`TelegramAdapter.accept` starts handling a batch of updates and returns once every one
of them is *taken*: its request is in its Redis request stream (chat messages, ``/reset``,
``/forget``), or its answer is sent (other commands, notes; a command still running after
:data:`COMMAND_HOLD_S` counts as taken), or it needs nothing more. The poller confirms the
batch's offset to Telegram only after that, so an update that is not yet kept anywhere is
delivered again after a crash. Replies then stream on in the background.

A redelivered update carries the same ids, hence the same request id; the first message of a
reply is sent only if its claim (:func:`bot.keys.telegram_replied`) is new, and an update
whose claim exists is not sent to the engine again. The messages of a reply are remembered
(:func:`bot.keys.telegram_reply_message`) so a 👍/👎 on them becomes feedback on it.

A chat request's reply is recorded as owed (:mod:`adapters.telegram.pending`) from its submit
until it is delivered. :meth:`TelegramAdapter.adopt` (when this process becomes the poller, or
starts serving the webhook) delivers the replies that other processes left owed: it reads each
one's events from the reply stream they were written to, from before their first, and sends
the reply like any other, under the same claim, so a reply already sent is not sent again.
The claim is taken just before the first message is sent; a process that dies between the
two leaves a reply that nobody sends (the send may or may not have reached Telegram), and one
that dies while a reply streams leaves it as far as it got.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from redis.exceptions import RedisError
from telegram import Bot, Update
from telegram.error import TelegramError

from adapters.pump import ReplyGone, StreamedReply, keep_typing, pump
from adapters.replies import UNAVAILABLE_MESSAGE, Replies, closing_iter
from adapters.telegram.metrics import TelegramMetrics
from adapters.telegram.pending import PendingReplies, PendingReply
from adapters.telegram.sender import Sender, TelegramSink
from adapters.telegram.updates import (
    BotIdentity,
    Decision,
    Incoming,
    Reaction,
    conversation_key,
    read_update,
    request_id,
    user_key,
)
from adapters.text import utf16_length
from adapters.tracked import TrackedClient
from bot import keys
from bot.commands import Caller, Commands
from bot.errors import ParleyError
from bot.queue import ParleyClient
from bot.ratelimit import RateLimiter
from bot.redis import Redis
from bot.settings import TelegramSettings
from bot.wire import ChatRequest, Done, Error

log = logging.getLogger(__name__)

MAX_TEXT_UTF16 = 4096
REPLIED_TTL_S = 3 * 24 * 3600
"""Telegram keeps an unconfirmed update for 24 hours; a claim outlives any redelivery."""
REFUSED_TTL_S = 7 * 24 * 3600
REPLY_MESSAGE_TTL_S = 30 * 24 * 3600
"""How long a reaction on a reply still counts as feedback."""
COMMAND_HOLD_S = 5.0
"""A command still running after this long (a /retrain following its job, a /forget waiting
for the trainer) no longer holds back the next getUpdates; its answer may then be lost in a
crash, which a user can repair by sending the command again."""

REFUSAL = "Sorry — this bot only talks in the chats its owner has allowed."
TOO_LONG = "That message is too long for me ({n} characters; I read at most {limit})."
SLOW_DOWN = "You're writing faster than I can answer — please wait a moment before the next one."
NO_TEXT = "…"


@dataclass(frozen=True)
class _Where:
    """Where an answer to ``message`` goes, and how fast that chat may be written to."""

    chat_id: int
    thread_id: int | None
    quote: int | None
    interval_s: float


class TelegramAdapter:
    """Turns updates into requests and replies; one per adapter process."""

    def __init__(
        self,
        *,
        bot: Bot,
        me: BotIdentity,
        settings: TelegramSettings,
        redis: Redis,
        client: TrackedClient,
        replies: Replies,
        commands: Commands,
        metrics: TelegramMetrics,
        pending: PendingReplies,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.bot = bot
        self.me = me
        self.settings = settings
        self.redis = redis
        self.client = client
        self.replies = replies
        self.commands = commands
        self.metrics = metrics
        self.limiter = limiter
        self.pending = pending
        self.adapter_id = client.adapter_id
        self.sender = Sender(bot, metrics, self.adapter_id)
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight: set[str] = set()
        """Request ids being answered here: a batch fetched again while they run skips them."""

    # -- the batch -----------------------------------------------------------------------------

    async def accept(self, updates: Sequence[Update]) -> None:
        """Start handling ``updates``; return once each one is taken (see the module doc)."""
        taken = [self._start(update) for update in updates]
        await asyncio.gather(*taken)

    async def drain(self, timeout_s: float) -> None:
        """Wait for the replies in flight (at most ``timeout_s``), then cancel what is left."""
        if not self._tasks:
            return
        log.info("telegram: finishing %d repl(ies) in flight", len(self._tasks))
        _done, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    def _start(self, update: Update) -> asyncio.Future[None]:
        taken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._spawn(self._handle(update, taken), f"tg-{update.update_id}")
        return taken

    def _spawn(self, work: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(work)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- replies owed by processes that are gone -------------------------------------------------

    async def adopt(self) -> None:
        """Start delivering every reply still owed that is not being answered here.

        Returns once they are all marked as being answered (a redelivered update of one is
        then not sent to the engine again); their replies stream on in the background.
        """
        try:
            owed = [r for r in await self.pending.load() if r.request_id not in self._in_flight]
        except (RedisError, OSError) as e:
            log.warning("telegram: could not read the replies still owed: %s", e)
            return
        by_stream: dict[str, list[PendingReply]] = {}
        for record in owed:
            by_stream.setdefault(record.reply_to, []).append(record)
        for reply_to, records in by_stream.items():
            await self._adopt_from(reply_to, records)

    async def _adopt_from(self, reply_to: str, records: list[PendingReply]) -> None:
        """Read ``reply_to``'s reply stream for ``records`` and deliver their replies."""
        timeout_s = self.settings.reply_timeout_s
        source = await self.client.adopt_from(reply_to, records, timeout_s=timeout_s)
        if source is None:
            return
        self._in_flight.update(r.request_id for r in records)
        log.info("telegram: delivering %d repl(ies) owed by %s", len(records), reply_to)
        self._spawn(self._deliver_owed(source, records), f"tg-owed-{reply_to}")

    async def _deliver_owed(self, source: ParleyClient, records: list[PendingReply]) -> None:
        try:
            await asyncio.gather(*(self._deliver_one_owed(r) for r in records))
        finally:
            await source.close()

    async def _deliver_one_owed(self, record: PendingReply) -> None:
        request = ChatRequest(
            id=record.request_id,
            conversation=record.conversation,
            reply_to=record.reply_to,
            text="",  # not kept: the reply only needs where it goes
            user=record.user,
            platform="telegram",
            created_ms=record.created_ms,
        )
        s = self.settings
        where = _Where(
            chat_id=record.chat_id,
            thread_id=record.thread_id,
            quote=record.quote,
            interval_s=s.group_interval_s if record.group else s.private_interval_s,
        )
        try:
            await self._reply(request, where)
        except (ParleyError, RedisError, OSError) as e:
            log.warning("telegram: the reply owed to %s failed: %s", record.request_id, e)
        except Exception:
            log.exception("telegram: the reply owed to %s failed", record.request_id)

    async def _handle(self, update: Update, taken: asyncio.Future[None]) -> None:
        """Handle one update; whatever fails is logged here and never stops the others."""
        try:
            decision = read_update(update, self.me)
            self.metrics.updates.labels(self.adapter_id, decision.kind, decision.action).inc()
            await self._act(decision, taken)
        except Exception:
            log.exception("telegram: update %s could not be handled", update.update_id)
        finally:
            if not taken.done():
                taken.set_result(None)

    async def _act(self, decision: Decision, taken: asyncio.Future[None]) -> None:
        if decision.action == "callback":
            await self._answer_callback(decision.callback_id)
            return
        if decision.reaction is not None:
            await self._reaction(decision.reaction)
            return
        message = decision.message
        if decision.action == "ignore" or message is None:
            log.debug("telegram: ignoring a %s update", decision.kind)
            return
        try:
            if not await self._allowed(message):
                return
            if decision.action == "note":
                await self._say(message, decision.note)
            elif decision.action == "command":
                await self._command(message, taken)
            else:
                await self._chat(message, taken)
        except (ParleyError, RedisError, OSError) as e:  # Redis failing: the limit, the claims
            log.warning("telegram: update %s failed: %s", message.update_id, e)
            await self._say(message, UNAVAILABLE_MESSAGE)

    # -- the three answers ---------------------------------------------------------------------

    async def _chat(self, message: Incoming, taken: asyncio.Future[None]) -> None:
        """Send ``message`` to the engine and stream its reply."""
        if len(message.text) > self.settings.max_message_chars:
            text = TOO_LONG.format(n=len(message.text), limit=self.settings.max_message_chars)
            await self._say(message, text)
            return
        rid = request_id(self.me.id, message)
        if await self._answered(rid) or not await self._within_rate(message):
            return
        request = ChatRequest(
            id=rid,
            conversation=conversation_key(message),
            reply_to=self.adapter_id,
            text=message.text,
            user=user_key(message.user_id),
            platform="telegram",
            created_ms=int(time.time() * 1000),
        )
        where = self._where(message)
        owed = PendingReply(
            request_id=rid,
            reply_to=self.adapter_id,
            conversation=request.conversation,
            user=request.user,
            chat_id=where.chat_id,
            thread_id=where.thread_id,
            quote=where.quote,
            group=message.group,
            created_ms=request.created_ms,
        )
        self.client.watch(rid, taken, owed)
        await self._reply(request, where)

    async def _reply(self, request: ChatRequest, where: _Where) -> None:
        """Stream the reply to ``request`` into its chat; then it is no longer owed."""
        rid = request.id
        reply = StreamedReply(
            self._sink(where, rid),
            limit=MAX_TEXT_UTF16,
            interval_s=where.interval_s,
            measure=utf16_length,
        )

        async def typing() -> None:
            await self.sender.typing(where.chat_id, where.thread_id)

        self._in_flight.add(rid)
        try:
            async with keep_typing(
                typing, every_s=self.settings.typing_every_s, until=lambda: reply.started
            ):
                final = await pump(reply, self.replies.events(request))
            await self._finish(reply, final, where)
            if isinstance(final, Done):
                await self._remember(reply, where.chat_id, rid)
            await self._delivered(rid)
        finally:
            self._in_flight.discard(rid)

    async def _delivered(self, rid: str) -> None:
        try:
            await self.pending.remove(rid)
        except (RedisError, OSError) as e:  # adopted later, the claim keeps it from a resend
            log.warning("telegram: could not mark the reply to %s delivered: %s", rid, e)

    async def _finish(
        self, reply: StreamedReply[int], final: Done | Error | None, where: _Where
    ) -> None:
        """After the stream: an error's message (after a partial reply, as a message of its
        own), or a placeholder for an empty reply."""
        if reply.gone:
            return
        if isinstance(final, Error) and reply.started:
            try:
                await self.sender.send(
                    where.chat_id,
                    final.message,
                    interval_s=where.interval_s,
                    thread_id=where.thread_id,
                )
            except ReplyGone as e:  # the chat is gone, or the send's outcome is unknown
                log.info("telegram: the error note after a partial reply was not sent: %s", e)
        elif isinstance(final, Error):
            await reply.render(final.message)
        elif not reply.started:
            await reply.render(NO_TEXT)

    async def _command(self, message: Incoming, taken: asyncio.Future[None]) -> None:
        assert message.command is not None
        rid = request_id(self.me.id, message)
        if await self._answered(rid) or not await self._within_rate(message):
            return
        caller = Caller(
            platform="telegram",
            user=user_key(message.user_id),
            conversation=conversation_key(message),
            request_id=rid,
            reply_to=self.adapter_id,
            is_admin=message.user_id in self.settings.admin_ids,
        )
        self.client.watch(rid, taken)
        # A command that keeps going (/retrain follows its job) must not hold up polling.
        hold = asyncio.get_running_loop().call_later(COMMAND_HOLD_S, _settle, taken)
        self._in_flight.add(rid)
        try:
            answer = await self.commands.answer(message.command, message.text, caller)
            reply = await self._say(message, answer.text)
            if answer.updates is not None:
                _settle(taken)
                async with closing_iter(answer.updates) as updates:
                    async for text in updates:  # /retrain's progress: edit the answer
                        await reply.render(text)
        finally:
            hold.cancel()
            self._in_flight.discard(rid)

    async def _say(self, message: Incoming, text: str) -> StreamedReply[int]:
        """One short answer to ``message`` (split if long), sent at most once per update."""
        where = self._where(message)
        rid = request_id(self.me.id, message)
        reply = StreamedReply(
            self._sink(where, rid), limit=MAX_TEXT_UTF16, interval_s=0.0, measure=utf16_length
        )
        await reply.render(text)
        return reply

    async def _reaction(self, reaction: Reaction) -> None:
        """A 👍/👎 (or taking it back) on one of the bot's replies: feedback on that reply."""
        key = keys.telegram_reply_message(self.me.id, reaction.chat_id, reaction.message_id)
        answered = await self.redis.get(key)
        if answered is None:
            return  # not a reply of this bot (or too old)
        caller = Caller(
            platform="telegram",
            user=user_key(reaction.user_id),
            conversation=f"telegram:{reaction.chat_id}:{reaction.user_id}",
            request_id=f"tg:{self.me.id}:{reaction.update_id}:reaction",
            reply_to=self.adapter_id,
        )
        reply_id = answered.decode() if isinstance(answered, bytes) else str(answered)
        await self.commands.feedback(caller, reply_id, reaction.value)
        log.info("telegram: feedback %+d on %s", reaction.value, reply_id)

    async def _remember(self, reply: StreamedReply[int], chat_id: int, rid: str) -> None:
        """Which request each message of ``reply`` answers, for reactions on it."""
        if not reply.messages:
            return
        pipe = self.redis.pipeline(transaction=False)
        for message_id in reply.messages:
            key = keys.telegram_reply_message(self.me.id, chat_id, message_id)
            pipe.set(key, rid, ex=REPLY_MESSAGE_TTL_S)
        await pipe.execute()

    # -- checks --------------------------------------------------------------------------------

    async def _answered(self, rid: str) -> bool:
        """Whether request ``rid`` is being answered here or was answered (by any process)."""
        if rid in self._in_flight:
            log.info("telegram: request %s is being answered; not again", rid)
            return True
        if await self.redis.exists(keys.telegram_replied(rid)):
            log.info("telegram: request %s was answered before; not again", rid)
            return True
        return False

    async def _allowed(self, message: Incoming) -> bool:
        """Whether the chat is allowed; else one polite refusal per chat (a week)."""
        allowed = self.settings.allowed_chats
        if not allowed or message.chat_id in allowed:
            return True
        key = keys.telegram_refused(self.me.id, message.chat_id)
        if await self.redis.set(key, 1, nx=True, ex=REFUSED_TTL_S):
            log.info("telegram: chat %s is not in allowed_chats; told it once", message.chat_id)
            await self._say(message, REFUSAL)
        return False

    async def _within_rate(self, message: Incoming) -> bool:
        """The per-user rate limit; the first refusal of a window says so."""
        if self.limiter is None:
            return True
        verdict = await self.limiter.hit("telegram", str(message.user_id))
        if verdict.allowed:
            return True
        if verdict.notify:
            await self._say(message, SLOW_DOWN)
        return False

    # -- helpers -------------------------------------------------------------------------------

    def _where(self, message: Incoming) -> _Where:
        s = self.settings
        return _Where(
            chat_id=message.chat_id,
            thread_id=message.thread_id,
            quote=message.message_id if message.group else None,
            interval_s=s.group_interval_s if message.group else s.private_interval_s,
        )

    def _sink(self, where: _Where, rid: str) -> TelegramSink:
        return TelegramSink(
            self.sender,
            where.chat_id,
            where.interval_s,
            claim=self._claim(rid),
            thread_id=where.thread_id,
            quote=where.quote,
        )

    def _claim(self, rid: str) -> Callable[[], Awaitable[bool]]:
        async def claim() -> bool:
            key = keys.telegram_replied(rid)
            return bool(await self.redis.set(key, self.adapter_id, nx=True, ex=REPLIED_TTL_S))

        return claim

    async def _answer_callback(self, callback_id: str) -> None:
        """Parley sends no buttons; a stray callback is answered so its spinner stops."""
        try:
            await self.bot.answer_callback_query(callback_id)
        except TelegramError as e:
            log.debug("telegram: answering callback %s failed: %s", callback_id, e)


def _settle(taken: asyncio.Future[None]) -> None:
    if not taken.done():
        taken.set_result(None)
