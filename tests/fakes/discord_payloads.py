"""JSON payloads of the local Discord, shaped as Discord's API v10 documents them.

Only the fields discord.py 2.x reads are filled; the shapes follow
https://discord.com/developers/docs/resources (user, guild, channel, message, interaction).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

DISCORD_EPOCH_MS = 1_420_070_400_000

Payload = dict[str, Any]


class Snowflakes:
    """Discord-style ids: milliseconds since the Discord epoch, shifted, plus a counter."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)

    def __call__(self) -> int:
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        return (ms << 22) | (next(self._counter) & 0x3FFFFF)


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class User:
    id: int
    name: str
    bot: bool = False

    def payload(self) -> Payload:
        return {
            "id": str(self.id),
            "username": self.name,
            "discriminator": "0",
            "global_name": self.name,
            "avatar": None,
            "bot": self.bot,
        }


@dataclass
class Channel:
    id: int
    name: str
    type: int
    """0 guild text, 1 DM, 11 public thread."""
    guild_id: int | None = None
    parent_id: int | None = None
    owner_id: int | None = None
    recipient: User | None = None

    def payload(self) -> Payload:
        data: Payload = {"id": str(self.id), "type": self.type, "name": self.name}
        if self.type == 1:
            assert self.recipient is not None
            data.update(recipients=[self.recipient.payload()], last_message_id=None)
            return data
        data.update(
            guild_id=str(self.guild_id),
            position=0,
            permission_overwrites=[],
            nsfw=False,
            parent_id=str(self.parent_id) if self.parent_id else None,
            topic=None,
            last_message_id=None,
            rate_limit_per_user=0,
        )
        if self.type == 11:
            data.update(
                owner_id=str(self.owner_id),
                member_count=1,
                message_count=0,
                thread_metadata={
                    "archived": False,
                    "auto_archive_duration": 1440,
                    "archive_timestamp": now_iso(),
                    "locked": False,
                },
            )
        return data


@dataclass
class Role:
    id: int
    name: str

    def payload(self, position: int) -> Payload:
        return {
            "id": str(self.id),
            "name": self.name,
            "permissions": "0",
            "position": position,
            "color": 0,
            "hoist": False,
            "managed": False,
            "mentionable": False,
            "flags": 0,
        }


@dataclass
class Guild:
    id: int
    name: str
    owner_id: int
    roles: list[Role] = field(default_factory=list)
    channels: list[Channel] = field(default_factory=list)
    members: dict[int, list[int]] = field(default_factory=dict)
    """user id -> role ids."""

    def member_payload(self, user: User, *, with_user: bool = True) -> Payload:
        data: Payload = {
            "roles": [str(r) for r in self.members.get(user.id, [])],
            "joined_at": now_iso(),
            "deaf": False,
            "mute": False,
            "flags": 0,
            "nick": None,
            "avatar": None,
            "permissions": "0",
        }
        if with_user:
            data["user"] = user.payload()
        return data

    def payload(self, users: dict[int, User]) -> Payload:
        everyone = Role(self.id, "@everyone")
        return {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "owner_id": str(self.owner_id),
            "unavailable": False,
            "large": False,
            "member_count": len(self.members),
            "roles": [r.payload(i) for i, r in enumerate([everyone, *self.roles])],
            "channels": [c.payload() for c in self.channels if c.type != 11],
            "threads": [c.payload() for c in self.channels if c.type == 11],
            "members": [self.member_payload(users[uid]) for uid in self.members],
            "features": [],
            "emojis": [],
            "stickers": [],
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "joined_at": now_iso(),
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "afk_timeout": 300,
            "system_channel_flags": 0,
            "premium_tier": 0,
            "preferred_locale": "en-US",
            "nsfw_level": 0,
            "premium_progress_bar_enabled": False,
        }


@dataclass
class Message:
    """A message in the local Discord, with every text it has shown (``texts[-1]`` is now)."""

    id: int
    channel: Channel
    author: User
    texts: list[str]
    reference: int | None = None
    mentions: list[User] = field(default_factory=list)
    allowed_mentions: Payload | None = None
    interaction_id: int | None = None
    """Set on follow-up messages: the interaction they answer."""
    deleted: bool = False
    attachments: list[Payload] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.texts[-1]

    @property
    def edits(self) -> int:
        return len(self.texts) - 1

    def payload(self, messages: dict[int, Message], guild: Guild | None) -> Payload:
        data: Payload = {
            "id": str(self.id),
            "channel_id": str(self.channel.id),
            "author": self.author.payload(),
            "content": self.text,
            "timestamp": now_iso(),
            "edited_timestamp": now_iso() if self.edits else None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [u.payload() for u in self.mentions],
            "mention_roles": [],
            "attachments": self.attachments,
            "embeds": [],
            "pinned": False,
            "type": 19 if self.reference else 0,
            "flags": 0,
        }
        if guild is not None:
            data["guild_id"] = str(guild.id)
            if self.author.id in guild.members:
                data["member"] = guild.member_payload(self.author, with_user=False)
        if self.reference is not None:
            data["message_reference"] = {
                "message_id": str(self.reference),
                "channel_id": str(self.channel.id),
                **({"guild_id": str(guild.id)} if guild else {}),
            }
            referenced = messages.get(self.reference)
            if referenced is not None:
                inner = referenced.payload(messages, guild)
                inner.pop("referenced_message", None)
                data["referenced_message"] = inner
        if self.interaction_id is not None:
            data["webhook_id"] = str(self.author.id)
            data["application_id"] = str(self.author.id)
        return data
