"""The dependency direction the design promises: bot/ imports no torch and no platform SDK,
adapters/ no torch, and neither adapters/ nor engine/ imports the other."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "discord", "telegram", "numpy", "safetensors", "tokenizers")


def modules(package: str) -> list[str]:
    names = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def loaded_after_import(names: list[str]) -> set[str]:
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True
    )
    return set(out.stdout.split())


def test_bot_imports_no_torch_and_no_platform_sdk() -> None:
    loaded = loaded_after_import(modules("bot"))
    assert not loaded & set(HEAVY), f"bot/ pulled in {loaded & set(HEAVY)}"
    assert "engine" not in loaded and "adapters" not in loaded


def test_adapters_import_no_torch() -> None:
    platform = [
        m for m in modules("adapters") if m.split(".")[1:2] not in (["discord"], ["telegram"])
    ]
    loaded = loaded_after_import(platform)
    assert "torch" not in loaded and "engine" not in loaded


@pytest.mark.parametrize(
    ("package", "forbidden"), [("engine", "adapters"), ("adapters", "engine"), ("bot", "torch")]
)
def test_no_static_import_across(package: str, forbidden: str) -> None:
    """Static check too, so a lazy import inside a function cannot hide the dependency —
    except bot/cli.py and bot/launch.py, the composition root, which import by name."""
    offenders = []
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            if any(n == forbidden or n.startswith(forbidden + ".") for n in names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders
