"""Parley's exceptions, one small tree::

ParleyError
├── ConfigError        a bad or missing setting; start-up stops and names it
├── WireError          a queue entry that cannot be decoded (goes to dead-letter)
├── QueueError         Redis unreachable or misbehaving (translated at the boundary)
│   └── QueueFull      the request stream is at its bound; answer "busy" at once
├── NotRunning         no Parley system found to talk to (``parley chat``)
├── DataError          a conversation file that cannot be read; names file and line
└── ModelError         a checkpoint that cannot be loaded or trained
"""

from __future__ import annotations


class ParleyError(Exception):
    """Base of every error Parley raises on purpose."""


class ConfigError(ParleyError):
    """A setting is missing or invalid. The message names the setting and what to fix."""


class WireError(ParleyError):
    """A wire message is malformed, of an unknown type, or of an unsupported version."""


class QueueError(ParleyError):
    """Talking to Redis failed."""


class QueueFull(QueueError):
    """A request stream is full; the request was not enqueued."""


class NotRunning(ParleyError):
    """No running Parley system could be found."""


class DataError(ParleyError):
    """A conversation file is malformed. ``str()`` names the file and line."""

    def __init__(self, path: str, line: int | None, reason: str) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason


class ModelError(ParleyError):
    """A model or checkpoint cannot be loaded, saved or trained."""
