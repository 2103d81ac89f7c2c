"""adapters/discord/policy.py: when the bot answers, conversation keys, admins, safe text."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.discord import policy
from adapters.discord.policy import Incoming, why_answer
from adapters.text import split_message
from bot.settings import DiscordSettings

BOT = 99
PLAIN = Incoming(
    message_id=1,
    channel_id=10,
    author_id=5,
    author_is_bot=False,
    is_dm=False,
    mentions_bot=False,
    replies_to=None,
    replies_to_bot=False,
    in_thread=False,
    thread_joined=False,
    parent_channel_id=None,
    text="hello",
    has_attachments=False,
)
"""A guild message that does not address the bot."""


def never() -> float:
    return 0.99


def always() -> float:
    return 0.0


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({}, None),
        ({"is_dm": True}, "dm"),
        ({"mentions_bot": True}, "mention"),
        ({"replies_to": 7, "replies_to_bot": True}, "reply"),
        ({"replies_to": 7}, None),  # a reply to someone else
        ({"in_thread": True, "parent_channel_id": 10, "thread_joined": True}, "thread"),
        ({"in_thread": True, "parent_channel_id": 10}, None),
        ({"channel_id": 11}, "channel"),
        ({"in_thread": True, "channel_id": 12, "parent_channel_id": 11}, "channel"),
        ({"author_is_bot": True, "mentions_bot": True}, None),
        ({"author_is_bot": True, "is_dm": True}, None),
    ],
)
def test_why_answer(change: dict[str, object], expected: str | None) -> None:
    settings = DiscordSettings(answer_channels=[11])
    assert why_answer(replace(PLAIN, **change), settings, chance=never) == expected  # type: ignore[arg-type]


def test_dms_can_be_turned_off() -> None:
    settings = DiscordSettings(allow_dms=False)
    assert why_answer(replace(PLAIN, is_dm=True), settings, chance=always) is None


def test_random_replies_follow_the_probability_and_skip_empty_text() -> None:
    settings = DiscordSettings(random_reply_probability=0.25)
    draws = iter([0.1, 0.3])
    assert why_answer(PLAIN, settings, chance=lambda: next(draws)) == "random"
    assert why_answer(PLAIN, settings, chance=lambda: next(draws)) is None
    assert why_answer(replace(PLAIN, text=""), settings, chance=always) is None
    assert why_answer(PLAIN, DiscordSettings(), chance=always) is None  # off by default


def test_strip_mention_takes_out_both_mention_forms() -> None:
    assert policy.strip_mention(f"<@{BOT}> hi <@!{BOT}> there <@5>", BOT) == "hi  there <@5>"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("@everyone hi", "@\u200beveryone hi"),
        ("hey @here!", "hey @\u200bhere!"),
        ("mail me@example.com", "mail me@example.com"),
    ],
)
def test_neutralise(text: str, shown: str) -> None:
    assert policy.neutralise(text) == shown


@given(st.text(alphabet="@everyonehr \n", max_size=60))
def test_neutralised_text_never_holds_a_mass_mention(text: str) -> None:
    shown = policy.neutralise(text)
    assert "@everyone" not in shown and "@here" not in shown
    assert shown.replace("\u200b", "") == text


def test_no_part_of_a_split_reply_holds_a_mass_mention() -> None:
    text = "@everyone " * 400  # 4,000 characters, split like a reply
    parts = split_message(text, 2000, measure=lambda t: len(policy.neutralise(t)))
    assert all(len(policy.neutralise(p)) <= 2000 for p in parts)
    assert all("@everyone" not in policy.neutralise(p) for p in parts)


def test_context_keys() -> None:
    def key(context: str, root: int | None) -> str:
        settings = DiscordSettings(context=context)  # type: ignore[arg-type]
        return policy.context_key(settings, channel_id=10, user_id=5, chain_root=root)

    assert key("channel-user", 3) == "discord:10:5"
    assert key("channel", 3) == "discord:10"
    assert key("reply-chain", 3) == "discord:10:chain:3"
    assert key("reply-chain", None) == "discord:10:5"  # a slash command has no chain


def test_request_ids_come_from_discord_ids() -> None:
    assert policy.message_request_id(123) == policy.message_request_id(123) == "discord-m-123"
    assert policy.interaction_request_id(123) == "discord-i-123"


def test_admins_by_id_or_role() -> None:
    settings = DiscordSettings(admin_ids=[1], admin_role_ids=[50])
    assert policy.is_admin(settings, 1, [])
    assert policy.is_admin(settings, 2, [40, 50])
    assert not policy.is_admin(settings, 2, [40])
    assert not policy.is_admin(DiscordSettings(), 1, [50])


def test_too_long_and_slow_down_notices() -> None:
    settings = DiscordSettings(max_message_chars=10)
    assert policy.too_long(settings, "x" * 10) is None
    assert "11 characters" in (policy.too_long(settings, "x" * 11) or "")
    assert policy.slow_down(2.6).endswith("Try again in 3 s.")
    assert policy.slow_down(None).endswith("Try again in a moment.")


def test_a_code_block_keeps_its_indentation_across_messages() -> None:
    code = "\n".join(f"    line_{i} = {i}" for i in range(200))
    parts = split_message(f"```py\n{code}\n```", 2000)
    assert len(parts) > 1
    lines = [line for part in parts for line in part.splitlines() if "line_" in line]
    assert lines == code.splitlines()
