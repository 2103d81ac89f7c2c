"""The scheduler without Redis: batching, caching, spilling, swapping, isolation."""

from __future__ import annotations

import random
from pathlib import Path

import msgspec
import pytest
import torch

from bot.queue.items import Delivery
from bot.settings import EngineSettings, SamplingSettings
from bot.wire import ChatRequest, ControlRequest, Sampling, Turn
from engine.serve.cache import deserialize_entry
from engine.serve.scheduler import Scheduler
from engine.serve.work import Applied, Control, Failed, Finished, Output, Progress, Spill, Work
from tests.unit.engine_fixtures import DEVICES, tiny_checkpoint

GREEDY = Sampling(temperature=0.0, repetition_penalty=1.0, max_new_tokens=12)


def make_work(
    conv: str,
    text: str,
    history: tuple[Turn, ...] = (),
    *,
    rid: str | None = None,
    sampling: Sampling = GREEDY,
    spilled: bytes | None = None,
    client_history: bool = False,
) -> Work:
    request = ChatRequest(
        id=rid or f"{conv}-{text}",
        conversation=conv,
        reply_to="test",
        text=text,
        sampling=sampling,
        history=history if client_history else None,
    )
    return Work(Delivery(0, "0-1", request), request, history, spilled, 0.0)


def make_scheduler(ckpt, **engine: object) -> Scheduler:
    settings = EngineSettings(**{"stream_interval_ms": 0, "prefill_chunk_tokens": 16, **engine})
    return Scheduler(ckpt, settings, SamplingSettings(), ckpt.model.device)


def run_all(s: Scheduler, items: list[Work | Control], max_steps: int = 2000) -> list[Output]:
    for item in items:
        s.submit(item)
    outputs: list[Output] = []
    want = len(items)
    for _ in range(max_steps):
        outputs.extend(s.step_once())
        if sum(isinstance(o, (Finished, Applied)) for o in outputs) >= want:
            return outputs
    raise AssertionError("scheduler did not finish")


def replies(outputs: list[Output]) -> dict[str, str]:
    return {o.work.request.id: o.reply.text for o in outputs if isinstance(o, Finished)}


@pytest.fixture(params=[(a, d) for d in DEVICES for a in ("gru", "gpt")], ids="-".join)
def ckpt(request: pytest.FixtureRequest, tmp_path: Path):
    arch, device = request.param
    return tiny_checkpoint(tmp_path / arch, arch, device=device)


def test_batched_greedy_equals_unbatched(ckpt) -> None:
    texts = ["hello", "what did you do this weekend? tell me everything", "你好", "hi"]
    works = [make_work(f"c{i}", t) for i, t in enumerate(texts)]
    batched = replies(run_all(make_scheduler(ckpt), list(works)))
    for w in works:
        alone = replies(run_all(make_scheduler(ckpt), [w]))
        assert alone[w.request.id] == batched[w.request.id]


def first_nonempty(s: Scheduler) -> tuple[Work, str]:
    """An opening whose (untrained, greedy) reply is not empty, so the history has two turns."""
    for seed in range(20):
        sampling = Sampling(temperature=1.0, seed=seed, max_new_tokens=12)
        work = make_work("c", "hello", rid=f"first-{seed}", sampling=sampling)
        reply = replies(run_all(s, [work]))[work.request.id]
        if reply:
            return work, reply
    raise AssertionError("every opening got an empty reply")


def test_followup_from_cache_equals_recompute(ckpt) -> None:
    s = make_scheduler(ckpt)
    first, reply = first_nonempty(s)
    history = (Turn("user", first.request.text), Turn("bot", reply))
    follow = make_work("c", "and you?", history)
    hits = s.stats.cache_hits
    cached = replies(run_all(s, [follow]))[follow.request.id]
    assert s.stats.cache_hits == hits + 1
    fresh = make_scheduler(ckpt)
    recomputed = replies(run_all(fresh, [follow]))[follow.request.id]
    assert fresh.stats.cache_hits == 0
    assert cached == recomputed


def test_spilled_state_restores_and_matches(ckpt) -> None:
    first, reply = first_nonempty(make_scheduler(ckpt))
    s = make_scheduler(ckpt, cache_bytes=0)  # every finished state is evicted at once
    out = run_all(s, [first])
    spills = [o for o in out if isinstance(o, Spill)]
    assert len(spills) == 1 and spills[0].conversation == "c"
    entry = deserialize_entry(spills[0].data, ckpt.model.state_from_tensors)
    assert entry is not None and entry.version == ckpt.version
    history = (Turn("user", first.request.text), Turn("bot", reply))
    s2 = make_scheduler(ckpt)
    follow = make_work("c", "and you?", history, spilled=spills[0].data)
    restored = replies(run_all(s2, [follow]))
    assert s2.stats.cache_hits == 1
    recomputed = replies(run_all(make_scheduler(ckpt), [make_work("c", "and you?", history)]))
    assert restored == recomputed


