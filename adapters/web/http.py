"""The web adapter's HTTP helpers, shared by its routes (chat page, OpenAI API, dashboard).

Errors: every endpoint answers a failure in OpenAI's JSON error shape
(``{"error": {"message", "type", "param", "code"}}``, :func:`error_response`); handlers raise
:class:`ApiError` from their helpers and answer with it. Bodies: :func:`read_body` bounds
them, :func:`decode_json` validates them into a typed struct. Streams: Server-Sent Events
(:func:`open_sse`, :func:`sse`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import msgspec
from aiohttp import web

from bot.wire import Error

_T = TypeVar("_T")

STATIC_DIR = Path(__file__).parent / "static"
"""The pages the web adapter serves (chat page, dashboard)."""

ERROR_STATUS: dict[str, int] = {
    "busy": 503,
    "bad_request": 400,
    "internal": 500,
    "unavailable": 503,
}
"""HTTP status for a reply that ended in an :class:`~bot.wire.Error` before its first delta."""

RETRY_AFTER_S = "2"
MAX_BODY_BYTES = 1 << 20
"""Bodies over 1 MB are refused with 413 (the app's ``client_max_size`` too)."""


def error_status(event: Error) -> int:
    return ERROR_STATUS.get(event.code, 503)


def error_response(
    status: int,
    message: str,
    *,
    code: str | None = None,
    type: str | None = None,
    param: str | None = None,
) -> web.Response:
    """A JSON error in OpenAI's shape, which every web endpoint uses:
    ``{"error": {"message", "type", "param", "code"}}``."""
    body = error_body(status, message, code=code, type=type, param=param)
    headers = {"Retry-After": RETRY_AFTER_S} if status in (429, 503) else None
    return web.json_response(body, status=status, headers=headers)


def error_body(
    status: int,
    message: str,
    *,
    code: str | None = None,
    type: str | None = None,
    param: str | None = None,
) -> dict[str, dict[str, str | None]]:
    error_type = type or ("invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


class ApiError(Exception):
    """Raised by a handler's helpers; the handler (or the app's middleware) answers with it."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        type: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.type = type
        self.param = param

    def response(self) -> web.Response:
        return error_response(
            self.status, self.message, code=self.code, type=self.type, param=self.param
        )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def api_errors(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as e:
            return e.response()

    return wrapped


async def read_body(request: web.Request) -> bytes:
    """The request body, or a 413 ``ApiError`` when it is over :data:`MAX_BODY_BYTES`."""
    too_large = ApiError(
        413, f"The request body is over {MAX_BODY_BYTES} bytes.", code="request_too_large"
    )
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise too_large
    try:
        data = await request.read()
    except web.HTTPRequestEntityTooLarge as e:
        raise too_large from e
    if len(data) > MAX_BODY_BYTES:
        raise too_large
    return data


_PATH_IN_MESSAGE = re.compile(r" - at `\$\.?([^`]*)`$")


def decode_json(data: bytes, body_type: type[_T]) -> _T:
    """``data`` decoded and validated as ``body_type``, or a 400 :class:`ApiError` naming the
    offending field (``param``) the way OpenAI does."""
    try:
        return msgspec.json.decode(data, type=body_type)
    except msgspec.ValidationError as e:
        found = _PATH_IN_MESSAGE.search(str(e))
        param = found.group(1) or None if found else None
        raise ApiError(400, f"Invalid request: {e}", code="invalid_type", param=param) from e
    except msgspec.DecodeError as e:
        raise ApiError(400, f"The request body is not valid JSON: {e}", code="invalid_json") from e


def sse(event: str, data: object) -> bytes:
    """One Server-Sent Event frame."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def open_sse(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    return response
