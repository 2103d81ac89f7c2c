"""The web page's consent and feedback: ``POST /api/forget`` and ``POST /api/feedback``.

The page's user is its conversation id (as for ``/api/chat``), so ``/api/forget`` runs
``/forget`` for that user through :class:`bot.commands.Commands`, the same as Discord and
Telegram, and answers with what the command says it deleted. ``/api/feedback`` records a 👍
(``1``), 👎 (``-1``) or a withdrawn reaction (``0``) on a reply, named by the ``request_id``
its ``done`` event carried; the trainer service stores it with the archived exchange.
"""

from __future__ import annotations

import logging
from typing import Annotated, Literal

import msgspec
from aiohttp import web

from adapters.replies import new_request_id
from adapters.web.chat import ConversationId, conversation_key
from adapters.web.http import ApiError, decode_json, read_body
from bot.commands import Caller, Commands
from bot.errors import ParleyError

log = logging.getLogger(__name__)


class ForgetBody(msgspec.Struct, frozen=True):
    conversation: ConversationId


class FeedbackBody(msgspec.Struct, frozen=True):
    conversation: ConversationId
    request_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    value: Literal[-1, 0, 1]


class ConsentRoutes:
    """``/api/forget`` and ``/api/feedback`` for the chat page."""

    def __init__(self, commands: Commands, *, adapter_id: str) -> None:
        self.commands = commands
        self.adapter_id = adapter_id

    def setup(self, app: web.Application) -> None:
        app.router.add_post("/api/forget", self.forget)
        app.router.add_post("/api/feedback", self.feedback)

    def _caller(self, conversation: str) -> Caller:
        return Caller(
            platform="web",
            user=conversation,
            conversation=conversation_key(conversation),
            request_id=new_request_id(),
            reply_to=self.adapter_id,
        )

    async def forget(self, request: web.Request) -> web.Response:
        try:
            body = decode_json(await read_body(request), ForgetBody)
        except ApiError as e:
            return e.response()
        caller = self._caller(body.conversation)
        message = await self.commands.run("forget", "", caller)
        ok = message.startswith("Done")
        return web.json_response({"ok": ok, "message": message}, status=200 if ok else 503)

    async def feedback(self, request: web.Request) -> web.Response:
        try:
            feedback = decode_json(await read_body(request), FeedbackBody)
        except ApiError as e:
            return e.response()
        caller = self._caller(feedback.conversation)
        try:
            await self.commands.feedback(caller, feedback.request_id, feedback.value)
        except ParleyError as e:
            log.warning("feedback on %s not recorded: %s", feedback.request_id, e)
            return ApiError(503, "Feedback could not be recorded.", code="unavailable").response()
        return web.json_response({"ok": True})
