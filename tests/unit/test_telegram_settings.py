"""The ``[telegram]`` settings: webhook mode needs its URL and a valid secret; the secrets come
from the environment only."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from bot.errors import ConfigError
from bot.settings import TelegramSettings, load_settings


def test_defaults_poll_the_public_bot_api() -> None:
    settings = TelegramSettings()
    assert settings.mode == "polling" and settings.token is None
    assert settings.base_url == "https://api.telegram.org/bot"


def test_webhook_mode_needs_a_url_and_a_secret() -> None:
    with pytest.raises(ValidationError, match="webhook_url"):
        TelegramSettings(mode="webhook", webhook_secret="abc")
    with pytest.raises(ValidationError, match="WEBHOOK_SECRET"):
        TelegramSettings(mode="webhook", webhook_url="https://x.example/tg")
    ok = TelegramSettings(
        mode="webhook", webhook_url="https://x.example/tg", webhook_secret="a-b_1"
    )
    assert ok.webhook_path == "/telegram"


def test_a_secret_telegram_would_refuse_is_refused_here() -> None:
    with pytest.raises(ValidationError, match="webhook_secret"):
        TelegramSettings(webhook_secret="has spaces!")


@pytest.mark.parametrize("name", ["token", "webhook_secret"])
def test_secrets_are_refused_in_the_file(tmp_path: Path, name: str) -> None:
    config = tmp_path / "parley.toml"
    config.write_text(f'[telegram]\n{name} = "123:abc"\n')
    with pytest.raises(ConfigError, match=f"PARLEY_TELEGRAM__{name.upper()}"):
        load_settings(config)


def test_token_and_lists_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_TELEGRAM__TOKEN", "123:abc")
    monkeypatch.setenv("PARLEY_TELEGRAM__ADMIN_IDS", "[1, 2]")
    settings = load_settings(None)
    assert settings.telegram.token is not None
    assert settings.telegram.token.get_secret_value() == "123:abc"
    assert settings.telegram.admin_ids == [1, 2]
