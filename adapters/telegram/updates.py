"""What a Telegram update asks of Parley: a chat message, a command, a short note, or nothing.

:func:`read_update` is pure (no I/O): it turns a python-telegram-bot ``Update`` into a
:class:`Decision`, applying the rules of who gets an answer:

- private chats: every text message; other content (stickers, photos, voice, documents…)
  gets one short note;
- groups and supergroups: a message that mentions the bot, replies to one of its messages,
  or is a command (``/help``, or ``/help@thisbot``); ``/help@otherbot`` is someone else's;
- never: edited messages, channel posts, joins and leaves and other service messages,
  messages from bots, updates of kinds Parley does not handle.

A 👍 or 👎 reaction (or taking it back) is feedback on the bot's reply it was put on.

Request ids derive from the update's own ids (:func:`request_id`), so a redelivered update
is recognised downstream.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from telegram import Message, MessageEntity, Update
from telegram.constants import ChatType

from bot.commands import Commands

Action = Literal["chat", "command", "note", "ignore", "callback", "reaction"]

MEDIA_NOTE = "I can only read text messages — please write to me."
EMPTY_MENTION_NOTE = "Hi! Write your message after the mention, or reply to one of mine."


@dataclass(frozen=True)
class BotIdentity:
    """Who the bot is (from ``getMe``): what mentions and ``/cmd@name`` are compared with."""

    id: int
    username: str


@dataclass(frozen=True)
class Incoming:
    """A message Parley answers, reduced to what the reply needs."""

    update_id: int
    chat_id: int
    user_id: int
    message_id: int
    group: bool
    thread_id: int | None
    """The forum topic the message is in; the reply goes there too."""
    text: str
    """The message (bot mention removed), or a command's argument."""
    command: str | None = None
    """Lower-case command name without the slash, for commands."""


@dataclass(frozen=True)
class Reaction:
    """A user's reaction on a message: 👍 is ``1``, 👎 ``-1``, anything else (or none) ``0``."""

    update_id: int
    chat_id: int
    message_id: int
    user_id: int
    value: int


@dataclass(frozen=True)
class Decision:
    action: Action
    kind: str
    """What the update was (``text``, ``command``, ``sticker``, ``edited_message`` …)."""
    message: Incoming | None = None
    note: str = ""
    callback_id: str = ""
    reaction: Reaction | None = None


def request_id(bot_id: int, message: Incoming) -> str:
    """The request id of ``message``: the same for every delivery of its update."""
    return f"tg:{bot_id}:{message.update_id}:{message.chat_id}:{message.message_id}"


def conversation_key(message: Incoming) -> str:
    """``telegram:<chat>:<user>`` (a forum topic is a chat of its own: ``<chat>/<topic>``)."""
    chat = f"{message.chat_id}/{message.thread_id}" if message.thread_id else str(message.chat_id)
    return f"telegram:{chat}:{message.user_id}"


def user_key(user_id: int) -> str:
    return f"telegram:{user_id}"


def read_update(update: Update, me: BotIdentity) -> Decision:
    """What Parley should do with ``update``."""
    if update.callback_query is not None:
        return Decision("callback", "callback_query", callback_id=update.callback_query.id)
    if update.message_reaction is not None:
        return _reaction_decision(update)
    msg = update.message
    if msg is None:
        return Decision("ignore", _update_kind(update))
    if msg.from_user is None or msg.from_user.is_bot:
        return Decision("ignore", "from_bot")
    if msg.chat.type not in (ChatType.PRIVATE, ChatType.GROUP, ChatType.SUPERGROUP):
        return Decision("ignore", f"chat_{msg.chat.type}")
    group = msg.chat.type != ChatType.PRIVATE
    if msg.text is None:
        kind = _content_kind(msg)
        if group or kind == "service":
            return Decision("ignore", kind)
        return Decision("note", kind, message=_incoming(update, msg, group, ""), note=MEDIA_NOTE)
    command = _command(msg, me)
    if command is not None:
        return _command_decision(update, msg, group, me, *command)
    if group and not _addressed(msg, me):
        return Decision("ignore", "not_addressed")
    text = _without_mentions(msg, me).strip()
    incoming = _incoming(update, msg, group, text)
    if not text:
        return Decision("note", "empty_mention", message=incoming, note=EMPTY_MENTION_NOTE)
    return Decision("chat", "text", message=incoming)


