"""Secrets from systemd credentials: files in ``$CREDENTIALS_DIRECTORY``.

A unit's ``LoadCredential=`` puts each secret in a file that only the service can read. A file
is named for the setting it holds, section and field joined by ``-`` and ``_`` written as
``-``: ``discord-token`` is ``discord.token``, ``web-admin-token`` is ``web.admin_token``,
``redis-url`` is ``redis.url`` (a Redis URL carries its password). The name may follow an ID
and ``_``, as systemd names the files it loads from a directory (``LoadCredential=shared:
/etc/parley/credentials/shared`` gives ``shared_redis-url``). The content is the value, one
trailing newline ignored; a list setting (``web-api-keys``) holds one item per line.

A file whose name is not one of these is refused (:class:`ConfigError`), so a misspelt
credential never goes silently unused.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bot.errors import ConfigError

EXTRA_FIELDS = {("redis", "url")}
"""Settings read from credentials besides the secrets: the Redis URL holds its password."""

LIST_FIELDS = {("web", "api_keys")}
"""Settings that are lists: one item per line of the file."""


def credential_name(section: str, field: str) -> str:
    return f"{section}-{field.replace('_', '-')}"


def read_credentials(
    secret_fields: Iterable[tuple[str, str]],
    environ: Mapping[str, str] = os.environ,
) -> dict[str, dict[str, Any]]:
    """``{section: {field: value}}`` from ``$CREDENTIALS_DIRECTORY`` (empty when unset)."""
    directory = environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return {}
    known = {credential_name(*f): f for f in {*secret_fields, *EXTRA_FIELDS}}
    found: dict[tuple[str, str], Path] = {}
    try:
        files = sorted(p for p in Path(directory).iterdir() if p.is_file())
    except OSError as e:
        raise ConfigError(f"cannot read CREDENTIALS_DIRECTORY={directory}: {e}") from e
    for path in files:
        name = path.name.split("_", 1)[-1]
        if name not in known:
            raise ConfigError(
                f"credential {path.name!r} in {directory} names no setting; "
                f"known names: {', '.join(sorted(known))}"
            )
        if known[name] in found:
            raise ConfigError(
                f"credentials {found[known[name]].name!r} and {path.name!r} both set {name}"
            )
        found[known[name]] = path
    values: dict[str, dict[str, Any]] = {}
    for (section, field), path in found.items():
        values.setdefault(section, {})[field] = _value(path, (section, field) in LIST_FIELDS)
    return values


def _value(path: Path, is_list: bool) -> str | list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read credential {path.name!r}: {e}") from e
    if is_list:
        return [line.strip() for line in text.splitlines() if line.strip()]
    return text.removesuffix("\n")
