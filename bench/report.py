"""Benchmark results on disk, and the README's performance section generated from them.

Every benchmark saves its JSON with :func:`save_result`: the figures plus ``meta`` (commit,
whether the tree had uncommitted changes, machine, date), as ``bench/results/<name>.json``.
Running this module rewrites the part of README.md between ``<!-- bench:start -->`` and
``<!-- bench:end -->`` from those files, so no figure in it is typed by hand::

    python -m bench.report            # rewrite README.md's block
    python -m bench.report --check    # exit 1 if the block is not what the files give

A result file without ``meta`` (written before results carried it) is listed as such.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


# ------------------------------------------------------------------------- writing results


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_meta() -> dict[str, Any]:
    """Where and when a result was measured: commit, machine and date."""
    import torch  # benchmarks need torch anyway; the README generator does not

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "commit": _git("rev-parse", "HEAD"),
        "uncommitted_changes": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "gpu": gpu,
        },
    }


def save_result(name: str, figures: dict[str, Any], directory: Path = RESULTS) -> Path:
    """Write ``figures`` with :func:`run_meta` as ``directory/<name>.json``; its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    path.write_text(json.dumps({"meta": run_meta(), **figures}, indent=2) + "\n")
    return path


def load_results(directory: Path = RESULTS) -> dict[str, dict[str, Any]]:
    """Every result file, by name (the file name without ``.json``)."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))}