def _incoming(
    update: Update, msg: Message, group: bool, text: str, command: str | None = None
) -> Incoming:
    assert msg.from_user is not None
    return Incoming(
        update_id=update.update_id,
        chat_id=msg.chat.id,
        user_id=msg.from_user.id,
        message_id=msg.message_id,
        group=group,
        thread_id=msg.message_thread_id if msg.is_topic_message else None,
        text=text,
        command=command,
    )


def _command(msg: Message, me: BotIdentity) -> tuple[str, str | None, str] | None:
    """``(name, addressee, argument)`` of a message that starts with a bot command."""
    for entity in msg.entities:
        if entity.type == MessageEntity.BOT_COMMAND and entity.offset == 0:
            word = msg.parse_entity(entity)[1:]
            name, _, addressee = word.partition("@")
            assert msg.text is not None
            argument = msg.text[len(word) + 1 :].strip()
            return name.lower(), addressee or None, argument
    return None


def _command_decision(
    update: Update,
    msg: Message,
    group: bool,
    me: BotIdentity,
    name: str,
    addressee: str | None,
    argument: str,
) -> Decision:
    if addressee is not None and addressee.lower() != me.username.lower():
        return Decision("ignore", "other_bot_command")
    if group and addressee is None and not Commands.known(name):
        return Decision("ignore", "unknown_command")  # likely another bot's, in a shared group
    return Decision("command", "command", message=_incoming(update, msg, group, argument, name))


def _addressed(msg: Message, me: BotIdentity) -> bool:
    """Whether a group message mentions the bot or replies to one of its messages."""
    reply = msg.reply_to_message
    if reply is not None and reply.from_user is not None and reply.from_user.id == me.id:
        return True
    handle = "@" + me.username.lower()
    for entity, text in msg.parse_entities(
        [MessageEntity.MENTION, MessageEntity.TEXT_MENTION]
    ).items():
        if entity.type == MessageEntity.MENTION and text.lower() == handle:
            return True
        if entity.type == MessageEntity.TEXT_MENTION and entity.user and entity.user.id == me.id:
            return True
    return False


def _without_mentions(msg: Message, me: BotIdentity) -> str:
    assert msg.text is not None
    text = msg.text
    handle = "@" + me.username.lower()
    for mention in set(msg.parse_entities([MessageEntity.MENTION]).values()):
        if mention.lower() == handle:
            text = re.sub(rf"[ \t]*{re.escape(mention)}[ \t]*", " ", text)
    return text


THUMBS_UP, THUMBS_DOWN = "👍", "👎"


def _reaction_decision(update: Update) -> Decision:
    reacted = update.message_reaction
    assert reacted is not None
    if reacted.user is None or reacted.user.is_bot:  # anonymous (a channel or group admin)
        return Decision("ignore", "message_reaction")
    emoji = {getattr(r, "emoji", None) for r in reacted.new_reaction}
    value = 1 if THUMBS_UP in emoji else -1 if THUMBS_DOWN in emoji else 0
    reaction = Reaction(
        update.update_id, reacted.chat.id, reacted.message_id, reacted.user.id, value
    )
    return Decision("reaction", "message_reaction", reaction=reaction)


_CONTENT = (
    "sticker",
    "photo",
    "voice",
    "video",
    "video_note",
    "audio",
    "document",
    "animation",
    "location",
    "venue",
    "contact",
    "poll",
    "dice",
    "game",
    "story",
)


def _content_kind(msg: Message) -> str:
    for kind in _CONTENT:
        if getattr(msg, kind, None):
            return kind
    return "service"  # joins, leaves, pins, title changes …


def _update_kind(update: Update) -> str:
    data = update.to_dict()
    return next((k for k in data if k != "update_id"), "unknown")
