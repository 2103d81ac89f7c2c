"""The session-wide scan of log lines for test secrets (tests/conftest.py) can fail: it learns
every ``SecretStr`` made, and it finds a secret in a record's message or traceback."""

from __future__ import annotations

import logging

from pydantic import SecretStr

from bot.settings import WebSettings
from tests.reliability.logscan import SecretLog


def test_every_secret_str_made_is_learnt(secret_log: SecretLog) -> None:
    WebSettings(api_keys=["sk-learnt-by-the-scan-1"], admin_token="admin-learnt-by-the-scan")
    SecretStr("made-directly-0123")
    assert {"sk-learnt-by-the-scan-1", "admin-learnt-by-the-scan", "made-directly-0123"} <= (
        secret_log.secrets
    )


def test_a_secret_in_a_message_or_a_traceback_is_found() -> None:
    scan = SecretLog()
    scan.learn(["tok-en-0123456789", "short"])
    logger = logging.getLogger("tests.reliability.secret-scan")
    logger.propagate = False  # this one's leaks are on purpose: keep them from the session's
    logger.addHandler(scan)
    logger.setLevel(logging.DEBUG)
    try:
        logger.info("connecting with %s", "nothing secret")
        logger.debug("token=%s", "tok-en-0123456789")
        try:
            raise ValueError("bad url https://x:tok-en-0123456789@host")
        except ValueError:
            logger.exception("failed")
        logger.info("short")  # under eight characters: not taken for a secret
    finally:
        logger.removeHandler(scan)
    assert [leak.line.split(" ", 2)[2][:9] for leak in scan.leaks] == ["token=tok", "failed\nTr"]
    assert "tok-en-0123456789" not in scan.report() and "to***" in scan.report()
