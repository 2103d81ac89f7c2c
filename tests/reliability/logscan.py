"""A scan of log lines for secrets: every test's token and key must stay out of the logs.

:class:`SecretLog` is a logging handler that formats every record it sees (message and
traceback) and remembers each one holding a known secret. Secrets are learnt as they are
made: :meth:`SecretLog.learn_secret_strs` wraps :class:`pydantic.SecretStr`, so every token
and API key a test puts into Parley's settings (all of them are ``SecretStr``) is known
without the test naming it; :meth:`SecretLog.learn` adds others (a token handed to a fake).
Values shorter than :data:`MIN_SECRET_CHARS` are ignored: a test's ``"k1"`` would match
innocent text.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

import pydantic

MIN_SECRET_CHARS = 8


@dataclass(frozen=True)
class Leak:
    test: str
    logger: str
    line: str


class SecretLog(logging.Handler):
    """Remembers the log records that contain a known secret (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__(level=logging.NOTSET)
        self.secrets: set[str] = set()
        self.leaks: list[Leak] = []
        self.records = 0
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def learn(self, values: Iterable[str]) -> None:
        self.secrets.update(v for v in values if len(v) >= MIN_SECRET_CHARS)

    def learn_secret_strs(self) -> None:
        """From now on, every ``SecretStr`` made in this process is a known secret."""
        original = pydantic.SecretStr.__init__
        scan = self

        def init(self: pydantic.SecretStr, secret_value: str) -> None:
            original(self, secret_value)
            if isinstance(secret_value, str):
                scan.learn([secret_value])

        pydantic.SecretStr.__init__ = init  # type: ignore[method-assign]

    def found_in(self, text: str) -> list[str]:
        return [s for s in self.secrets if s in text]

    def emit(self, record: logging.LogRecord) -> None:
        self.records += 1
        if not self.secrets:
            return
        try:
            line = self.format(record)
        except Exception:  # a record that cannot be formatted is logging's problem, not ours
            return
        if self.found_in(line):
            test = os.environ.get("PYTEST_CURRENT_TEST", "(outside a test)")
            self.leaks.append(Leak(test, record.name, line[:300]))

    def scan_text(self, text: str, source: str) -> None:
        """Scan another process's log output (``source`` names it in a report)."""
        for line in text.splitlines():
            if self.found_in(line):
                self.leaks.append(Leak(source, "(child process)", line[:300]))

    def report(self) -> str:
        lines = [f"{len(self.leaks)} log line(s) contain a test secret:"]
        for leak in self.leaks[:20]:
            lines.append(f"  {leak.test} [{leak.logger}] {_redact(leak.line, self.secrets)}")
        return "\n".join(lines)


def _redact(line: str, secrets: Iterable[str]) -> str:
    for s in secrets:
        line = line.replace(s, s[:2] + "***")
    return line
