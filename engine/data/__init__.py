"""The conversation data layer the trainer builds datasets from. Pure Python, no torch.

Readers turn sources into :class:`Conversation` objects (Parley JSONL, the bundled chitchat
corpus, Telegram Desktop and DiscordChatExporter exports), raising
:class:`~bot.errors.DataError` with file and line for anything they cannot read;
``formatting`` turns conversations into training text and the engine's prompt in the same
layout; ``dataset`` loads ``--data`` specs and splits train/validation by conversation;
``words`` measures generated text at the word level.
"""

from engine.data.chitchat import read_chitchat
from engine.data.conversation import DEFAULT_GAP_S, Conversation, Message, split_by_gap
from engine.data.dataset import describe, detect_kind, load_sources, split_conversations
from engine.data.discord import parse_discord, read_discord
from engine.data.formatting import (
    BOT_TOKEN,
    EOT_TOKEN,
    SPECIAL_TOKENS,
    USER_TOKEN,
    Role,
    clean_text,
    conversation_turns,
    format_conversation,
    format_conversations,
    format_prompt,
    format_turns,
)
from engine.data.jsonl import iter_jsonl, read_jsonl, write_jsonl
from engine.data.telegram import parse_telegram, read_telegram
from engine.data.words import distinct_n, word_validity, word_vocabulary, words

__all__ = [
    "BOT_TOKEN",
    "DEFAULT_GAP_S",
    "EOT_TOKEN",
    "SPECIAL_TOKENS",
    "USER_TOKEN",
    "Conversation",
    "Message",
    "Role",
    "clean_text",
    "conversation_turns",
    "describe",
    "detect_kind",
    "distinct_n",
    "format_conversation",
    "format_conversations",
    "format_prompt",
    "format_turns",
    "iter_jsonl",
    "load_sources",
    "parse_discord",
    "parse_telegram",
    "read_chitchat",
    "read_discord",
    "read_jsonl",
    "read_telegram",
    "split_by_gap",
    "split_conversations",
    "word_validity",
    "word_vocabulary",
    "words",
    "write_jsonl",
]
