"""``deploy/install.sh``: refuses what it does not know, changes nothing on ``--dry-run``,
installs into a scratch root (``--root``) with this test's own ``parley`` (``--python``, so
no virtualenv or download is involved), changes nothing when run again, follows
``/etc/parley/services`` and uninstalls everything but the data unless asked.

Tests that really install need ``systemd-sysusers`` and ``systemctl`` (both work on a root
directory without a running systemd) and are skipped where those are absent (not under
``.ci/run``, which installs them).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

INSTALL = Path(__file__).parents[2] / "deploy" / "install.sh"
MISSING = [tool for tool in ("systemd-sysusers", "systemctl") if shutil.which(tool) is None]
if MISSING and os.environ.get("PARLEY_REQUIRE_DEPLOY_TOOLS"):  # set by .ci/run
    raise RuntimeError(f"PARLEY_REQUIRE_DEPLOY_TOOLS is set but {MISSING} are not installed")
needs_systemd_tools = pytest.mark.skipif(bool(MISSING), reason=f"not installed: {MISSING}")


def install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INSTALL), "--root", str(root), "--python", sys.executable, *args],
        capture_output=True,
        text=True,
    )


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root``: its mode and content hash, or its link target."""
    state = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            state[key] = f"-> {path.readlink()}"
        elif path.is_dir():
            state[key] = f"dir {path.stat().st_mode:o}"
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            state[key] = f"{path.stat().st_mode:o} {digest}"
    return state


@pytest.mark.parametrize("args", [["--dry-rnu"], ["install"], ["--torch", "rocm"], ["--purge"]])
def test_unknown_or_wrong_options_are_refused_before_anything(
    tmp_path: Path, args: list[str]
) -> None:
    result = install(tmp_path, *args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "install.sh:" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_help_lists_the_options(tmp_path: Path) -> None:
    result = install(tmp_path, "--help")
    assert result.returncode == 0
    for option in ["--dry-run", "--uninstall", "--purge", "--torch", "--prefix", "--root"]:
        assert option in result.stdout


def test_dry_run_prints_every_action_and_changes_nothing(tmp_path: Path) -> None:
    result = install(tmp_path, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []
    out = result.stdout
    assert "would run: systemd-sysusers" in out
    assert f"{tmp_path}/etc/parley/parley.toml" in out
    assert f"{tmp_path}/etc/systemd/system/parley-engine@.service" in out
    for unit in ["parley.target", "parley-engine@0.service", "parley-adapter@web.service"]:
        assert f"enable {unit}" in out
    assert "\n+ " not in out  # nothing was run


def test_dry_run_makes_a_venv_with_the_asked_torch_build(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(INSTALL), "--root", str(tmp_path), "--dry-run", "--torch", "cuda"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert f"would run: python3 -m venv {tmp_path}/opt/parley/venv" in result.stdout
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" in result.stdout
    assert list(tmp_path.iterdir()) == []


@needs_systemd_tools
def test_install_then_again_changes_nothing(tmp_path: Path) -> None:
    first = install(tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    installed = snapshot(tmp_path)
    assert "parley:x:" in (tmp_path / "etc" / "passwd").read_text()
    assert installed["etc/parley/parley.env"].startswith("100600 ")
    assert installed["etc/parley/credentials/web"] == "dir 40700"
    wants = "etc/systemd/system/parley.target.wants"
    assert installed[f"{wants}/parley-adapter@web.service"].endswith("parley-adapter@.service")
    assert f"{wants}/parley-engine@0.service" in installed

    second = install(tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Nothing to change" in second.stdout
    assert "\n+ " not in "\n" + second.stdout
    assert snapshot(tmp_path) == installed


@needs_systemd_tools
def test_edited_files_are_kept_and_the_services_list_is_followed(tmp_path: Path) -> None:
    assert install(tmp_path).returncode == 0
    toml = tmp_path / "etc" / "parley" / "parley.toml"
    toml.write_text('log_level = "DEBUG"\n')
    services = tmp_path / "etc" / "parley" / "services"
    services.write_text("parley-engine@0.service\nparley-adapter@telegram.service\n")
    result = install(tmp_path)
    assert result.returncode == 0, result.stderr
    assert toml.read_text() == 'log_level = "DEBUG"\n'
    wants = tmp_path / "etc" / "systemd" / "system" / "parley.target.wants"
    assert sorted(p.name for p in wants.iterdir()) == [
        "parley-adapter@telegram.service",
        "parley-engine@0.service",
    ]


@needs_systemd_tools
def test_a_foreign_unit_in_the_services_list_is_refused(tmp_path: Path) -> None:
    assert install(tmp_path).returncode == 0
    (tmp_path / "etc" / "parley" / "services").write_text("ssh.service\n")
    result = install(tmp_path)
    assert result.returncode == 1
    assert "'ssh.service' is not a Parley unit" in result.stderr


@needs_systemd_tools
def test_uninstall_keeps_the_data_unless_purged(tmp_path: Path) -> None:
    assert install(tmp_path).returncode == 0
    model = tmp_path / "var" / "lib" / "parley" / "models" / "v0001"
    model.mkdir(parents=True)
    before = snapshot(tmp_path)

    dry = install(tmp_path, "--uninstall", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert snapshot(tmp_path) == before
    assert "would run: rm -rf" in dry.stdout

    result = install(tmp_path, "--uninstall")
    assert result.returncode == 0, result.stdout + result.stderr
    units = tmp_path / "etc" / "systemd" / "system"
    assert not list(units.glob("parley*"))
    assert not (tmp_path / "etc" / "parley").exists()
    assert model.is_dir()
    assert "parley:x:" in (tmp_path / "etc" / "passwd").read_text()

    purged = install(tmp_path, "--uninstall", "--purge")
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert not (tmp_path / "var" / "lib" / "parley").exists()
    assert "parley:" not in (tmp_path / "etc" / "passwd").read_text()