def test_client_history_must_be_a_prefix(ckpt) -> None:
    """API clients send the whole conversation; a different history is never served from cache."""
    first, reply = first_nonempty(make_scheduler(ckpt))
    first = make_work("c", first.request.text, sampling=first.request.sampling, client_history=True)
    s = make_scheduler(ckpt)
    run_all(s, [first])
    edited = (Turn("user", first.request.text), Turn("bot", "something else entirely"))
    run_all(s, [make_work("c", "again", edited, client_history=True)])
    assert s.stats.cache_hits == 0
    same = (Turn("user", first.request.text), Turn("bot", reply))
    s2 = make_scheduler(ckpt)
    run_all(s2, [first])
    run_all(s2, [make_work("c", "again", same, client_history=True)])
    assert s2.stats.cache_hits == 1


def test_state_never_crosses_conversations(ckpt) -> None:
    """Randomised: interleaved conversations give the replies each gets alone."""
    rng = random.Random(7)
    words = ["hi", "hello there", "weekend?", "你好", "how are you", "music"]
    convs = {f"c{i}": [rng.choice(words) for _ in range(3)] for i in range(6)}
    mixed = make_scheduler(ckpt)
    histories: dict[str, tuple[Turn, ...]] = {c: () for c in convs}
    for turn in range(3):
        batch = [
            make_work(c, msgs[turn], histories[c], rid=f"{c}-{turn}") for c, msgs in convs.items()
        ]
        rng.shuffle(batch)
        got = replies(run_all(mixed, list(batch)))
        for w in batch:
            conv = w.request.conversation
            alone = make_scheduler(ckpt)
            expect = replies(run_all(alone, [w]))[w.request.id]
            assert got[w.request.id] == expect
            histories[conv] += (Turn("user", w.request.text), Turn("bot", got[w.request.id]))


def test_streams_progress_then_finishes(ckpt) -> None:
    s = make_scheduler(ckpt)
    w = make_work("c", "hello", sampling=Sampling(temperature=1.0, seed=3, max_new_tokens=20))
    out = run_all(s, [w])
    text = "".join(o.text for o in out if isinstance(o, Progress))
    done = replies(out)[w.request.id]
    assert done.startswith(text)


def test_seeded_sampling_is_reproducible(ckpt) -> None:
    sampling = Sampling(temperature=1.0, seed=42, max_new_tokens=15)
    a = replies(run_all(make_scheduler(ckpt), [make_work("c", "hi", sampling=sampling)]))
    b = replies(run_all(make_scheduler(ckpt), [make_work("c", "hi", sampling=sampling)]))
    assert a == b


def prompt_tokens(outputs: list[Output], request_id: str) -> int:
    return next(
        o.reply.prompt_tokens
        for o in outputs
        if isinstance(o, Finished) and o.work.request.id == request_id
    )


def test_reset_drops_cached_state(ckpt) -> None:
    """A follow-up after a reset is fed whole (no cached state), as on a fresh engine."""
    first = make_work("c", "hello", rid="first")
    reply = replies(run_all(make_scheduler(ckpt), [first]))["first"]
    history = (Turn("user", "hello"), Turn("bot", reply))

    def follow_up_prompt_tokens(s: Scheduler, rid: str) -> int:
        return prompt_tokens(run_all(s, [make_work("c", "and then?", history, rid=rid)]), rid)

    fresh = follow_up_prompt_tokens(make_scheduler(ckpt), "fresh")
    kept = make_scheduler(ckpt)
    run_all(kept, [first])
    cached = follow_up_prompt_tokens(kept, "cached")
    reset = make_scheduler(ckpt)
    run_all(reset, [first])
    control = ControlRequest(id="r", conversation="c", reply_to="test", command="reset")
    out = run_all(reset, [Control(Delivery(0, "0-2", control), control)])
    assert any(isinstance(o, Applied) for o in out)
    assert cached < fresh  # the cache served the first exchange
    assert follow_up_prompt_tokens(reset, "after-reset") == fresh


def test_hot_swap_loses_no_request(ckpt, tmp_path: Path) -> None:
    s = make_scheduler(ckpt)
    works = [make_work(f"c{i}", "hello there", rid=f"r{i}") for i in range(6)]
    for w in works[:3]:
        s.submit(w)
    outputs: list[Output] = []
    for _ in range(3):
        outputs += s.step_once()
    new = tiny_checkpoint(tmp_path / "v2", ckpt.config.arch, seed=1, device=str(ckpt.model.device))
    s.swap(new)
    outputs += run_all(s, works[3:])
    for _ in range(2000):
        if sum(isinstance(o, Finished) for o in outputs) == len(works):
            break
        outputs += s.step_once()
    done = [o for o in outputs if isinstance(o, Finished)]
    assert sorted(o.work.request.id for o in done) == [f"r{i}" for i in range(6)]
    late = {"r3", "r4", "r5"}
    assert {o.reply.model_version for o in done if o.work.request.id in late} == {"v2"}


