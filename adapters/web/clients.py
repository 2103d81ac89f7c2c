"""Who is calling: the client's address behind trusted proxies, and per-client rate limits.

Behind a reverse proxy every request arrives from the proxy's address. :class:`ClientAddresses`
takes the client's address from ``X-Forwarded-For`` only when the peer is one of the
``web.trusted_proxies`` (the rightmost address there that is not itself a trusted proxy, as a
proxy appends the address it saw); from any other peer the header is ignored. A request is
*local* (served without an API key when none is configured) only when that client address is
loopback and no untrusted peer forwarded it — so a proxy on this machine does not make every
internet client local.

:func:`rate_limit_middleware` limits every POST — chat, the API, reset, forget, feedback, and the
dashboard's actions, so an admin token cannot be guessed at speed — (``web.rate_limit`` per
client — its API key when it sends one, else its address — and ``web.global_rate_limit`` for
all clients together) with :class:`bot.ratelimit.RateLimiter`, whose windows live in Redis so
every web adapter shares them. A refused request gets a 429 in OpenAI's error shape with
``Retry-After``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
from collections.abc import Sequence

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from adapters.web.http import error_response
from bot.errors import ConfigError, QueueError
from bot.ratelimit import RateLimiter

log = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

FORWARDING_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP")


def parse_address(text: str | None) -> IPAddress | None:
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text.strip().split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_networks(specs: Sequence[str]) -> tuple[IPNetwork, ...]:
    """``web.trusted_proxies`` as networks; a :class:`ConfigError` names a bad entry."""
    networks = []
    for spec in specs:
        try:
            networks.append(ipaddress.ip_network(spec.strip(), strict=False))
        except ValueError as e:
            raise ConfigError(
                f"setting web.trusted_proxies (PARLEY_WEB__TRUSTED_PROXIES): {spec!r} is not "
                "an IP address or network"
            ) from e
    return tuple(networks)


class ClientAddresses:
    """The client address of a request, given the proxies this server trusts."""

    def __init__(self, trusted_proxies: Sequence[str] = ()) -> None:
        self.trusted = parse_networks(trusted_proxies)

    def _trusted(self, address: IPAddress | None) -> bool:
        return address is not None and any(address in net for net in self.trusted)

    def address(self, request: web.Request) -> IPAddress | None:
        """The client's address: the peer's, or the forwarded one when the peer is trusted."""
        peer = parse_address(request.remote)
        if not self._trusted(peer):
            return peer
        hops = [
            parse_address(part)
            for value in request.headers.getall("X-Forwarded-For", [])
            for part in value.split(",")
        ]
        for hop in reversed(hops):
            if hop is None:
                return None  # a garbled hop: nothing left of it can be trusted
            if not self._trusted(hop):
                return hop
        return hops[0] if hops else peer

    def is_local(self, request: web.Request) -> bool:
        """Whether the client is this machine (and not forwarded here by an untrusted peer)."""
        peer = parse_address(request.remote)
        forwarded = any(h in request.headers for h in FORWARDING_HEADERS)
        if forwarded and not self._trusted(peer):
            return False
        client = self.address(request)
        return client is not None and client.is_loopback

    def key(self, request: web.Request) -> str:
        """What a per-client limit counts: the API key's hash when one is sent, else the
        address."""
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and given.strip():
            return "key:" + hashlib.sha256(given.strip().encode()).hexdigest()[:16]
        return f"ip:{self.address(request) or 'unknown'}"


CLIENTS = web.AppKey("parley_clients", ClientAddresses)


def rate_limit_middleware(
    clients: ClientAddresses, per_client: RateLimiter | None, overall: RateLimiter | None
) -> Middleware:
    @web.middleware
    async def limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "POST":
            return await handler(request)
        checks = [(per_client, clients.key(request)), (overall, "all")]
        for limiter, key in checks:
            if limiter is None:
                continue
            try:
                verdict = await limiter.hit("web", key)
            except QueueError as e:  # Redis is down: the request would fail anyway
                log.warning("rate limit check failed: %s", e)
                return await handler(request)
            if not verdict.allowed:
                if verdict.notify:
                    log.info("web client %s is rate limited (%s)", key, limiter.rate)
                response = error_response(
                    429,
                    "Too many requests; please slow down.",
                    code="rate_limit_exceeded",
                    type="requests",
                )
                response.headers["Retry-After"] = str(max(1, math.ceil(verdict.retry_after_s)))
                return response
        return await handler(request)

    return limit
