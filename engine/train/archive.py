"""The conversation archive as training data for ``parley train --from-archive``.

The trainer service's SQLite archive (``settings.archive_file``) is exported, consent
applied, into the run's own directory as Parley JSONL, which ``--data`` then reads like any
other source: users opted out in the archive or in the running system's Redis are left out,
and the bot's replies only as ``learning.bot_replies`` allows.
"""

from __future__ import annotations

import logging
from pathlib import Path

from bot.archive import open_archive
from bot.errors import DataError
from bot.safety import training_exclusion
from bot.settings import Settings

log = logging.getLogger(__name__)

EXPORT_FILE = "archive.jsonl"


def export_archive(settings: Settings, run_dir: Path, opted_out: list[str]) -> Path:
    """Export the archive into ``run_dir``; :class:`DataError` if there is nothing in it."""
    path = run_dir / EXPORT_FILE
    if not settings.archive_file.exists():
        raise DataError(
            str(settings.archive_file), None, "no archive yet (is `parley trainer` running?)"
        )
    with open_archive(settings.archive_file) as archive:
        stats = archive.export(
            path,
            bot_replies=settings.learning.bot_replies,
            good_reply_weight=settings.learning.good_reply_weight,
            exclude_users=opted_out,
            exclude_text=training_exclusion(settings.safety),
        )
    if not stats.conversations:
        raise DataError(str(settings.archive_file), None, "the archive holds no conversations")
    log.info(
        "exported %d archived conversations (%d messages) to %s",
        stats.conversations,
        stats.messages,
        path,
    )
    return path
