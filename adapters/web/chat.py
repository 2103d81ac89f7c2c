"""The chat page and its JSON/SSE endpoints (the routes; HTTP helpers are in :mod:`.http`).

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

import logging
from contextlib import aclosing
from typing import Annotated

import msgspec
from aiohttp import web

from adapters.replies import Replies, new_request_id, now_ms
from adapters.web.http import (
    STATIC_DIR,
    ApiError,
    decode_json,
    error_response,
    error_status,
    open_sse,
    read_body,
    sse,
)
from bot.wire import (
    ChatRequest,
    ControlRequest,
    Delta,
    Done,
    Error,
    ReplyEvent,
)

log = logging.getLogger(__name__)

RESET_TIMEOUT_S = 10.0


ConversationId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{8,64}$")]


class ChatBody(msgspec.Struct, frozen=True):
    conversation: ConversationId
    text: str


class ResetBody(msgspec.Struct, frozen=True):
    conversation: ConversationId


def conversation_key(conversation_id: str) -> str:
    return f"web:{conversation_id}:{conversation_id}"


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
