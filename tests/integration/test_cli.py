"""The `parley` command as a user runs it: `parley run` on its embedded server, then
`echo … | parley chat` finding it without flags; help texts; clear start-up errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.engine_fixtures import tiny_checkpoint

PARLEY = [sys.executable, "-m", "bot.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env_for(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    env.update({"PARLEY_DATA_DIR": str(data_dir), **extra})
    return env


@pytest.fixture
def running(tmp_path: Path) -> Iterator[dict[str, str]]:
    model = tiny_checkpoint(tmp_path / "model", "gru").path
    env = env_for(
        tmp_path / "data", PARLEY_ENGINE__MODEL=str(model), PARLEY_WEB__PORT=str(free_port())
    )
    proc = subprocess.Popen(
        [*PARLEY, "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    runtime = tmp_path / "data" / "runtime.json"
    deadline = time.monotonic() + 60
    while not runtime.exists():
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.monotonic() < deadline, "parley run did not come up"
        time.sleep(0.2)
    try:
        yield env
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert not runtime.exists(), "runtime file left behind"


def test_piped_chat_finds_the_embedded_server(running: dict[str, str]) -> None:
    info = json.loads((Path(running["PARLEY_DATA_DIR"]) / "runtime.json").read_text())
    assert info["redis_url"].startswith("redis://127.0.0.1:")
    done = subprocess.run(
        [*PARLEY, "chat"],
        input="hello\nhow are you?\n",
        env=running,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and not any(line.startswith("error:") for line in lines)


def test_chat_without_a_running_system_says_so(tmp_path: Path) -> None:
    done = subprocess.run(
        [*PARLEY, "chat"],
        input="hello\n",
        env=env_for(tmp_path),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert "no running Parley found" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "args", [[], ["run"], ["engine"], ["chat"], ["train"], ["eval"], ["adapter", "web"]]
)
def test_every_command_has_help(args: list[str], tmp_path: Path) -> None:
    done = subprocess.run(
        [*PARLEY, *args, "--help"],
        env=env_for(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "Usage:" in done.stdout


def test_bad_setting_stops_startup_naming_it(tmp_path: Path) -> None:
    env = env_for(tmp_path, PARLEY_ENGINE__MAX_BATCH="lots")
    done = subprocess.run([*PARLEY, "run"], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert "engine.max_batch" in done.stderr and "PARLEY_ENGINE__MAX_BATCH" in done.stderr


def test_secret_in_config_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "parley.toml"
    config.write_text('[web]\nadmin_token = "hunter2"\n')
    done = subprocess.run(
        [*PARLEY, "--config", str(config), "chat"],
        env=env_for(tmp_path),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert "PARLEY_WEB__ADMIN_TOKEN" in done.stderr and "hunter2" not in done.stderr
