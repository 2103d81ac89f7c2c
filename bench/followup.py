"""bench/serving.py's follow-up section: time to first token of a follow-up to a long
conversation, its state cached, recomputed from the stored history, or restored from Redis."""

from __future__ import annotations

import time
import uuid
from typing import Any

import redis as redis_sync

from bench import queue_overhead as queue_bench
from bench.engine_runs import Sizes, chat_work, drive, scheduler_for
from bot import keys
from bot.queue import Delivery
from bot.wire import Sampling, Turn
from engine.checkpoint import Checkpoint
from engine.serve.scheduler import Scheduler
from engine.serve.work import Finished, Spill, Work

# -- follow-up time to first token ----------------------------------------------------------------


def long_history(chars: int) -> tuple[Turn, ...]:
    turns: list[Turn] = []
    line = "so what do you think about that, honestly? tell me more about your day. "
    while sum(len(t.text) for t in turns) < chars:
        role = "user" if len(turns) % 2 == 0 else "bot"
        turns.append(Turn(role, line[: 40 + 7 * (len(turns) % 5)]))  # type: ignore[arg-type]
    return tuple(turns)


def followup_ttft_ms(ckpt: Checkpoint, sizes: Sizes) -> tuple[float, float]:
    """Fastest TTFT of a follow-up (cached state, recomputed history), in milliseconds."""
    history = long_history(sizes.history_chars)
    greedy = Sampling(temperature=0.0, max_new_tokens=16)
    cached_ms, fresh_ms = [], []
    for i in range(sizes.ttft_repeats):
        conv = f"ttft-{i}"
        s = scheduler_for(ckpt, 16, None)
        # The first exchange leaves the conversation's state in the cache...
        first = drive(s, [chat_work(i, "hello!", history, greedy, conv)], 1)[0]
        history2 = (*history, Turn("user", "hello!"), Turn("bot", first.reply.text))
        follow = chat_work(i, "and then?", history2, greedy, conv)
        cached_ms.append(drive(s, [follow], 1)[0].reply.ttft_ms)
        # ...which a fresh engine does not have: it recomputes from the stored history.
        fresh = scheduler_for(ckpt, 16, None)
        fresh_ms.append(
            drive(fresh, [chat_work(i, "and then?", history2, greedy, conv)], 1)[0].reply.ttft_ms
        )
    return min(cached_ms), min(fresh_ms)


STATE_REMAINDER_TOKENS = 64
"""At most what a follow-up continuing a state feeds (its message, the last reply, markers)."""


def answer(s: Scheduler, work: Work) -> tuple[Finished, list[Spill]]:
    """Step ``s`` until ``work`` is answered: its reply, and the states the cache spilled."""
    s.submit(work)
    spills: list[Spill] = []
    while True:
        for out in s.step_once():
            if isinstance(out, Spill):
                spills.append(out)
            elif isinstance(out, Finished) and out.work is work:
                return out, spills


def first_token_ms(reply: Finished) -> float:
    """From the request's ``received_s`` (before any Redis read) to its first token."""
    return reply.reply.queue_ms + reply.reply.ttft_ms


def followup_row(ckpt: Checkpoint, chars: int, repeats: int, redis_client: Any) -> dict[str, float]:
    """Fastest time to first token of a follow-up to a ``chars``-character conversation:
    its state cached in memory, recomputed from the stored history, or restored from the
    state the cache spilled to Redis (GET, then deserialised, in the time)."""
    history = long_history(chars)
    # One token per reply: the state then ends exactly at the prompt, so the next prompt
    # continues it whatever (random-weight) character the reply was and however it is tidied.
    greedy = Sampling(temperature=0.0, max_new_tokens=1)
    engine = {"history_max_chars": 4 * chars}  # the whole history, however long

    def from_state(done: Finished) -> Finished:
        if done.reply.prompt_tokens > STATE_REMAINDER_TOKENS:
            raise SystemExit("a follow-up recomputed its history instead of using its state")
        return done

    cached, recomputed, restored = [], [], []
    for i in range(repeats):
        conv = f"ttft-{chars}-{i}-{uuid.uuid4().hex[:6]}"
        warm = scheduler_for(ckpt, 16, None, **engine)
        first, _ = answer(warm, chat_work(i, "hello!", history, greedy, conv))
        history2 = (*history, Turn("user", "hello!"), Turn("bot", first.reply.text))
        # Cached: the engine that answered the first message still holds its state.
        done, _ = answer(warm, chat_work(i, "and then?", history2, greedy, conv))
        cached.append(first_token_ms(from_state(done)))
        # Recomputed: an engine without it (no memory budget, so it spills the state after).
        cold = scheduler_for(ckpt, 16, None, cache_bytes=0, **engine)
        done, spills = answer(cold, chat_work(i, "and then?", history2, greedy, conv))
        recomputed.append(first_token_ms(done))
        # Restored: the next follow-up on another engine, from the state spilled to Redis.
        (spill,) = [sp for sp in spills if sp.conversation == conv]
        redis_client.set(keys.state(conv), spill.data)
        history3 = (*history2, Turn("user", "and then?"), Turn("bot", done.reply.text))
        other = scheduler_for(ckpt, 16, None, **engine)
        received = time.monotonic()
        data = redis_client.get(keys.state(conv))
        request = chat_work(i, "go on", history3, greedy, conv).request
        work = Work(Delivery(0, "0-0", request), request, history3, data, received)
        done, _ = answer(other, work)
        restored.append(first_token_ms(from_state(done)))
        redis_client.delete(keys.state(conv))
    return {
        "cached_ms": round(min(cached), 2),
        "recomputed_ms": round(min(recomputed), 2),
        "restored_ms": round(min(restored), 2),
    }


def followup(
    grus: Checkpoint, gpt: Checkpoint, sizes: Sizes, redis_url: str | None
) -> dict[str, Any]:
    table: dict[str, dict[str, dict[str, float]]] = {}
    with queue_bench.redis_url(redis_url, embedded=False) as url:
        client = redis_sync.Redis.from_url(url)
        try:
            for name, ckpt in (("gru", grus), ("gpt", gpt)):
                table[name] = {
                    str(chars): followup_row(ckpt, chars, sizes.ttft_repeats, client)
                    for chars in sizes.followup_chars
                }
        finally:
            client.close()
    out: dict[str, Any] = {
        "followup": table,
        "followup_chars": list(sizes.followup_chars),
        "followup_repeats": sizes.ttft_repeats,
    }
    for name, key in (("", "gru"), ("_gpt", "gpt")):
        row = table[key][str(sizes.history_chars)]
        out[f"followup_ttft_ratio{name}"] = round(row["cached_ms"] / row["recomputed_ms"], 3)
    out["followup_history_chars"] = sizes.history_chars
    return out
