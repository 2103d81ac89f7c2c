"""Settings: one typed tree from TOML + environment, with errors that name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.errors import ConfigError
from bot.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("PARLEY_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def test_example_config_loads() -> None:
    settings = load_settings(ROOT / "deploy" / "parley.toml.example")
    assert settings.redis.url == "redis://127.0.0.1:6379/0"
    assert settings.engine.max_batch == 64


def test_environment_wins_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "p.toml"
    config.write_text("[engine]\nmax_batch = 8\n")
    monkeypatch.setenv("PARLEY_ENGINE__MAX_BATCH", "16")
    assert load_settings(config).engine.max_batch == 16


def test_short_redis_url_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_REDIS_URL", "redis://example:6379/1")
    assert load_settings().redis.url == "redis://example:6379/1"


def test_parley_toml_in_working_directory_is_read(tmp_path: Path) -> None:
    (tmp_path / "parley.toml").write_text("[web]\nport = 9000\n")
    assert load_settings().web.port == 9000


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[engine]\nmax_batch = 0\n", "engine.max_batch"),
        ("[web]\nport = 'eighty'\n", "web.port"),
        ("[engine]\nno_such = 1\n", "engine.no_such"),
        ("[redis\n", "not valid TOML"),
    ],
)
def test_bad_setting_names_itself(tmp_path: Path, text: str, named: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_settings(config)


def test_secret_in_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "p.toml"
    config.write_text('[web]\napi_keys = ["k"]\n')
    with pytest.raises(ConfigError, match="PARLEY_WEB__API_KEYS"):
        load_settings(config)


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_secrets_are_not_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_WEB__ADMIN_TOKEN", "hunter2")
    settings = load_settings()
    assert settings.web.admin_token is not None
    assert settings.web.admin_token.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(settings)
