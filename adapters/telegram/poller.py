"""Long polling that loses no update: a batch is kept in Redis before its offset is confirmed.

One round: ``getUpdates(offset)`` → :meth:`TelegramAdapter.accept` (returns when every
update's request is in its request stream, or it was answered or needs nothing) → the next
offset is written to Redis (:func:`bot.keys.telegram_offset`) → only then the next
``getUpdates`` with that offset, which is what confirms the batch to Telegram. A crash
anywhere before the offset is written makes Telegram deliver the batch again; the adapter
recognises what it already answered.

Only the holder of the poller lease (:mod:`adapters.telegram.lease`) polls; each time it gets
the lease, it awaits ``on_lead`` (the adapter takes over the replies owed by processes gone
before it) before its first ``getUpdates``. A 409 Conflict that still happens (another
program polls this token, or a webhook is set) is explained in one log line per episode,
and polling retries with a growing pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from redis.exceptions import RedisError
from telegram import Bot, Update
from telegram.error import Conflict, InvalidToken, NetworkError, RetryAfter, TelegramError

from adapters.telegram.lease import PollerLease
from adapters.telegram.sender import retry_after_s
from bot import keys
from bot.errors import ConfigError
from bot.redis import Redis

log = logging.getLogger(__name__)

ALLOWED_UPDATES = ("message", "message_reaction")
"""What Parley asks Telegram for: new messages (private chats and groups) and reactions (a
👍/👎 on a reply is feedback; in groups Telegram sends reactions only to admin bots). Not
edits, channel posts, member changes or callback queries (Parley sends no buttons); should
one arrive anyway, the adapter ignores it (a callback query is answered, so its button stops
spinning)."""
BATCH_LIMIT = 100
PAUSES_S = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0)

Accept = Callable[[Sequence[Update]], Awaitable[None]]
OnLead = Callable[[], Awaitable[None]]


class Poller:
    """Fetches updates for one bot while holding its lease, and hands them to ``accept``."""

    def __init__(
        self,
        bot: Bot,
        redis: Redis,
        lease: PollerLease,
        accept: Accept,
        *,
        bot_id: int,
        timeout_s: int,
        on_lead: OnLead | None = None,
    ) -> None:
        self.bot = bot
        self.redis = redis
        self.lease = lease
        self.accept = accept
        self.offset_key = keys.telegram_offset(bot_id)
        self.timeout_s = timeout_s
        self.on_lead = on_lead
        self._trouble = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Poll (or stand by) until ``stop`` is set."""
        while await self.lease.wait_acquired(stop):
            async with self.lease.held() as lost:
                log.info("telegram: %s is polling for updates", self.lease.holder)
                try:  # a webhook set earlier would make every getUpdates a 409
                    await self.bot.delete_webhook(drop_pending_updates=False)
                except TelegramError as e:
                    log.warning("telegram: deleteWebhook failed (%s); polling anyway", e)
                if self.on_lead is not None:
                    await self.on_lead()
                await self._poll(stop, lost)

    async def _poll(self, stop: asyncio.Event, lost: asyncio.Event) -> None:
        offset = int(await self.redis.get(self.offset_key) or 0)
        while not stop.is_set() and not lost.is_set():
            updates = await self._fetch(offset, stop, lost)
            if not updates:
                continue
            await self.accept(updates)
            try:
                await self.redis.set(self.offset_key, updates[-1].update_id + 1)
            except (RedisError, OSError) as e:  # not confirmed: the batch comes again
                log.warning("telegram: storing the offset failed (%s); fetching again", e)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), PAUSES_S[0])
                continue
            offset = updates[-1].update_id + 1

    async def _fetch(
        self, offset: int, stop: asyncio.Event, lost: asyncio.Event
    ) -> Sequence[Update]:
        """One ``getUpdates``, abandoned if ``stop`` or ``lost`` is set while it waits."""
        call = asyncio.ensure_future(
            self.bot.get_updates(
                offset=offset or None,
                limit=BATCH_LIMIT,
                timeout=self.timeout_s,
                allowed_updates=list(ALLOWED_UPDATES),
            )
        )
        stopped = asyncio.ensure_future(_first(stop, lost))
        try:
            await asyncio.wait({call, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if not call.done():  # nothing fetched is lost: the offset was not confirmed
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError, TelegramError):
                await call
            return ()
        try:
            updates = call.result()
        except InvalidToken as e:
            raise ConfigError(f"Telegram no longer accepts the bot token ({e.message})") from e
        except TelegramError as e:
            await self._trouble_pause(e, stop)
            return ()
        if self._trouble:
            log.info("telegram: getUpdates works again")
            self._trouble = 0
        return updates

    async def _trouble_pause(self, error: TelegramError, stop: asyncio.Event) -> None:
        """Say what went wrong once per episode, then pause before the next try."""
        if isinstance(error, RetryAfter):
            pause_s = retry_after_s(error)
        else:
            pause_s = PAUSES_S[min(self._trouble, len(PAUSES_S) - 1)]
        if self._trouble == 0:
            log.error(
                "telegram: %s; retrying every %.0f-%.0f s", _explain(error), pause_s, PAUSES_S[-1]
            )
        else:
            log.debug("telegram: getUpdates still failing: %s", error)
        self._trouble += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), pause_s)


def _explain(error: TelegramError) -> str:
    if isinstance(error, Conflict):
        return (
            f"getUpdates answered 409 Conflict ({error.message}): another program is polling "
            "this bot's token or has set a webhook for it. Parley's own adapters take turns "
            "through a lease in Redis, so stop the other program or give it its own bot"
        )
    if isinstance(error, NetworkError):
        return f"getUpdates failed ({error.message}); Telegram or the network is unreachable"
    return f"getUpdates failed: {error.message}"


async def _first(*events: asyncio.Event) -> None:
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
