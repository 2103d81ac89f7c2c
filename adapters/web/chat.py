"""The chat page and its JSON/SSE endpoints.

``GET /`` serves ``static/index.html`` (one file, inline CSS/JS, no external assets).
``POST /api/chat`` takes ``{"conversation": id, "text": str}`` and answers with Server-Sent
Events: ``event: delta`` (``{"seq", "text"}``) as the reply is generated, then one final
``event: done`` (``{"text", "finish_reason", ...}``) or ``event: error`` (``{"code",
"message"}``). A request that fails before its first event (too long, busy, no engine) gets a
JSON error with a 4xx/5xx status instead, so the page can show it without parsing a stream.
``POST /api/reset`` sends a ``reset`` :class:`~bot.wire.ControlRequest` for the conversation;
``GET /api/config`` tells the page the length limit.

The browser picks its conversation id; the conversation key is ``web:<id>:<id>`` (the chat and
the user are both the browser's conversation).

Replies come through :class:`adapters.replies.Replies`, the path every adapter shares.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from pathlib import Path
from typing import Annotated, TypeVar

import msgspec
from aiohttp import web

from adapters.replies import Replies, new_request_id, now_ms
from bot.wire import (
    ChatRequest,
    ControlRequest,
    Delta,
    Done,
    Error,
    ReplyEvent,
)

log = logging.getLogger(__name__)

_T = TypeVar("_T")

STATIC_DIR = Path(__file__).parent / "static"
RESET_TIMEOUT_S = 10.0

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


# --- the page's endpoints --------------------------------------------------------------------

ConversationId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{8,64}$")]


class ChatBody(msgspec.Struct, frozen=True):
    conversation: ConversationId
    text: str


class ResetBody(msgspec.Struct, frozen=True):
    conversation: ConversationId


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


def conversation_key(conversation_id: str) -> str:
    return f"web:{conversation_id}:{conversation_id}"


def sse(event: str, data: object) -> bytes:
    """One Server-Sent Event frame."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def event_frame(event: ReplyEvent) -> bytes:
    if isinstance(event, Delta):
        return sse("delta", {"seq": event.seq, "text": event.text})
    if isinstance(event, Done):
        return sse(
            "done",
            {
                "text": event.text,
                "finish_reason": event.finish_reason,
                "prompt_tokens": event.prompt_tokens,
                "completion_tokens": event.completion_tokens,
                "model_version": event.model_version,
                "request_id": event.request_id,
            },
        )
    return sse("error", {"code": event.code, "message": event.message})


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


class ChatRoutes:
    """``/``, ``/api/chat`` and ``/api/reset``."""

    def __init__(self, replies: Replies, *, max_message_chars: int) -> None:
        self.replies = replies
        self.max_message_chars = max_message_chars

    def setup(self, app: web.Application) -> None:
        app.router.add_get("/", self.page)
        app.router.add_get("/api/config", self.config)
        app.router.add_post("/api/chat", self.chat)
        app.router.add_post("/api/reset", self.reset)

    async def page(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def config(self, request: web.Request) -> web.Response:
        return web.json_response({"max_message_chars": self.max_message_chars})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = decode_json(await read_body(request), ChatBody)
        except ApiError as e:
            return e.response()
        text = body.text.strip()
        if not text:
            return error_response(400, "The message is empty.", code="empty_message")
        if len(text) > self.max_message_chars:
            return error_response(
                400,
                f"The message is too long ({len(text)} characters); "
                f"the limit is {self.max_message_chars}.",
                code="message_too_long",
                param="text",
            )
        chat = ChatRequest(
            id=new_request_id(),
            conversation=conversation_key(body.conversation),
            reply_to=self.replies.adapter_id,
            text=text,
            user=body.conversation,
            platform="web",
            created_ms=now_ms(),
        )
        log.debug("web chat %s: %.80r", chat.id, text)
        return await self._stream(request, chat)

    async def _stream(self, request: web.Request, chat: ChatRequest) -> web.StreamResponse:
        async with aclosing(self.replies.events(chat)) as events:
            first = await anext(events)
            if isinstance(first, Error):
                return error_response(error_status(first), first.message, code=first.code)
            response = await open_sse(request)
            try:
                await response.write(event_frame(first))
                async for event in events:
                    await response.write(event_frame(event))
                await response.write_eof()
            except ConnectionError:
                log.info("web chat %s: the browser went away mid-reply", chat.id)
        return response

    async def reset(self, request: web.Request) -> web.Response:
        try:
            body = decode_json(await read_body(request), ResetBody)
        except ApiError as e:
            return e.response()
        control = ControlRequest(
            id=new_request_id(),
            conversation=conversation_key(body.conversation),
            reply_to=self.replies.adapter_id,
            command="reset",
            user=body.conversation,
            created_ms=now_ms(),
        )
        async with aclosing(self.replies.events(control, timeout_s=RESET_TIMEOUT_S)) as events:
            async for event in events:
                if isinstance(event, Error):
                    return error_response(error_status(event), event.message, code=event.code)
        return web.json_response({"ok": True})
