"""The systemd units as ``deploy/install.sh`` installs them: ``systemd-analyze verify`` finds
nothing to warn about, ``systemd-analyze security --offline=yes`` scores each within its
threshold, and each runs the right command with the right sandbox.

The units are installed into a scratch root (``install.sh --root``) with ``ExecStart=``
pointing at this test's own ``parley``, which ``verify`` checks exists. Skipped where
systemd's tools are not installed; ``.ci/run`` installs them and refuses the skip.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]
INSTALL = REPO / "deploy" / "install.sh"
PARLEY = Path(sys.executable).parent / "parley"
TOOLS = ("systemd-analyze", "systemctl", "systemd-sysusers")

MISSING = [tool for tool in TOOLS if shutil.which(tool) is None]
if MISSING and os.environ.get("PARLEY_REQUIRE_DEPLOY_TOOLS"):  # set by .ci/run
    raise RuntimeError(f"PARLEY_REQUIRE_DEPLOY_TOOLS is set but {MISSING} are not installed")
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"not installed: {MISSING}")

ADAPTERS = ["parley-adapter@web.service", "parley-adapter@discord.service"]
ADAPTERS += ["parley-adapter@telegram.service"]
OTHERS = ["parley-engine@0.service", "parley-engine@12.service", "parley-trainer.service"]
CLIENTS = ["parley-train.service"]
THRESHOLD = {
    **dict.fromkeys([*ADAPTERS, *CLIENTS], 2.0),
    **dict.fromkeys(OTHERS, 3.0),
}
ALL = [*ADAPTERS, *OTHERS, *CLIENTS, "parley-train.timer", "parley.target"]


@pytest.fixture(scope="module")
def units(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The unit directory of a scratch root that install.sh installed into."""
    root = tmp_path_factory.mktemp("root")
    subprocess.run(
        ["bash", str(INSTALL), "--root", str(root), "--python", sys.executable],
        check=True,
        capture_output=True,
        text=True,
    )
    yield root / "etc" / "systemd" / "system"


def settings(unit: Path) -> dict[str, list[str]]:
    """``Section.Key`` -> every value the unit file gives it, in order."""
    found: dict[str, list[str]] = {}
    section = ""
    for line in unit.read_text().splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif line and not line.startswith("#"):
            key, _, value = line.partition("=")
            found.setdefault(f"{section}.{key}", []).append(value)
    return found


def template(units: Path, name: str) -> Path:
    return units / re.sub(r"@[^.]+\.", "@.", name)


def test_verify_reports_nothing(units: Path) -> None:
    paths = [str(units / name) for name in ALL]
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *paths],
        cwd=units,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


@pytest.mark.parametrize("name", [*ADAPTERS, *OTHERS, *CLIENTS])
def test_security_exposure_within_threshold(units: Path, name: str) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(units / name)],
        cwd=units,
        capture_output=True,
        text=True,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found[1]) <= THRESHOLD[name], result.stdout


def test_exec_start_runs_this_parley(units: Path) -> None:
    commands = {
        "parley-engine@.service": f"{PARLEY} engine --instance %i --metrics-port-base 9400",
        "parley-adapter@.service": f"{PARLEY} adapter %i",
        "parley-trainer.service": f"{PARLEY} trainer",
        "parley-train.service": f"{PARLEY} retrain",
    }
    for name, command in commands.items():
        assert settings(units / name)["Service.ExecStart"] == [command]


@pytest.mark.parametrize("name", ["parley-engine@.service", "parley-adapter@.service"])
def test_long_running_services_notify_and_restart(units: Path, name: str) -> None:
    unit = settings(units / name)
    assert unit["Service.Type"] == ["notify"]
    assert unit["Service.NotifyAccess"] == ["main"]
    assert unit["Service.Restart"] == ["on-failure"]
    assert unit["Service.WatchdogSec"] and unit["Service.TimeoutStopSec"]
    assert unit["Unit.PartOf"] == ["parley.target"]
    assert unit["Install.WantedBy"] == ["parley.target"]


def test_trainer_notifies_and_restarts(units: Path) -> None:
    unit = settings(units / "parley-trainer.service")
    assert unit["Service.Type"] == ["notify"]
    assert unit["Service.Restart"] == ["on-failure"]


def test_only_training_and_serving_units_see_gpus(units: Path) -> None:
    for name in ["parley-adapter@.service", "parley-train.service"]:
        unit = settings(units / name)
        assert unit["Service.PrivateDevices"] == ["yes"]
        assert "Service.DeviceAllow" not in unit
    for name in ["parley-engine@.service", "parley-trainer.service"]:
        unit = settings(units / name)
        assert unit["Service.DevicePolicy"] == ["closed"]
        assert all(rule.startswith("char-nvidia") for rule in unit["Service.DeviceAllow"])


def test_engine_instance_picks_the_gpu(units: Path) -> None:
    environment = settings(units / "parley-engine@.service")["Service.Environment"]
    assert "CUDA_VISIBLE_DEVICES=%i" in environment
    assert "CUDA_DEVICE_ORDER=PCI_BUS_ID" in environment


def test_every_service_is_sandboxed_the_same_way(units: Path) -> None:
    for name in ["parley-engine@.service", "parley-adapter@.service", "parley-trainer.service"]:
        unit = settings(units / name)
        for key, value in {
            "User": "parley",
            "StateDirectory": "parley",
            "UMask": "0077",
            "ProtectSystem": "strict",
            "ProtectHome": "yes",
            "PrivateTmp": "yes",
            "NoNewPrivileges": "yes",
            "CapabilityBoundingSet": "",
            "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        }.items():
            assert unit[f"Service.{key}"] == [value], (name, key)
        assert unit["Service.SystemCallFilter"][0] == "@system-service"
