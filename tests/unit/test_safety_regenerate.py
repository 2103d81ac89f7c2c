"""The safety filter's ``regenerate`` action: the decision logic in ``Replies``, the derived
request, the wire and archive changes it rests on. No Redis, no model (the whole path is in
``tests/integration/test_safety_regenerate.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from adapters.metrics import adapter_metrics
from adapters.replies import Replies
from bot import wire
from bot.archive import Archive
from bot.errors import ConfigError
from bot.safety import SafetyFilter, regeneration, regeneration_seed, training_exclusion
from bot.settings import SafetySettings, Settings, load_settings
from bot.wire import (
    ChatRequest,
    ControlRequest,
    Delta,
    Done,
    Error,
    Exchange,
    ReplyEvent,
    Request,
    Sampling,
    Turn,
)

REQUEST = ChatRequest(id="r1", conversation="web:c:c", reply_to="web-1", text="hi", user="c")


class ScriptedClient:
    """Answers each chat request id with its scripted events (a request it has no script for
    fails the test) and every control request as the engine does (``Done``, or
    ``control_answer``); records every request asked, in order."""

    def __init__(
        self, scripts: dict[str, list[ReplyEvent]], control_answer: ReplyEvent | None = None
    ) -> None:
        self.scripts = scripts
        self.control_answer = control_answer
        self.asked: list[ChatRequest] = []
        self.controls: list[ControlRequest] = []

    async def stream(self, request: Request, *, timeout_s: float) -> AsyncIterator[ReplyEvent]:
        if isinstance(request, ControlRequest):
            self.controls.append(request)
            yield self.control_answer or Done(request_id=request.id, seq=0, text="ok")
            return
        self.asked.append(request)
        for event in self.scripts[request.id]:
            yield event


def reply(request_id: str, *pieces: str) -> list[ReplyEvent]:
    """A streamed reply: a delta per piece, then the whole text."""
    events: list[ReplyEvent] = [
        Delta(request_id=request_id, seq=i, text=piece) for i, piece in enumerate(pieces)
    ]
    events.append(Done(request_id=request_id, seq=len(pieces), text="".join(pieces)))
    return events


def filtered(
    client: ScriptedClient, attempts: int = 2, **filter_args: object
) -> tuple[Replies, CollectorRegistry]:
    registry = CollectorRegistry()
    safety = SafetyFilter(
        blocklist=["darn"],
        action="regenerate",
        replacement="[withheld]",
        regenerate_attempts=attempts,
        **filter_args,  # type: ignore[arg-type]
    )
    replies = Replies(
        client, adapter_id="web-1", timeout_s=9.0, metrics=adapter_metrics(registry), safety=safety
    )
    return replies, registry


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, {"adapter": "web-1", **labels}) or 0.0


async def collect(replies: Replies, **kw: bool) -> list[ReplyEvent]:
    return [event async for event in replies.events(REQUEST, **kw)]


# -- the derived request ----------------------------------------------------------------


def test_a_regeneration_asks_again_for_the_same_message_with_another_seed() -> None:
    first, second = regeneration(REQUEST, 1), regeneration(REQUEST, 2)
    assert (first.id, second.id) == ("r1~regen1", "r1~regen2")
    assert first.regenerates == second.regenerates == "r1" == first.answers
    assert (first.text, first.conversation, first.user) == (REQUEST.text, "web:c:c", "c")
    assert first.sampling.seed is not None and first.sampling.seed != second.sampling.seed
    # A later attempt derived from a regeneration still names the original message.
    assert regeneration(first, 2).regenerates == "r1"
    with pytest.raises(ValueError, match="from 1"):
        regeneration(REQUEST, 0)


def test_a_seeded_request_regenerates_the_same_way_every_time() -> None:
    seeded = msgspec.structs.replace(REQUEST, sampling=Sampling(seed=7, temperature=0.9))
    again = msgspec.structs.replace(seeded, id="another-id")
    assert regeneration_seed(seeded, 1) == regeneration_seed(again, 1)  # the seed decides
    assert regeneration_seed(seeded, 1) != 7
    assert regeneration(seeded, 1).sampling.temperature == 0.9  # the rest of sampling kept
    unseeded_other = msgspec.structs.replace(REQUEST, id="r2")
    assert regeneration_seed(REQUEST, 1) != regeneration_seed(unseeded_other, 1)


# -- the decision in Replies ----------------------------------------------------------------


async def test_a_blocked_reply_is_regenerated_and_only_the_new_text_is_final() -> None:
    client = ScriptedClient(
        {
            "r1": reply("r1", "well ", "that is ", "darn ", "silly"),
            "r1~regen1": reply("r1~regen1", "a kinder ", "answer"),
        }
    )
    replies, registry = filtered(client)
    events = await collect(replies)
    assert [r.id for r in client.asked] == ["r1", "r1~regen1"]
    assert client.asked[1].regenerates == "r1"
    *deltas, done = events
    assert isinstance(done, Done) and done.text == "a kinder answer"
    streamed = "".join(e.text for e in deltas if isinstance(e, Delta))
    assert "darn" not in streamed and "kinder" not in streamed  # attempt 1's safe start only
    assert all(isinstance(e, Delta) for e in deltas)
    # One reply to the request as asked: its own id, numbered on.
    assert {e.request_id for e in events} == {"r1"}
    assert [e.seq for e in events] == list(range(len(events)))
    assert metric(registry, "parley_adapter_replies_regenerated_total") == 1
    assert metric(registry, "parley_adapter_replies_filtered_total", reason="blocklist") == 1
    assert metric(registry, "parley_adapter_regenerate_fallbacks_total", reason="blocked") == 0


async def test_a_reply_that_passes_is_not_regenerated() -> None:
    pieces = ("all ", "is ", "fine ", "and ", "well, ", "thanks")
    client = ScriptedClient({"r1": reply("r1", *pieces)})
    replies, registry = filtered(client)
    *deltas, done = await collect(replies)
    assert done == Done(request_id="r1", seq=len(deltas), text="".join(pieces))
    streamed = "".join(e.text for e in deltas if isinstance(e, Delta))
    assert streamed and done.text.startswith(streamed)  # streamed as the guard releases it
    assert len(client.asked) == 1
    assert metric(registry, "parley_adapter_replies_regenerated_total") == 0


async def test_every_attempt_blocked_falls_back_to_the_replacement() -> None:
    client = ScriptedClient(
        {rid: reply(rid, "darn ", "it") for rid in ("r1", "r1~regen1", "r1~regen2", "r1~regen3")}
    )
    replies, registry = filtered(client, attempts=3)
    events = await collect(replies)
    assert [r.id for r in client.asked] == ["r1", "r1~regen1", "r1~regen2", "r1~regen3"]
    assert isinstance(events[-1], Done) and events[-1].text == "[withheld]"
    assert not any("darn" in e.text for e in events if isinstance(e, Delta | Done))
    assert metric(registry, "parley_adapter_replies_regenerated_total") == 3
    assert metric(registry, "parley_adapter_replies_filtered_total", reason="blocklist") == 4
    assert metric(registry, "parley_adapter_regenerate_fallbacks_total", reason="blocked") == 1
    # The stored reply is amended to what the user is shown.
    (amend,) = client.controls
    assert (amend.command, amend.target, amend.text) == ("amend", "r1", "[withheld]")
    assert amend.conversation == REQUEST.conversation


async def test_a_failed_regeneration_falls_back_to_the_replacement_not_to_the_error() -> None:
    busy = Error(request_id="r1~regen1", seq=0, code="busy", message="busy now")
    client = ScriptedClient({"r1": reply("r1", "darn"), "r1~regen1": [busy]})
    replies, registry = filtered(client)
    events = await collect(replies)
    assert len(client.asked) == 2  # no further attempt after a failure
    assert isinstance(events[-1], Done) and events[-1].text == "[withheld]"
    assert events[-1].request_id == "r1"
    assert metric(registry, "parley_adapter_regenerate_fallbacks_total", reason="failed") == 1
    assert [c.command for c in client.controls] == ["amend"]


async def test_a_failed_amend_is_logged_and_the_replacement_still_sent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    unavailable = Error(request_id="r1~amend", seq=0, code="unavailable", message="away")
    client = ScriptedClient(
        {"r1": reply("r1", "darn"), "r1~regen1": reply("r1~regen1", "darn")}, unavailable
    )
    replies, _ = filtered(client, attempts=1)
    events = await collect(replies)
    assert isinstance(events[-1], Done) and events[-1].text == "[withheld]"
    assert "not amended" in caplog.text


async def test_the_request_failing_itself_is_passed_on_without_regenerating() -> None:
    busy = Error(request_id="r1", seq=0, code="busy", message="busy now")
    client = ScriptedClient({"r1": [busy]})
    replies, registry = filtered(client)
    assert await collect(replies) == [busy]
    assert len(client.asked) == 1 and not client.controls
    assert metric(registry, "parley_adapter_replies_regenerated_total") == 0


async def test_a_caller_that_cannot_take_text_back_gets_the_passed_reply_whole() -> None:
    client = ScriptedClient(
        {"r1": reply("r1", "fine ", "words ", "darn"), "r1~regen1": reply("r1~regen1", "ok")}
    )
    replies, _ = filtered(client)
    events = await collect(replies, retractable=False)
    assert events == [Done(request_id="r1", seq=0, text="ok")]


async def test_a_classifier_blocks_the_first_attempt_only() -> None:
    seen: list[str] = []

    def first_only(text: str) -> bool:
        seen.append(text)
        return len(seen) == 1

    client = ScriptedClient({"r1": reply("r1", "one"), "r1~regen1": reply("r1~regen1", "two")})
    replies, registry = filtered(client, classifier=first_only)
    events = await collect(replies)
    assert events == [Done(request_id="r1", seq=0, text="two")]  # a classifier streams nothing
    assert seen == ["one", "two"]
    assert metric(registry, "parley_adapter_replies_filtered_total", reason="classifier") == 1


def test_the_settings_choose_regenerate_and_bound_the_attempts(tmp_path: Path) -> None:
    f = SafetyFilter.from_settings(
        SafetySettings(blocklist=["darn"], action="regenerate", regenerate_attempts=3)
    )
    assert (f.action, f.regenerate_attempts) == ("regenerate", 3)
    assert f.check("darn").text == SafetySettings().replacement  # the fallback
    assert Settings().safety.regenerate_attempts == 2
    config = tmp_path / "parley.toml"
    config.write_text('[safety]\naction = "regenerate"\nregenerate_attempts = 0\n')
    with pytest.raises(ConfigError, match="regenerate_attempts"):
        load_settings(config)


# -- the wire: stored turns and requests stay readable both ways -------------------------------


def test_a_stored_turn_without_an_id_is_a_turn_byte_for_byte() -> None:
    turn = Turn("bot", "hello")
    plain = msgspec.msgpack.encode(turn)
    assert wire.encode_turn(turn) == plain
    assert wire.decode_stored_turn(plain) == wire.StoredTurn("bot", "hello", "")
    tagged = wire.encode_turn(turn, "r1")
    assert wire.decode_turn(tagged) == turn  # an older reader ignores the tag
    assert wire.decode_stored_turn(tagged).request_id == "r1"


def test_a_request_or_exchange_without_the_new_fields_still_decodes() -> None:
    class OldChat(msgspec.Struct, tag="chat", tag_field="type", kw_only=True):
        id: str
        conversation: str
        reply_to: str
        text: str
        v: int = 1

    old = msgspec.msgpack.encode(OldChat(id="r1", conversation="c", reply_to="a", text="hi"))
    decoded = wire.decode_request(old)
    assert isinstance(decoded, ChatRequest) and decoded.regenerates == ""
    assert decoded.answers == "r1"
    again = wire.decode_request(wire.encode(regeneration(decoded, 1)))
    assert isinstance(again, ChatRequest) and again.regenerates == "r1"


# -- the archive: the blocked reply does not stay as training data ------------------------------


def exchange(request_id: str, reply_text: str, regenerates: str = "") -> Exchange:
    return Exchange(
        request_id=request_id,
        conversation="web:c:c",
        platform="web",
        user="c",
        prompt="hi",
        reply=reply_text,
        model_version="v1",
        created_ms=1_000,
        regenerates=regenerates,
    )


def bot_texts(archive: Archive) -> list[str]:
    return [
        m["text"]
        for c in archive.conversations()
        for m in c.record["messages"]
        if m.get("role") == "bot"
    ]


@pytest.mark.parametrize("regenerated_first", [False, True])
def test_a_regenerated_exchange_takes_the_blocked_ones_place_in_the_archive(
    tmp_path: Path, regenerated_first: bool
) -> None:
    blocked, kinder = exchange("r1", "darn it"), exchange("r1~regen1", "kinder", "r1")
    with Archive(tmp_path / "archive.db") as archive:
        order = [kinder, blocked] if regenerated_first else [blocked, kinder]
        for x in order:  # one log entry at a time, as the trainer reads them
            archive.add_exchanges([x])
        archive.add_exchanges([kinder])  # a redelivered log entry changes nothing
        assert archive.set_feedback("r1", 1)  # the user rated the only reply they saw
        assert archive.count_user("c") == 2  # the user's message once, one reply
        assert bot_texts(archive) == ["kinder"]  # 👍 kept, on the regenerated text


def test_after_a_fallback_the_last_blocked_reply_is_kept_out_by_exclude_from_training(
    tmp_path: Path,
) -> None:
    """Every attempt blocked: the archive holds the last attempt's (blocked) text under the
    request, though the user saw only the replacement. It never reaches training data while
    ``exclude_from_training`` is on (the default) — nor, with it off, unless rated 👍."""
    settings = SafetySettings(blocklist=["darn"], action="regenerate")
    with Archive(tmp_path / "archive.db") as archive:
        archive.add_exchanges([exchange("r1", "darn"), exchange("r1~regen1", "darn it", "r1")])
        archive.set_feedback("r1", 1)
        exclude = training_exclusion(settings)
        kept = [
            m["text"]
            for c in archive.conversations(exclude_text=exclude)
            for m in c.record["messages"]
        ]
        assert kept == ["hi"]
        assert bot_texts(archive) == ["darn it"]  # what exclude_from_training = false would let in
