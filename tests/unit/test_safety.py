"""The output safety filter: whole replies, and streamed text that never shows a blocked word."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.archive import Archive
from bot.errors import ConfigError
from bot.safety import SafetyFilter, StreamGuard, load_classifier, training_exclusion
from bot.settings import SafetySettings
from bot.wire import Exchange

BLOCKED = ("darn", "heck no")


def test_blocked_words_are_masked_whole_word_and_case_insensitively() -> None:
    f = SafetyFilter(blocklist=BLOCKED)
    assert f.check("Darn it, HECK NO!").text == "**** it, *******!"
    assert f.check("a darning needle").blocked is False  # whole words only


def test_lookalike_characters_are_caught() -> None:
    f = SafetyFilter(blocklist=["darn"])
    assert f.check("ｄａｒｎ it").blocked  # full-width letters
    assert f.check("dárn it").blocked  # an accent added


def test_patterns_and_replace_action() -> None:
    f = SafetyFilter(patterns=[r"\b\d{3}-\d{4}\b"], action="replace", replacement="[removed]")
    assert f.check("call 555-1234 now").text == "[removed]"
    assert f.check("call me now").blocked is False


def test_a_bad_pattern_or_hook_is_a_clear_config_error() -> None:
    with pytest.raises(ConfigError, match="not a valid regex"):
        SafetyFilter(patterns=["(unclosed"])
    with pytest.raises(ConfigError, match="cannot be loaded"):
        load_classifier("no_such_module_xyz:check")
    with pytest.raises(ConfigError, match=r"package\.module:function"):
        load_classifier("nocolon")


def test_a_classifier_hook_replaces_and_a_failing_one_blocks() -> None:
    f = SafetyFilter(classifier=lambda text: "spam" in text, replacement="no")
    assert f.check("buy spam").text == "no"
    assert f.check("hello").blocked is False

    def broken(text: str) -> bool:
        raise RuntimeError("model crashed")

    assert SafetyFilter(classifier=broken).check("hello").blocked


def test_settings_build_the_filter() -> None:
    f = SafetyFilter.from_settings(SafetySettings(blocklist=["darn"], action="replace"))
    assert f.check("darn").text == SafetySettings().replacement


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(["darn", "heck", "no", "dar", "n", " ", "\n", "ok", "darned"])),
    st.lists(st.integers(min_value=1, max_value=7), min_size=1),
)
def test_streamed_text_never_shows_a_blocked_word(pieces: list[str], cuts: list[int]) -> None:
    guard = StreamGuard(SafetyFilter(blocklist=BLOCKED))
    text = "".join(pieces)
    shown = ""
    position = 0
    for cut in cuts * (len(text) // max(1, sum(cuts)) + 1):
        position = min(len(text), position + cut)
        visible = guard.visible(text[:position])
        assert visible.startswith(shown)  # what was shown is never taken back
        for start, end in guard.safety.spans(text):  # no blocked word in it, even in part
            if start < len(visible):
                assert set(visible[start : min(end, len(visible))]) == {"*"}
        shown = visible
    assert guard.final(text).text.startswith(shown) or guard.final(text).blocked


def test_exclude_from_training_keeps_matching_messages_out_of_the_export(tmp_path: Path) -> None:
    settings = SafetySettings(blocklist=["darn"])
    assert training_exclusion(SafetySettings()) is None  # an empty filter excludes nothing
    assert training_exclusion(settings.model_copy(update={"exclude_from_training": False})) is None
    exclude = training_exclusion(settings)
    assert exclude is not None
    with Archive(tmp_path / "archive.sqlite3") as archive:
        archive.add_exchanges(
            [
                Exchange(
                    request_id=f"r{n}",
                    conversation="web:c:u",
                    platform="web",
                    user="u",
                    prompt=prompt,
                    reply="ok",
                    model_version="v0001",
                    created_ms=1_700_000_000_000 + n * 1000,
                )
                for n, prompt in enumerate(["hello there", "darn this", "bye now"])
            ]
        )
        kept = archive.export(tmp_path / "all.jsonl")
        filtered = archive.export(tmp_path / "filtered.jsonl", exclude_text=exclude)
    assert kept.messages == 3 and filtered.messages == 2
    text = (tmp_path / "filtered.jsonl").read_text()
    assert "darn" not in text and "hello there" in text and "bye now" in text
