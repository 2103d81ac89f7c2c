"""``parley train`` from the command line: a good run, bad input, and --publish."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from bot.cli import cli
from bot.registry import ModelRegistry
from engine.models.config import PRESETS
from tests.unit.test_train_helpers import TINY, TINY_PRESET, write_corpus

FIXTURES = Path(__file__).parent.parent / "fixtures" / "data"
FAST = ["--max-steps", "10", "--batch-size", "4", "--eval-interval", "5", "--tokenizer", "char"]


@pytest.fixture(autouse=True)
def tiny_preset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(PRESETS, TINY_PRESET, TINY)
    monkeypatch.setenv("PARLEY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("PARLEY_REDIS_URL", raising=False)
    monkeypatch.delenv("PARLEY_REDIS__URL", raising=False)


def parley(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def train(tmp_path: Path, out: Path, *extra: str) -> Result:
    corpus = write_corpus(tmp_path / "chats.jsonl")
    return parley(
        "train", "--data", str(corpus), "--preset", TINY_PRESET, "--out", str(out),
        "--val-fraction", "0.2", *FAST, *extra,
    )  # fmt: skip


def test_train_writes_checkpoint_metrics_provenance_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = train(tmp_path, out, "--seed", "7")
    assert result.exit_code == 0, result.output
    assert "bits/char" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("val_loss", "val_bpc", "train_tokens", "tokens_per_s", "steps", "wall_time_s"):
        assert key in metrics, key
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["seed"] == 7
    assert provenance["conversations"]["train"] > 0 and provenance["conversations"]["val"] > 0
    assert "git_commit" in provenance and provenance["data"] == [str(tmp_path / "chats.jsonl")]
    assert (out / "loss.png").read_bytes().startswith(b"\x89PNG")


def test_a_finished_run_is_not_clobbered(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert train(tmp_path, out).exit_code == 0
    again = train(tmp_path, out)
    assert again.exit_code != 0 and "--overwrite" in again.output
    assert train(tmp_path, out, "--overwrite").exit_code == 0


@pytest.mark.parametrize(
    ("name", "where"),
    [
        ("broken_truncated.jsonl", "broken_truncated.jsonl:3"),
        ("not_conversations.json", "not_conversations.json"),
    ],
)
def test_bad_data_exits_with_the_file_and_line_and_no_traceback(
    tmp_path: Path, name: str, where: str
) -> None:
    result = parley("train", "--data", str(FIXTURES / name), "--out", str(tmp_path / "o"), *FAST)
    assert result.exit_code != 0
    assert where in result.output
    assert "Traceback" not in result.output


def test_unknown_preset_is_a_clean_error(tmp_path: Path) -> None:
    result = parley("train", "--preset", "nope", "--out", str(tmp_path / "o"), *FAST)
    assert result.exit_code != 0 and "unknown model preset" in result.output


def test_publish_makes_a_better_model_live_and_a_worse_one_not(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "data" / "models")
    # Two steps of training, made live by hand: an earlier model an admin published.
    weak = train(tmp_path, tmp_path / "weak", "--max-steps", "2")
    assert weak.exit_code == 0, weak.output
    registry.set_live(registry.add(tmp_path / "weak").version)
    assert registry.live().version == "v0001"  # type: ignore[union-attr]

    # Ten steps beat two: published as v0002 and live.
    better = train(tmp_path, tmp_path / "a", "--publish")
    assert better.exit_code == 0, better.output
    assert "v0002 is live now" in better.output
    assert registry.live().version == "v0002"  # type: ignore[union-attr]

    # Two steps cannot beat ten: added as v0003, v0002 stays live.
    worse = train(tmp_path, tmp_path / "b", "--publish", "--max-steps", "2")
    assert worse.exit_code == 0, worse.output
    assert "v0002 stays live" in worse.output
    assert [v.version for v in registry.versions()] == ["starter", "v0001", "v0002", "v0003"]
    assert registry.live().version == "v0002"  # type: ignore[union-attr]


def test_a_model_the_gate_keeps_out_is_never_taken_for_live(tmp_path: Path) -> None:
    # Ten steps of a tiny model do not beat the starter: added, not live, and with no LIVE
    # written the starter (not the newest version) is what engines serve.
    result = train(tmp_path, tmp_path / "a", "--publish", "--max-steps", "2")
    assert result.exit_code == 0, result.output
    assert "starter stays live" in result.output
    registry = ModelRegistry(tmp_path / "data" / "models")
    assert registry.live().version == "starter"  # type: ignore[union-attr]
