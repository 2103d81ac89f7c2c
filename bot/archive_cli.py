"""``parley archive export|import|stats``: the conversation archive from the command line.

``import`` seeds the archive with the history a community already has: a Telegram Desktop
export, a DiscordChatExporter JSON, or Parley JSONL, read by the trainer's own readers (the
``engine.data`` package, pure Python; imported by name like the other commands the
composition root loads). Importing the same file again adds nothing: an imported message's
id is its conversation's id and its place in it.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from bot.archive import ArchivedMessage, open_archive
from bot.errors import ParleyError
from bot.safety import training_exclusion
from bot.settings import Settings


@click.group("archive")
def archive_group() -> None:
    """The conversation archive the trainer service keeps (export, import, stats)."""


@archive_group.command("export")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--bot-replies",
    type=click.Choice(["never", "good"]),
    default=None,
    help="The bot's replies to include (default: setting learning.bot_replies).",
)
@click.pass_obj
def export_command(settings: Settings, path: Path, bot_replies: str | None) -> None:
    """Write the archive as Parley JSONL conversations (what `parley train --data` reads).

    Users who opted out are left out (as recorded in the archive)."""
    with _errors(), open_archive(settings.archive_file) as archive:
        stats = archive.export(
            path,
            bot_replies=bot_replies or settings.learning.bot_replies,  # type: ignore[arg-type]
            good_reply_weight=settings.learning.good_reply_weight,
            exclude_text=training_exclusion(settings.safety),
        )
    click.echo(
        f"wrote {stats.conversations} conversations ({stats.messages} messages) to {path}; "
        f"{stats.opted_out_users} opted-out user(s) left out"
    )


@archive_group.command("import")
@click.argument("sources", nargs=-1, required=True)
@click.pass_obj
def import_command(settings: Settings, sources: tuple[str, ...]) -> None:
    """Add a Telegram Desktop export, a DiscordChatExporter JSON or a Parley JSONL file to
    the archive. A file that cannot be read is refused whole, naming the line."""
    dataset = importlib.import_module("engine.data.dataset")
    with _errors(), open_archive(settings.archive_file) as archive:
        for source in sources:
            conversations = dataset.load_sources([source])
            added = archive.add(imported_messages(conversations))
            click.echo(f"{source}: {len(conversations)} conversations, {added} new messages")


@archive_group.command("stats")
@click.pass_obj
def stats_command(settings: Settings) -> None:
    """Messages per platform, chat and day."""
    with _errors(), open_archive(settings.archive_file) as archive:
        rows = archive.stats()
        opted_out = len(archive.opted_out())
    if not rows:
        click.echo(f"the archive {settings.archive_file} is empty")
        return
    click.echo(f"{'platform':<10} {'chat':<24} {'day':<10} {'messages':>8}")
    for platform, chat, day, count in rows:
        click.echo(f"{platform:<10} {chat[:24]:<24} {day:<10} {count:>8}")
    click.echo(f"total {sum(r[3] for r in rows)} messages; {opted_out} user(s) opted out")


def imported_messages(conversations: Iterable[Any]) -> Iterator[ArchivedMessage]:
    """Archive rows for conversations read by ``engine.data`` (opted-out authors skipped)."""
    for conversation in conversations:
        platform, _, rest = conversation.id.partition(":")
        chat = rest.rpartition(":")[0] or rest or conversation.id
        at = 0
        for index, message in enumerate(conversation.messages):
            if message.author in conversation.opted_out_authors:
                continue
            at = _ms(message.timestamp) or at + 1
            yield ArchivedMessage(
                request_id=f"import:{conversation.id}:{index}",
                role="bot" if message.is_bot else "user",
                platform=conversation.source or platform,
                chat=chat,
                user=message.author,
                conversation=conversation.id,
                text=message.text,
                created_ms=at,
                source="import",
            )


def _ms(timestamp: str | None) -> int:
    if not timestamp:
        return 0
    try:
        return int(datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return 0


class _errors:
    """A ParleyError becomes one line and exit status 1."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, e: BaseException | None, tb: Any) -> None:
        if isinstance(e, ParleyError):
            raise click.ClickException(str(e)) from None
