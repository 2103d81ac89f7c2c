"""The ``[reply]`` modes in the scheduler: remembered lines, the best of samples, consent."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from bot.errors import ModelError
from bot.safety import SafetyFilter
from bot.settings import EngineSettings, ReplySettings, SamplingSettings
from bot.wire import ControlRequest, Sampling, Turn
from engine.checkpoint import Checkpoint
from engine.data.remembered import REPLIES_FILE, ReplyPair, read_reply_pairs, write_replies
from engine.serve.metrics import EngineMetrics
from engine.serve.replies import ReplyPicker
from engine.serve.scheduler import Scheduler
from engine.serve.work import Control, Failed, Finished, Output, Progress
from tests.unit.engine_fixtures import tiny_checkpoint
from tests.unit.test_scheduler import GREEDY, make_work, replies, run_all

CONVERSATIONS = [
    [("alice", "do you like tea?"), ("bob", "green tea every morning"), ("alice", "nice")],
    [("carol", "do you like tea with milk"), ("dave", "milk tea is the best tea")],
    [("erin", "any plans for the weekend?"), ("frank", "hiking in the hills")],
]
TEA_LINES = {"green tea every morning", "milk tea is the best tea", "nice"}
"""The replies to turns that mention tea."""
SAMPLED = Sampling(temperature=1.0, repetition_penalty=1.0, max_new_tokens=8, seed=7)


@pytest.fixture(params=["gru", "gpt"])
def ckpt(request: pytest.FixtureRequest, tmp_path: Path) -> Checkpoint:
    ckpt = tiny_checkpoint(tmp_path / request.param, request.param)
    write_replies(ckpt.path / REPLIES_FILE, CONVERSATIONS)
    return ckpt


def scheduler(
    ckpt: Checkpoint,
    mode: str,
    *,
    safety: SafetyFilter | None = None,
    registry: CollectorRegistry | None = None,
    **reply: object,
) -> Scheduler:
    picker = ReplyPicker(ReplySettings(mode=mode, **reply), safety)  # type: ignore[arg-type]
    engine = EngineSettings(stream_interval_ms=0, prefill_chunk_tokens=16)
    metrics = EngineMetrics(ckpt.preset, registry) if registry is not None else None
    return Scheduler(
        ckpt, engine, SamplingSettings(), ckpt.model.device, replies=picker, metrics=metrics
    )


def finished(outputs: list[Output]) -> list[Finished]:
    return [o for o in outputs if isinstance(o, Finished)]


def test_the_remembered_file_round_trips_and_names_a_damaged_line(tmp_path: Path) -> None:
    path = write_replies(tmp_path / REPLIES_FILE, CONVERSATIONS)
    pairs = list(read_reply_pairs(path))
    assert pairs[0] == ReplyPair("do you like tea?", "green tea every morning", "bob")
    assert len(pairs) == 4  # consecutive turns: 2 + 1 + 1
    with gzip.open(path, "at") as f:
        f.write('{"turns": [["x", 3]]}\n')
    with pytest.raises(ModelError, match="line 4"):
        list(read_reply_pairs(path))
    (tmp_path / "bad.gz").write_bytes(b"not gzip")
    with pytest.raises(ModelError, match="unreadable"):
        list(read_reply_pairs(tmp_path / "bad.gz"))


def test_retrieve_answers_with_a_remembered_line_whole(ckpt: Checkpoint) -> None:
    registry = CollectorRegistry()
    s = scheduler(ckpt, "retrieve", registry=registry)
    outputs = run_all(s, [make_work("c1", "do you like tea?")])
    assert not any(isinstance(o, Progress) for o in outputs)  # sent whole, once chosen
    [done] = finished(outputs)
    assert done.reply.text in TEA_LINES
    assert done.reply.finish_reason == "stop" and done.reply.completion_tokens > 0
    assert done.reply.prompt_tokens == len(
        ckpt.tokenizer.encode("<|user|>do you like tea?<|eot|><|bot|>")
    )
    sent = registry.get_sample_value(
        "parley:replies_total", {"model_name": ckpt.preset, "source": "remembered"}
    )
    assert sent == 1.0


def test_retrieve_generates_when_nothing_matches(ckpt: Checkpoint) -> None:
    work = make_work("c1", "zzz qqq")
    remembered = replies(run_all(scheduler(ckpt, "retrieve"), [work]))
    generated = replies(run_all(scheduler(ckpt, "generate"), [work]))
    assert remembered == generated  # greedy: the same generated reply


def test_retrieve_honours_consent_and_the_safety_filter(ckpt: Checkpoint) -> None:
    s = scheduler(ckpt, "retrieve", safety=SafetyFilter(blocklist=["milk"]))
    s.replies.exclude(["bob", "alice"])  # they opted out after training
    # The other line about tea is blocked: the reply is generated instead.
    [done] = finished(run_all(s, [make_work("c1", "do you like tea?")]))
    assert done.reply.text not in TEA_LINES
    s.replies.set_excluded(["alice"])  # bob opted back in
    [done] = finished(run_all(s, [make_work("c2", "do you like tea?")]))
    assert done.reply.text == "green tea every morning"


def test_a_forget_reaching_the_engine_excludes_that_user_at_once(ckpt: Checkpoint) -> None:
    s = scheduler(ckpt, "retrieve", safety=SafetyFilter(blocklist=["milk"]))
    s.replies.exclude(["alice"])
    request = ControlRequest(
        id="f", conversation="c:bob", reply_to="t", command="forget", user="bob"
    )
    outputs = run_all(s, [Control(make_work("x", "-").delivery, request), make_work("c1", "tea")])
    [done] = finished(outputs)
    assert done.reply.text not in TEA_LINES


def test_a_remembered_reply_keeps_the_conversation_cached(ckpt: Checkpoint) -> None:
    s = scheduler(ckpt, "retrieve")
    first = make_work("c1", "hello there")  # matches nothing: generated, its state cached
    [one] = finished(run_all(s, [first]))
    history = (Turn("user", "hello there"), Turn("bot", one.reply.text))
    second = make_work("c1", "do you like tea?", history)
    [two] = finished(run_all(s, [second]))
    assert two.reply.text in TEA_LINES
    history += (Turn("user", "do you like tea?"), Turn("bot", two.reply.text))
    hits = s.stats.cache_hits
    run_all(s, [make_work("c1", "zzz qqq", history)])
    s.step_once()
    assert s.stats.cache_hits == hits + 1  # the state from turn one still continues it


def test_hybrid_answers_once_with_a_sample_or_a_remembered_line(ckpt: Checkpoint) -> None:
    works = [make_work(f"c{i}", "do you like tea?", sampling=SAMPLED) for i in range(3)]
    works.append(make_work("c9", "zzz qqq", sampling=SAMPLED))
    s = scheduler(ckpt, "hybrid", n=3)
    outputs = run_all(s, list(works))
    assert not any(isinstance(o, Progress) for o in outputs)  # chosen once all are done
    done = finished(outputs)
    assert sorted(d.work.request.id for d in done) == sorted(w.request.id for w in works)
    for _ in range(3):  # nothing more arrives for them
        assert not finished(s.step_once())
    # Seeded: the same requests give the same choices.
    again = replies(run_all(scheduler(ckpt, "hybrid", n=3), list(works)))
    assert again == {d.work.request.id: d.reply.text for d in done}


def test_hybrid_fits_its_samples_into_a_small_batch(ckpt: Checkpoint) -> None:
    picker = ReplyPicker(ReplySettings(mode="hybrid", n=4))
    engine = EngineSettings(stream_interval_ms=0, prefill_chunk_tokens=16, max_batch=2)
    s = Scheduler(ckpt, engine, SamplingSettings(), ckpt.model.device, replies=picker)
    works = [make_work(f"c{i}", "any plans?", sampling=SAMPLED) for i in range(3)]
    assert len(finished(run_all(s, list(works)))) == 3


def test_hybrid_requests_survive_a_swap_while_prefilling(ckpt: Checkpoint, tmp_path: Path) -> None:
    s = scheduler(ckpt, "hybrid", n=2)
    long = "tell me about your weekend " * 4  # several prefill passes
    s.submit(make_work("c1", long, sampling=SAMPLED))
    outputs = s.step_once()
    s.swap(tiny_checkpoint(tmp_path / "new", ckpt.config.arch, seed=1))
    for _ in range(500):
        outputs += s.step_once()
        if finished(outputs):
            break
    outputs += s.step_once()
    assert len(finished(outputs)) == 1
    assert not any(isinstance(o, Failed) for o in outputs)


def test_greedy_generate_mode_is_unchanged_by_the_picker(ckpt: Checkpoint) -> None:
    work = make_work("c1", "do you like tea?", sampling=GREEDY)
    plain = Scheduler(
        ckpt, EngineSettings(stream_interval_ms=0, prefill_chunk_tokens=16), SamplingSettings(),
        ckpt.model.device,
    )  # fmt: skip
    assert replies(run_all(scheduler(ckpt, "generate"), [work])) == replies(run_all(plain, [work]))
