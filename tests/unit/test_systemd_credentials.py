"""Secrets from systemd credentials ($CREDENTIALS_DIRECTORY) reach the settings tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bot.credentials import read_credentials
from bot.errors import ConfigError
from bot.settings import SECRET_FIELDS, load_settings


@pytest.fixture
def creds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "credentials"
    directory.mkdir()
    for name in list(os.environ):
        if name.startswith("PARLEY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(directory))
    monkeypatch.chdir(tmp_path)  # no ./parley.toml
    return directory


def test_credential_files_become_settings(creds: Path) -> None:
    (creds / "discord-token").write_text("discord-secret\n")
    (creds / "web_web-admin-token").write_text("admin-secret")  # loaded from a directory
    (creds / "web-api-keys").write_text("k1\n\n  k2 \n")
    (creds / "shared_redis-url").write_text("redis://:pw@10.0.0.5:6379/0\n")
    settings = load_settings()
    assert settings.discord.token is not None
    assert settings.discord.token.get_secret_value() == "discord-secret"
    assert settings.web.admin_token is not None
    assert settings.web.admin_token.get_secret_value() == "admin-secret"
    assert [k.get_secret_value() for k in settings.web.api_keys] == ["k1", "k2"]
    assert settings.redis.url == "redis://:pw@10.0.0.5:6379/0"


def test_environment_wins_over_a_credential(creds: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (creds / "discord-token").write_text("from-credential")
    monkeypatch.setenv("PARLEY_DISCORD__TOKEN", "from-environment")
    token = load_settings().discord.token
    assert token is not None and token.get_secret_value() == "from-environment"


def test_a_credential_keeps_the_rest_of_its_section(creds: Path, tmp_path: Path) -> None:
    (tmp_path / "parley.toml").write_text('[redis]\nshards = 8\nurl = "redis://plain:6379"\n')
    (creds / "redis-url").write_text("redis://:pw@secret:6379/0")
    settings = load_settings()
    assert settings.redis.shards == 8
    assert settings.redis.url == "redis://:pw@secret:6379/0"


def test_unknown_credential_is_refused_with_the_known_names(creds: Path) -> None:
    (creds / "discord-tokn").write_text("x")
    with pytest.raises(ConfigError, match=r"discord-tokn.*discord-token"):
        load_settings()


def test_one_setting_from_two_files_is_refused(creds: Path) -> None:
    (creds / "discord-token").write_text("a")
    (creds / "discord_discord-token").write_text("b")
    with pytest.raises(ConfigError, match="both set discord-token"):
        load_settings()


def test_no_credentials_directory_reads_nothing() -> None:
    assert read_credentials(SECRET_FIELDS, environ={}) == {}


def test_unreadable_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY"):
        read_credentials(SECRET_FIELDS, environ={"CREDENTIALS_DIRECTORY": str(tmp_path / "no")})
