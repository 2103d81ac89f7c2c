"""The ``[discord]`` settings: token from the environment only, clear errors, defaults."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bot.errors import ConfigError
from bot.settings import load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No PARLEY_* variable and no ./parley.toml of the machine's leaks into these tests."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("PARLEY_"):
            monkeypatch.delenv(name)


def test_defaults_point_at_discord() -> None:
    discord = load_settings().discord
    assert discord.token is None
    assert discord.api_base == "https://discord.com/api/v10"
    assert discord.gateway_url == "wss://gateway.discord.gg/"
    assert (discord.context, discord.allow_dms, discord.rate_limit) == (
        "channel-user",
        True,
        "5/minute",
    )


def test_environment_sets_token_and_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_DISCORD__TOKEN", "secret-token")
    monkeypatch.setenv("PARLEY_DISCORD__GUILD_IDS", "[1, 2]")
    monkeypatch.setenv("PARLEY_DISCORD__CONTEXT", "reply-chain")
    discord = load_settings().discord
    assert discord.token is not None and discord.token.get_secret_value() == "secret-token"
    assert "secret-token" not in repr(discord)
    assert discord.guild_ids == [1, 2] and discord.context == "reply-chain"


def test_a_token_in_the_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "parley.toml"
    config.write_text('[discord]\ntoken = "oops"\n')
    with pytest.raises(ConfigError, match="PARLEY_DISCORD__TOKEN"):
        load_settings(config)


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ('rate_limit = "lots"', "PARLEY_DISCORD__RATE_LIMIT"),
        ("random_reply_probability = 1.5", "PARLEY_DISCORD__RANDOM_REPLY_PROBABILITY"),
        ('context = "guild"', "PARLEY_DISCORD__CONTEXT"),
    ],
)
def test_bad_settings_are_named(tmp_path: Path, line: str, named: str) -> None:
    config = tmp_path / "parley.toml"
    config.write_text(f"[discord]\n{line}\n")
    with pytest.raises(ConfigError, match=named):
        load_settings(config)
