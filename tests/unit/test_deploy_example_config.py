"""deploy/parley.toml.example loads, and names every setting (set, or commented out)."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, SecretStr

from bot.settings import SECRET_FIELDS, Settings, load_settings

EXAMPLE = Path(__file__).parents[2] / "deploy" / "parley.toml.example"


def test_the_example_config_loads() -> None:
    settings = load_settings(EXAMPLE)
    assert settings.redis.url == "redis://127.0.0.1:6379/0"


def test_the_example_names_every_setting() -> None:
    text = EXAMPLE.read_text()
    sections = re.split(r"^\[(\w+)\]", text, flags=re.MULTILINE)
    named: dict[str, str] = {"": sections[0]}
    named.update(zip(sections[1::2], sections[2::2], strict=True))
    missing = []
    for section, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            for name, sub in annotation.model_fields.items():
                secret = (section, name) in SECRET_FIELDS or sub.annotation in (
                    SecretStr,
                    SecretStr | None,
                )
                if secret:
                    continue
                if not re.search(rf"^#?\s*{name}\s*=", named.get(section, ""), re.MULTILINE):
                    missing.append(f"[{section}] {name}")
        elif not re.search(rf"^#?\s*{section}\s*=", named[""], re.MULTILINE):
            missing.append(section)
    assert not missing, f"deploy/parley.toml.example lacks: {', '.join(missing)}"