def test_empty_message_is_a_clear_error(ckpt) -> None:
    s = make_scheduler(ckpt)
    s.submit(make_work("c", "   "))
    outputs: list[Output] = []
    for _ in range(5):
        outputs += s.step_once()
    failed = [o for o in outputs if isinstance(o, Failed)]
    assert [(f.work.request.id, f.failure) for f in failed] == [("c-   ", "unusable")]
    assert "empty" in failed[0].detail


def replies_of(outputs: list[Output]) -> dict[str, tuple[str, int]]:
    return {
        o.work.request.id: (o.reply.text, o.reply.completion_tokens)
        for o in outputs
        if isinstance(o, Finished)
    }


@pytest.mark.parametrize("prefill_chunk_tokens", [16, 64])
def test_rows_joining_and_leaving_mid_batch_never_mix_states(ckpt, prefill_chunk_tokens) -> None:
    """Randomised: a 3-row batch with requests arriving while others decode and finishing at
    different lengths (rows leave and the last row moves in) — each gets its solo reply."""
    rng = random.Random(11)
    words = ["hi", "hello there", "what did you do this weekend?", "你好", "music", "ok"]
    works = [
        make_work(
            f"c{i}",
            rng.choice(words),
            rid=f"r{i}",
            sampling=Sampling(temperature=0.0, max_new_tokens=rng.randint(1, 14)),
        )
        for i in range(12)
    ]
    s = make_scheduler(ckpt, max_batch=3, prefill_chunk_tokens=prefill_chunk_tokens)
    outputs: list[Output] = []
    pending = list(works)
    for _ in range(3000):
        if pending and rng.random() < 0.3:
            s.submit(pending.pop(0))
        outputs += s.step_once()
        if not pending and len(replies_of(outputs)) == len(works):
            break
    got = replies_of(outputs)
    assert len(got) == len(works)
    for w in works:
        alone = replies_of(run_all(make_scheduler(ckpt), [w]))
        assert got[w.request.id] == alone[w.request.id]


def test_ignore_eot_generates_exactly_max_new_tokens(ckpt) -> None:
    settings = EngineSettings(stream_interval_ms=0, prefill_chunk_tokens=16)
    s = Scheduler(ckpt, settings, SamplingSettings(), ckpt.model.device, ignore_eot=True)
    sampling = Sampling(temperature=1.5, seed=3, max_new_tokens=9)
    works = [make_work(f"c{i}", "hello", rid=f"r{i}", sampling=sampling) for i in range(5)]
    done = [o.reply for o in run_all(s, list(works)) if isinstance(o, Finished)]
    assert [d.completion_tokens for d in done] == [9] * 5
    assert {d.finish_reason for d in done} == {"length"}


def test_stop_string_ends_the_reply_before_it(ckpt) -> None:
    for seed in range(30):  # a seeded reply long enough to cut in the middle
        sampling = Sampling(temperature=1.0, seed=seed, max_new_tokens=20)
        free = make_work("c", "hello", rid="free", sampling=sampling)
        text = replies(run_all(make_scheduler(ckpt), [free]))["free"]
        if len(text.strip()) >= 6 and text[3:5].strip() == text[3:5] and text.find(text[3:5]) == 3:
            break
    else:
        raise AssertionError("no seed gave a reply long enough to cut")
    stop = text[3:5]
    cut = make_work(
        "c", "hello", rid="cut", sampling=msgspec.structs.replace(sampling, stop=(stop,))
    )
    done = next(o.reply for o in run_all(make_scheduler(ckpt), [cut]) if isinstance(o, Finished))
    assert done.finish_reason == "stop"
    assert done.text == text[:3].strip()


def test_bf16_serving_batched_equals_unbatched(ckpt) -> None:
    def bf16_scheduler() -> Scheduler:
        settings = EngineSettings(stream_interval_ms=0, prefill_chunk_tokens=64)
        return Scheduler(
            ckpt, settings, SamplingSettings(), ckpt.model.device, decode_dtype=torch.bfloat16
        )

    texts = ["hello", "what did you do this weekend?", "你好"]
    works = [make_work(f"c{i}", t) for i, t in enumerate(texts)]
    batched = replies(run_all(bf16_scheduler(), list(works)))
    for w in works:
        assert replies(run_all(bf16_scheduler(), [w]))[w.request.id] == batched[w.request.id]


def test_progress_comes_at_the_stream_interval_not_per_token(ckpt) -> None:
    settings = EngineSettings(stream_interval_ms=60_000, prefill_chunk_tokens=16)
    s = Scheduler(ckpt, settings, SamplingSettings(), ckpt.model.device, ignore_eot=True)
    w = make_work("c", "hello", sampling=Sampling(temperature=1.0, seed=1, max_new_tokens=30))
    out = run_all(s, [w])
    assert sum(isinstance(o, Progress) for o in out) <= 1  # the first token's, then silence
    assert replies_of(out)[w.request.id][1] == 30
