"""The safety filter's ``regenerate`` action through the real path: ``Replies`` with the filter,
the real queue client, a real Redis, a real engine worker with a tiny seeded model; then the
stored history, the conversation log and the archive the trainer fills from it."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from adapters.metrics import adapter_metrics
from adapters.replies import Replies
from bot import keys, wire
from bot.archive import AsyncArchive
from bot.queue import ParleyClient
from bot.safety import SafetyFilter, regeneration
from bot.settings import EngineSettings, LearningSettings, RedisSettings, Settings
from bot.store import ConversationStore
from bot.trainer.ingest import LogArchiver
from bot.wire import ChatRequest, Delta, Done, Exchange, ReplyEvent, Sampling, Turn
from engine.checkpoint import Checkpoint
from tests.integration.test_engine_roundtrip import running_engine
from tests.unit.engine_fixtures import tiny_checkpoint

SAMPLING = Sampling(temperature=1.0, seed=11, max_new_tokens=40)
TEXT = "hello there"


@pytest.fixture
def settings(redis_settings: RedisSettings, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        redis=redis_settings,
        engine=EngineSettings(read_block_ms=10, stream_interval_ms=0, heartbeat_s=0.2),
    )


@pytest.fixture
def ckpt(tmp_path: Path) -> Checkpoint:
    return tiny_checkpoint(tmp_path / "tiny", "gru")


def chat(rid: str, conversation: str, **fields: object) -> ChatRequest:
    return ChatRequest(
        id=rid,
        conversation=conversation,
        reply_to="web-1",
        text=TEXT,
        user=conversation.split(":")[-1],
        platform="web",
        sampling=SAMPLING,
        created_ms=1_000,
        **fields,  # type: ignore[arg-type]
    )


def a_word_only_in(text: str, other: str) -> str:
    """A whole word of ``text`` that ``other`` does not contain as a whole word."""
    theirs = set(re.findall(r"\w+", other))
    words = [w for w in re.findall(r"\w+", text) if w not in theirs]
    assert words, f"the tiny model's two replies share every word: {text!r} / {other!r}"
    return max(words, key=len)


async def logged(redis: aioredis.Redis) -> list[Exchange]:
    entries = await redis.xrange(keys.LOG_STREAM)
    return [wire.decode_exchange(fields[keys.FIELD.encode()]) for _, fields in entries]


async def test_a_blocked_reply_is_regenerated_and_leaves_no_trace(
    redis: aioredis.Redis, settings: Settings, ckpt: Checkpoint, tmp_path: Path
) -> None:
    conv = "web:c:c"
    request = chat("r1", conv)
    registry = CollectorRegistry()
    async with (
        running_engine(redis, settings, ckpt) as scheduler,
        ParleyClient(redis, settings.redis, "web-1") as client,
    ):
        # What the model answers to the message, and what it answers when asked again, each
        # in a fresh conversation of its own (same prompt, same seeds), unfiltered.
        probe = await client.reply(chat("probe-1", "web:p1:p1"), timeout_s=30)
        again = msgspec.structs.replace(
            regeneration(request, 1), id="probe-2", conversation="web:p2:p2", regenerates=""
        )
        probe_again = await client.reply(again, timeout_s=30)
        assert isinstance(probe, Done) and isinstance(probe_again, Done)
        blocked_word = a_word_only_in(probe.text, probe_again.text)

        safety = SafetyFilter(blocklist=[blocked_word], action="regenerate", replacement="[x]")
        replies = Replies(
            client,
            adapter_id="web-1",
            timeout_s=30.0,
            metrics=adapter_metrics(registry),
            safety=safety,
        )
        hits_before = scheduler.stats.cache_hits
        events: list[ReplyEvent] = [e async for e in replies.events(request)]
        hits_after = scheduler.stats.cache_hits

    # The user got the second attempt's text, and nothing delivered ever held the blocked word.
    *deltas, done = events
    assert isinstance(done, Done) and done.request_id == "r1"
    exchanges = {x.request_id: x for x in await logged(redis)}
    first, second = exchanges["r1"], exchanges["r1~regen1"]
    assert safety.spans(first.reply) and not safety.spans(second.reply)
    assert done.text == second.reply == probe_again.text
    assert all(isinstance(e, Delta) for e in deltas)
    streamed = "".join(e.text for e in deltas if isinstance(e, Delta))
    assert first.reply.startswith(streamed)  # the first attempt's safe start, at most
    for event in events:
        assert isinstance(event, Delta | Done) and not safety.spans(event.text)
    assert not safety.spans(streamed)

    # The new attempt's prompt was the message without the blocked reply: a full recompute
    # (as long as the first attempt's), never a continuation of the state that consumed it.
    assert hits_after == hits_before
    assert done.prompt_tokens == probe.prompt_tokens

    # The stored history holds only the regenerated exchange.
    store = ConversationStore(redis, ttl_s=600)
    assert await store.history(conv) == (Turn("user", TEXT), Turn("bot", second.reply))
    assert second.regenerates == "r1"

    # The archive (filled from the log as the trainer does) keeps the regenerated reply in
    # the blocked one's place: a 👍 on the reply the user saw trains on that reply only.
    archive = AsyncArchive(tmp_path / "archive.db")
    try:
        archiver = LogArchiver(redis, archive, store, LearningSettings(), consumer="t1")
        await archiver.start()
        while await archiver.step(block_ms=10):
            pass
        await archive.call(lambda a: a.set_feedback("r1", 1))
        records = await archive.call(lambda a: [c.record for c in a.conversations()])
    finally:
        await archive.close()
    (record,) = [r for r in records if str(r["id"]).startswith("web:c:")]
    messages = record["messages"]
    assert isinstance(messages, list)
    assert [(m.get("role", "user"), m["text"]) for m in messages] == [
        ("user", TEXT),
        ("bot", second.reply),
    ]

    metric = registry.get_sample_value
    assert metric("parley_adapter_replies_regenerated_total", {"adapter": "web-1"}) == 1
    labels = {"adapter": "web-1", "reason": "blocked"}
    assert not metric("parley_adapter_regenerate_fallbacks_total", labels)


async def test_every_attempt_blocked_sends_the_replacement_and_keeps_one_exchange(
    redis: aioredis.Redis, settings: Settings, ckpt: Checkpoint
) -> None:
    conv = "web:d:d"
    registry = CollectorRegistry()
    safety = SafetyFilter(
        classifier=lambda text: True, action="regenerate", replacement="[x]", regenerate_attempts=2
    )
    async with (
        running_engine(redis, settings, ckpt),
        ParleyClient(redis, settings.redis, "web-1") as client,
    ):
        replies = Replies(
            client,
            adapter_id="web-1",
            timeout_s=30.0,
            metrics=adapter_metrics(registry),
            safety=safety,
        )
        events = [e async for e in replies.events(chat("r2", conv))]
    (only,) = events  # a classifier judges whole replies: nothing streamed
    assert isinstance(only, Done) and only.text == "[x]" and only.request_id == "r2"
    exchanges = await logged(redis)
    assert [x.request_id for x in exchanges] == ["r2", "r2~regen1", "r2~regen2"]
    # One exchange in the history, and its reply is what the user was shown. (The archive
    # still gets the last attempt's blocked reply from the log; exclude_from_training keeps it
    # out of training: tests/unit/test_safety_regenerate.py.)
    history = await ConversationStore(redis, ttl_s=600).history(conv)
    assert history == (Turn("user", TEXT), Turn("bot", "[x]"))
    labels = {"adapter": "web-1", "reason": "blocked"}
    assert registry.get_sample_value("parley_adapter_regenerate_fallbacks_total", labels) == 1


async def test_the_store_replaces_a_regenerated_exchange_wherever_it_is(
    redis: aioredis.Redis,
) -> None:
    store = ConversationStore(redis, ttl_s=600)
    conv = "web:e:e"

    async def append(rid: str, text: str, replaces: tuple[bytes, ...] = ()) -> None:
        async with redis.pipeline(transaction=True) as pipe:
            store.append_exchange(
                pipe,
                conv,
                "e",
                Turn("user", f"q {rid}"),
                Turn("bot", text),
                request_id=rid,
                replaces=replaces,
            )
            await pipe.execute()

    await append("x", "blocked")
    await append("y", "later")  # the user wrote again before the regeneration
    (stored,) = (await store.load([conv])).values()
    history, gone = stored.without("x")
    assert history == (Turn("user", "q y"), Turn("bot", "later"))
    assert len(gone) == 2
    assert stored.without("nothing") == (stored.history, ())  # unknown: nothing left out
    await append("x", "kinder", gone)
    assert await store.history(conv) == (
        Turn("user", "q y"),
        Turn("bot", "later"),
        Turn("user", "q x"),
        Turn("bot", "kinder"),
    )
    (again,) = (await store.load([conv])).values()
    assert len(again.without("x")[1]) == 2  # the new exchange is the one a next attempt replaces
    # A fallback amends a stored reply in its place.
    assert await store.amend(conv, "y", "[x]")
    assert not await store.amend(conv, "nothing", "[x]")
    assert await store.history(conv) == (
        Turn("user", "q y"),
        Turn("bot", "[x]"),
        Turn("user", "q x"),
        Turn("bot", "kinder"),
    )


@pytest.mark.parametrize("action", ["mask", "replace"])
async def test_a_masked_or_replaced_reply_is_stored_as_the_user_saw_it(
    redis: aioredis.Redis, settings: Settings, ckpt: Checkpoint, action: str
) -> None:
    conv = f"web:m:{action}"
    async with (
        running_engine(redis, settings, ckpt),
        ParleyClient(redis, settings.redis, "web-1") as client,
    ):
        metrics = adapter_metrics(CollectorRegistry())
        plain = Replies(client, adapter_id="web-1", timeout_s=30.0, metrics=metrics)
        first = [e async for e in plain.events(chat("m0", f"{conv}-probe"))][-1]
        assert isinstance(first, Done) and first.text
        word = max(re.findall(r"\w+", first.text), key=len)  # the seeded model says it again
        safety = SafetyFilter(blocklist=[word], action=action, replacement="[x]")  # type: ignore[arg-type]
        replies = Replies(
            client, adapter_id="web-1", timeout_s=30.0, metrics=metrics, safety=safety
        )
        final = [e async for e in replies.events(chat("m1", conv))][-1]
    assert isinstance(final, Done) and word not in final.text
    history = await ConversationStore(redis, ttl_s=600).history(conv)
    assert history == (Turn("user", TEXT), Turn("bot", final.text))  # never the blocked text
