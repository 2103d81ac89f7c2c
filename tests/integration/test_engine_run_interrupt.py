"""Ctrl-C on `parley run`, as a terminal sends it: SIGINT to the whole foreground process
group. The embedded server lives in a session of its own, so the signal reaches Parley alone:
the engine drains against a server that still answers, the server is stopped last, and the
command ends with exit status 0 and no traceback."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from tests.integration.test_cli import PARLEY, env_for, free_port
from tests.unit.engine_fixtures import tiny_checkpoint


def test_ctrl_c_stops_parley_run_cleanly_and_the_server_last(tmp_path: Path) -> None:
    model = tiny_checkpoint(tmp_path / "model", "gru").path
    data = tmp_path / "data"
    env = env_for(data, PARLEY_ENGINE__MODEL=str(model), PARLEY_WEB__PORT=str(free_port()))
    proc = subprocess.Popen(
        [*PARLEY, "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, like a terminal's foreground job
    )
    try:
        assert proc.stdout is not None
        started = []
        for line in proc.stdout:  # blocks until `parley run` says it is up (or exits)
            started.append(line)
            if "Parley is up" in line:
                break
        assert proc.poll() is None, "".join(started)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, rest
    assert "Traceback" not in rest and "ERROR" not in rest and "WARNING" not in rest, rest
    assert rest.count("stopping") == 1, rest
    server_log = (data / "redis" / "valkey.log").read_text()
    assert "SIGINT" not in server_log, server_log  # the Ctrl-C was not the server's
    assert "SIGTERM" in server_log, server_log  # it was stopped, by Parley, at the end
