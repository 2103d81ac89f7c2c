"""The conversation archive's disk fills up: writes fail with a clear ArchiveError, what was
archived before stays intact and readable, and writing works again once there is room.

No root is needed: the archive runs in a child process whose file-size limit
(``RLIMIT_FSIZE``) stands in for a full disk — a write past it fails with ``EFBIG`` (the child
ignores ``SIGXFSZ``), which SQLite reports as it reports a full disk. A full loop device or
tmpfs would need root, which the suite does not assume.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from bot.archive import Archive, ArchivedMessage

CHILD = r"""
import json, resource, signal, sys
from pathlib import Path
from bot.archive import Archive, ArchiveError, ArchivedMessage

path, limit = Path(sys.argv[1]), int(sys.argv[2])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
archive = Archive(path)
added, errors = 0, []
for batch in range(1000):
    messages = [
        ArchivedMessage(f"full-{batch}-{i}", "user", "web", "c", "u", "web:c:u", "x" * 2000, 1)
        for i in range(20)
    ]
    try:
        added += archive.add(messages)
    except ArchiveError as e:
        errors.append(str(e))
        if len(errors) == 2:  # failing again is as clean as failing once
            break
print(json.dumps({"added": added, "errors": errors}))
"""


def message(n: int) -> ArchivedMessage:
    return ArchivedMessage(f"before-{n}", "user", "web", "c", "u", "web:c:u", f"hello {n}", 1)


def fill_disk(path: Path) -> dict[str, Any]:
    """Archive into ``path`` from a child whose disk is full 256 KiB from now; its report."""
    limit = sum(p.stat().st_size for p in path.parent.iterdir()) + 256 * 1024
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(limit)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr  # no crash, no SIGXFSZ core dump
    assert "Traceback" not in done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_a_full_disk_fails_writes_cleanly_and_keeps_the_archive(tmp_path: Path) -> None:
    path = tmp_path / "archive.sqlite3"
    with Archive(path) as archive:
        assert archive.add([message(n) for n in range(10)]) == 10
    report = fill_disk(path)
    assert len(report["errors"]) == 2, report
    assert all("cannot write the archive" in e and str(path) in e for e in report["errors"])
    with Archive(path) as archive:  # room again: everything from before is there
        assert archive.total() == 10 + report["added"]
        assert archive.add([message(n) for n in range(10, 15)]) == 5
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_full_disk_is_named_in_the_error(tmp_path: Path) -> None:
    path = tmp_path / "archive.sqlite3"
    Archive(path).close()
    report = fill_disk(path)
    reason = report["errors"][0].replace(str(path), "")
    assert any(word in reason.lower() for word in ("full", "too large", "i/o error")), reason
