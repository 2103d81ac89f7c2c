"""Splitting replies for chat platforms, and the reply pump that sends and edits them."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.pump import ReplyGone, StreamedReply, pump
from adapters.text import FENCE, split_message, utf16_length
from bot.wire import Delta, Done, ReplyEvent

FENCE_LINE = re.compile(r"```[^\n`]{0,20}")


def fences(text: str) -> int:
    return sum(bool(FENCE_LINE.fullmatch(line)) for line in text.splitlines())


def words(chunks: list[str]) -> list[str]:
    """The reply's words with the fences a split added removed."""
    return [w for chunk in chunks for w in chunk.split() if not w.startswith(FENCE)]


def test_short_text_is_one_message() -> None:
    assert split_message("  hello there \n", 2000) == ["hello there"]
    assert split_message(" \n ", 2000) == []


def test_splits_on_line_then_word_boundaries() -> None:
    lines = [f"line {i} " + "word " * 20 for i in range(200)]
    chunks = split_message("\n".join(lines), 2000)
    assert len(chunks) > 1
    assert all(len(c) <= 2000 for c in chunks)
    assert all(c.endswith("word") for c in chunks)  # each ends where a line ended
    assert words(chunks) == " ".join(lines).split()


def test_one_long_word_is_cut_at_the_limit() -> None:
    chunks = split_message("x" * 5000, 2000)
    assert "".join(chunks) == "x" * 5000
    assert all(len(c) <= 2000 for c in chunks)


def test_a_long_code_block_is_closed_and_reopened_with_its_language() -> None:
    code = "\n".join(f"print({i})  # a line of code" for i in range(300))
    text = "Here you go:\n```python\n" + code + "\n```\nDone."
    chunks = split_message(text, 2000)
    assert len(chunks) > 2
    for chunk in chunks:
        assert len(chunk) <= 2000
        assert chunk.count(FENCE) % 2 == 0, chunk[:80]
    assert all(c.startswith("```python\n") for c in chunks[1:-1])
    assert words(chunks) == [w for w in text.split() if not w.startswith(FENCE)]


def test_a_short_code_block_moves_whole_to_the_next_message() -> None:
    text = "intro " * 300 + "\n```\n" + "code line\n" * 50 + "```"
    chunks = split_message(text, 2000)
    assert chunks[1].startswith("```\n") and chunks[1].endswith("```")
    assert FENCE not in chunks[0]


def test_telegram_counts_utf16_units() -> None:
    chunks = split_message("😀" * 3000, 4096, measure=utf16_length)
    assert all(utf16_length(c) <= 4096 for c in chunks)
    assert "".join(chunks) == "😀" * 3000


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300),
            st.just("\n```py\n"),
            st.just("\n```\n"),
            st.just("x" * 700),
        ),
        max_size=30,
    ),
    st.integers(min_value=40, max_value=2000),
)
def test_every_split_fits_and_keeps_every_word(parts: list[str], limit: int) -> None:
    text = "".join(parts)
    chunks = split_message(text, limit)
    assert all(0 < len(c) <= limit for c in chunks)
    assert "".join(words(chunks)) == "".join(w for w in text.split() if not w.startswith(FENCE))
    # Every message but the last closes the code blocks it opens; the last one leaves open only
    # what the reply itself left open.
    for chunk in chunks[:-1]:
        assert fences(chunk) % 2 == 0
    if chunks:
        assert fences(chunks[-1]) % 2 == fences(text.strip()) % 2


class Sink:
    """Records what a platform would show; ``gone`` makes edits fail as after a deletion."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.calls: list[tuple[str, int]] = []
        self.gone = False

    async def send(self, text: str, *, first: bool) -> int:
        self.messages.append(text)
        self.calls.append(("send", len(self.messages) - 1))
        return len(self.messages) - 1

    async def edit(self, handle: int, text: str) -> None:
        if self.gone:
            raise ReplyGone
        self.messages[handle] = text
        self.calls.append(("edit", handle))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def events(texts: list[str], clock: Clock, final: str) -> AsyncIterator[ReplyEvent]:
    for i, text in enumerate(texts):
        clock.now += 0.4
        yield Delta(request_id="r", seq=i, text=text)
    yield Done(request_id="r", seq=len(texts), text=final)


@pytest.mark.asyncio
async def test_pump_edits_at_most_once_per_interval_and_shows_the_final_text() -> None:
    sink, clock = Sink(), Clock()
    reply: StreamedReply[int] = StreamedReply(sink, limit=2000, interval_s=1.0, clock=clock)
    deltas = [f"w{i} " for i in range(10)]
    final = await pump(reply, events(deltas, clock, "".join(deltas).strip()))
    assert isinstance(final, Done)
    assert sink.messages == ["".join(deltas).strip()]
    renders = sink.calls
    # 10 deltas 0.4 s apart over 4 s: one send, at most 4 throttled edits, one final edit.
    assert renders[0] == ("send", 0)
    assert 1 <= len(renders) <= 6


@pytest.mark.asyncio
async def test_pump_continues_a_long_reply_in_further_messages() -> None:
    sink, clock = Sink(), Clock()
    reply: StreamedReply[int] = StreamedReply(sink, limit=2000, interval_s=1.0, clock=clock)
    text = ("word " * 1000).strip()
    await pump(reply, events([text[:2500], text[2500:]], clock, text))
    assert len(sink.messages) == 3
    assert " ".join(sink.messages).split() == text.split()


@pytest.mark.asyncio
async def test_a_deleted_message_ends_the_reply_quietly() -> None:
    sink, clock = Sink(), Clock()
    reply: StreamedReply[int] = StreamedReply(sink, limit=2000, interval_s=0.0, clock=clock)
    await reply.render("first")
    sink.gone = True
    await reply.render("first and more")
    await reply.render("first and more and more")
    assert reply.gone and sink.messages == ["first"]
