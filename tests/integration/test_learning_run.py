"""`parley run` on a first run: it prints a dashboard login link (no admin token configured),
the link's token opens the admin API, and the trainer service it starts archives what is
said (`parley archive stats` shows it)."""

from __future__ import annotations

import json
import select
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from test_cli import PARLEY, env_for, free_port

from tests.unit.engine_fixtures import tiny_checkpoint

LINK_PREFIX = "Dashboard (this run's admin login): "


def read_until(proc: subprocess.Popen[str], prefix: str, timeout_s: float = 90) -> str:
    """The first output line of ``proc`` that starts with ``prefix`` (its rest)."""
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if prefix in line:
            return line.split(prefix, 1)[1].strip()
    raise AssertionError(f"no line with {prefix!r} in:\n{''.join(seen)}")


def get_json(request: urllib.request.Request) -> dict[str, object]:
    """The answer to ``request``; the web server may still be binding its port."""
    for _ in range(120):
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                body: dict[str, object] = json.load(response)
                return body
        except urllib.error.URLError as e:
            if not isinstance(e.reason, ConnectionRefusedError):
                raise
            time.sleep(0.25)
    raise AssertionError("the web adapter never answered")


def test_first_run_prints_a_login_link_and_archives(tmp_path: Path) -> None:
    model = tiny_checkpoint(tmp_path / "model", "gru").path
    port = free_port()
    env = env_for(
        tmp_path / "data",
        PARLEY_ENGINE__MODEL=str(model),
        PARLEY_WEB__PORT=str(port),
        PARLEY_LEARNING__ARCHIVE_PLATFORMS='["terminal"]',
    )
    proc = subprocess.Popen(
        [*PARLEY, "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        link = read_until(proc, LINK_PREFIX)
        assert link.startswith(f"http://127.0.0.1:{port}/admin#token=")
        token = link.split("#token=", 1)[1]
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/admin/api/status",
            headers={"Authorization": f"Bearer {token}"},
        )
        status = get_json(request)
        assert status["versions"][-1]["version"] == "starter"  # type: ignore[index]
        chat = subprocess.run(
            [*PARLEY, "chat", "--conversation", "first-run"],
            input="hello archive\n",
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert chat.returncode == 0, chat.stderr
        for _ in range(60):  # the trainer archives asynchronously; ask until it shows
            stats = subprocess.run(
                [*PARLEY, "archive", "stats"], env=env, capture_output=True, text=True, timeout=60
            )
            if "terminal" in stats.stdout:
                break
            time.sleep(0.5)
        assert "total 2 messages" in stats.stdout, stats.stdout + stats.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert token not in out.replace(link, "")  # printed once, in the link, never logged
