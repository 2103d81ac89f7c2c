"""Redis behind Sentinel: the master of a monitored service, found through its sentinels.

``redis.url`` names the sentinels instead of one server::

    redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB][?sentinel_password=P]

``PASSWORD`` is the data servers' (``requirepass``); the sentinels' own password, when they
have one, is ``sentinel_password``. The client asks the sentinels for the master of
``SERVICE`` on every new connection (redis-py's :class:`~redis.asyncio.sentinel.Sentinel`),
so after a failover Parley's connections move to the promoted replica: a command on a
connection the failover closed fails (a :class:`~bot.errors.QueueError` to the queue code,
whose loops retry) and the next one goes to the new master.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio.sentinel import Sentinel

from bot.errors import QueueError

SCHEME = "redis+sentinel"
DEFAULT_PORT = 26379


@dataclass(frozen=True)
class SentinelTarget:
    """Where the sentinels are and which service's master to use."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None


def is_sentinel_url(url: str) -> bool:
    return url.startswith(f"{SCHEME}://")


def parse_sentinel_url(url: str) -> SentinelTarget:
    """The target a ``redis+sentinel://`` URL names; :class:`QueueError` saying what is wrong."""
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    sentinels = []
    for host in filter(None, hosts.split(",")):
        name, _, port = host.rpartition(":") if ":" in host else (host, "", str(DEFAULT_PORT))
        if not name or not port.isdigit():
            raise QueueError(f"sentinel address {host!r} is not HOST:PORT")
        sentinels.append((name.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not sentinels or not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise QueueError(
            "a Sentinel URL is redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB]"
        )
    query = parse_qs(parts.query)
    return SentinelTarget(
        sentinels=tuple(sentinels),
        service=unquote(path[0]),
        db=int(path[1]) if len(path) == 2 else 0,
        username=unquote(username) or None,
        password=unquote(password) or None,
        sentinel_password=query.get("sentinel_password", [None])[0],
    )


def master_client(url: str, **client_options: Any) -> Any:
    """A client of the service's current master (``redis.asyncio.Redis``), made with
    ``client_options`` (the options :func:`bot.redis.connect` gives every client)."""
    target = parse_sentinel_url(url)
    timeout_s = client_options.get("socket_connect_timeout")
    sentinel_options: dict[str, Any] = {"socket_timeout": timeout_s}
    if target.sentinel_password:
        sentinel_options["password"] = target.sentinel_password
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(target.sentinels), sentinel_kwargs=sentinel_options
    )
    return sentinel.master_for(
        target.service,
        db=target.db,
        username=target.username,
        password=target.password,
        **client_options,
    )
