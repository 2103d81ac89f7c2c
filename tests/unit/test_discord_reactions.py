"""adapters/discord: which reactions are feedback, from discord.py's own raw event objects."""

from __future__ import annotations

from typing import Any

import discord
import pytest

from adapters.discord import policy
from adapters.discord.client import intents
from adapters.discord.reactions import reaction_facts

BOT, ALICE, OTHER = 99, 5, 7


@pytest.mark.parametrize(
    ("emoji", "value"),
    [
        ("👍", 1),
        ("👎", -1),
        ("👍🏿", 1),  # skin tones
        ("👎🏻", -1),
        ("👍\ufe0f", 1),  # with a variation selector
        ("🎉", None),
        ("", None),
        (None, None),
    ],
)
def test_thumbs_are_feedback_values(emoji: str | None, value: int | None) -> None:
    assert policy.thumb(emoji, custom=False) == value


def test_a_server_emoji_is_never_a_thumb() -> None:
    assert policy.thumb("👍", custom=True) is None


def raw(event_type: str, **fields: Any) -> discord.RawReactionActionEvent:
    """A raw reaction event built by discord.py from a gateway payload."""
    data: dict[str, Any] = {
        "user_id": str(ALICE),
        "channel_id": "10",
        "message_id": "20",
        "emoji": {"id": None, "name": "👍"},
        "burst": False,
        "type": 0,
        **fields,
    }
    emoji = discord.PartialEmoji.from_dict(data["emoji"])
    return discord.RawReactionActionEvent(data, emoji, event_type)  # type: ignore[arg-type]


def test_a_thumbs_up_on_the_bots_message_is_a_reaction() -> None:
    added = reaction_facts(raw("REACTION_ADD", message_author_id=str(BOT)), BOT)
    removed = reaction_facts(raw("REACTION_REMOVE"), BOT)  # a removal names no author
    assert added is not None and removed is not None
    assert (added.message_id, added.user_id, added.value, added.added) == (20, ALICE, 1, True)
    assert (removed.emoji, removed.value, removed.added) == ("👍", 1, False)


def test_not_feedback_here() -> None:
    on_other = raw("REACTION_ADD", message_author_id=str(OTHER))
    own = raw("REACTION_ADD", user_id=str(BOT), message_author_id=str(BOT))
    party = raw("REACTION_ADD", emoji={"id": None, "name": "🎉"}, message_author_id=str(BOT))
    custom = raw("REACTION_ADD", emoji={"id": "123", "name": "thumbsup"})
    assert [reaction_facts(e, BOT) for e in (on_other, own, party, custom)] == [None] * 4


def test_a_super_reaction_counts_and_is_told_apart() -> None:
    burst = reaction_facts(raw("REACTION_ADD", burst=True, type=1), BOT)
    assert burst is not None and burst.super_reaction and burst.value == 1


def test_the_reaction_intents_are_asked_for_and_are_not_privileged() -> None:
    wanted = intents(message_content=False)
    assert wanted.guild_reactions and wanted.dm_reactions
    privileged = discord.Intents.none()
    privileged.members = privileged.presences = privileged.message_content = True
    assert wanted.value & privileged.value == 0
