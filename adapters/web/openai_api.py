"""An OpenAI-compatible API on the web adapter's port: ``/v1/chat/completions``, ``/v1/models``.

The official ``openai`` client (and anything built on it) can talk to Parley unchanged:
``OpenAI(base_url="http://host:8080/v1", api_key=...)``. A chat completion maps onto one
:class:`~bot.wire.ChatRequest`: the last message (which must be the user's) is ``text``, the
messages before it are ``history`` (``assistant`` becomes ``bot``), and the sampling options map
onto :class:`~bot.wire.Sampling`. The conversation key ``api:<key>:<user>`` scopes the engine's
cached state to one API key (a short hash of it, or ``loopback``) and one ``user`` field, so no
client ever continues from another's state; the engine reuses state only when its history is a
prefix of the messages sent.

Auth: with ``web.api_keys`` set, every request needs ``Authorization: Bearer <key>``; with none
set, only loopback clients are served. Every failure answers in OpenAI's error shape: bad input
with a 4xx (never a 500), an engine that is busy or not answering with a 503, a reply the
engine failed to generate with a 500 (:data:`adapters.web.http.ERROR_STATUS`); one that fails
mid-stream ends its stream with an error chunk.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web
from pydantic import SecretStr

from adapters.replies import Replies, closing_iter, new_request_id, now_ms
from adapters.web.clients import CLIENTS, ClientAddresses
from adapters.web.http import (
    ApiError,
    api_errors,
    decode_json,
    error_body,
    error_status,
    open_sse,
    read_body,
)
from bot.wire import ChatRequest, Delta, Done, Error, ReplyEvent, Role, Sampling, Turn

log = logging.getLogger(__name__)

REPLACED_MESSAGE = (
    "The reply changed after streaming began and cannot be corrected in this stream; "
    "ask again, or ask without streaming."
)
MODEL_ALIAS = "parley"
"""Always a valid model name: whatever version is live."""
MAX_STOP = 4
MAX_USER_CHARS = 256

_ROLES: dict[str, Role] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "bot",
}


# --- request body ----------------------------------------------------------------------------


class ContentPart(msgspec.Struct, frozen=True):
    type: str
    text: str | None = None


class Message(msgspec.Struct, frozen=True):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(msgspec.Struct, frozen=True):
    include_usage: bool = False


class CompletionBody(msgspec.Struct, frozen=True):
    """The fields of OpenAI's request that Parley honours; unknown fields are ignored."""

    messages: list[Message]
    model: str = MODEL_ALIAS
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    stop: str | Annotated[list[str], msgspec.Meta(max_length=MAX_STOP)] | None = None
    seed: int | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=1)] | None = None
    user: Annotated[str, msgspec.Meta(max_length=MAX_USER_CHARS)] | None = None


# --- auth ------------------------------------------------------------------------------------


def key_scope(key: str) -> str:
    """A short, stable, non-reversible name for an API key (part of conversation keys)."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def authenticate(
    request: web.Request, api_keys: Sequence[SecretStr], clients: ClientAddresses | None = None
) -> str:
    """The caller's scope (``key_scope`` of its key, or ``loopback``), or a 401 ``ApiError``.

    Without keys only local clients are served (``clients`` knows the trusted proxies)."""
    if not api_keys:
        if (clients or ClientAddresses()).is_local(request):
            return "loopback"
        raise ApiError(
            401,
            "This server only serves clients on this machine: no API keys are configured "
            "(set PARLEY_WEB__API_KEYS to serve others).",
            code="invalid_api_key",
        )
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    given = given.strip()
    if scheme.lower() != "bearer" or not given:
        raise ApiError(
            401, "Missing API key: send 'Authorization: Bearer <key>'.", code="invalid_api_key"
        )
    matched = False
    for key in api_keys:  # compare with every key, so timing says nothing about which matched
        matched |= hmac.compare_digest(given.encode(), key.get_secret_value().encode())
    if not matched:
        raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
    return key_scope(given)


# --- mapping ---------------------------------------------------------------------------------


def message_text(message: Message, index: int) -> str:
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    texts = []
    for part in message.content:
        if part.type != "text" or part.text is None:
            raise ApiError(
                400,
                f"Only text content is supported, not {part.type!r}.",
                code="unsupported_content",
                param=f"messages[{index}].content",
            )
        texts.append(part.text)
    return "".join(texts)


def to_chat_request(
    body: CompletionBody, *, scope: str, reply_to: str, max_message_chars: int
) -> ChatRequest:
    """The :class:`ChatRequest` a completion asks for, or a 400 ``ApiError`` saying why not."""
    if not body.messages:
        raise ApiError(
            400,
            "'messages' must contain at least one message.",
            code="invalid_value",
            param="messages",
        )
    *earlier, last = body.messages
    if last.role != "user":
        raise ApiError(
            400,
            "The last message must have role 'user'.",
            code="invalid_value",
            param=f"messages[{len(earlier)}].role",
        )
    text = message_text(last, len(earlier))
    if len(text) > max_message_chars:
        raise ApiError(
            400,
            f"The last message is too long ({len(text)} characters); the "
            f"limit is {max_message_chars}.",
            code="context_length_exceeded",
            param=f"messages[{len(earlier)}].content",
        )
    history = tuple(
        Turn(role=_ROLES[m.role], text=message_text(m, i)) for i, m in enumerate(earlier)
    )
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    user = body.user or "default"
    return ChatRequest(
        id=new_request_id(),
        conversation=f"api:{scope}:{user}",
        reply_to=reply_to,
        text=text,
        user=f"api:{scope}:{user}",
        platform="api",
        sampling=Sampling(
            temperature=body.temperature,
            top_p=body.top_p,
            max_new_tokens=body.max_completion_tokens or body.max_tokens,
            seed=body.seed,
            stop=stop,
        ),
        history=history,
        created_ms=now_ms(),
    )


def finish_reason(done: Done) -> str:
    return "length" if done.finish_reason == "length" else "stop"


def usage(done: Done) -> dict[str, int]:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
    }


class Completion:
    """The response of one completion: its id, creation time and model name."""

    def __init__(self, model: str) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model

    def _envelope(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def whole(self, done: Done) -> dict[str, Any]:
        return {
            **self._envelope("chat.completion"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": done.text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish_reason(done),
                }
            ],
            "usage": usage(done),
            "system_fingerprint": done.model_version or None,
        }

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return self.data({**self._envelope("chat.completion.chunk"), "choices": [choice]})

    def usage_chunk(self, done: Done) -> bytes:
        return self.data(
            {**self._envelope("chat.completion.chunk"), "choices": [], "usage": usage(done)}
        )

    @staticmethod
    def data(payload: object) -> bytes:
        return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


DONE_LINE = b"data: [DONE]\n\n"

# --- routes ----------------------------------------------------------------------------------

LiveVersion = Callable[[], Awaitable[str | None]]


class OpenAIRoutes:
    """``/v1/chat/completions``, ``/v1/models`` and ``/v1/models/{model}``."""

    def __init__(
        self,
        replies: Replies,
        *,
        api_keys: Sequence[SecretStr],
        live_version: LiveVersion,
        max_message_chars: int,
    ) -> None:
        self.replies = replies
        self.api_keys = tuple(api_keys)
        self.live_version = live_version
        self.max_message_chars = max_message_chars

    def setup(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", api_errors(self.completions))
        app.router.add_get("/v1/models", api_errors(self.models))
        app.router.add_get("/v1/models/{model}", api_errors(self.model))

    async def _model_ids(self) -> list[str]:
        live = await self.live_version()
        return [live, MODEL_ALIAS] if live and live != MODEL_ALIAS else [MODEL_ALIAS]

    @staticmethod
    def _model_object(model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": 0, "owned_by": "parley"}

    async def models(self, request: web.Request) -> web.Response:
        authenticate(request, self.api_keys, request.app.get(CLIENTS))
        data = [self._model_object(m) for m in await self._model_ids()]
        return web.json_response({"object": "list", "data": data})

    async def model(self, request: web.Request) -> web.Response:
        authenticate(request, self.api_keys, request.app.get(CLIENTS))
        name = request.match_info["model"]
        await self._check_model(name)
        return web.json_response(self._model_object(name))

    async def _check_model(self, name: str) -> None:
        if name not in await self._model_ids():
            raise ApiError(
                404,
                f"The model '{name}' does not exist; this server serves "
                f"'{MODEL_ALIAS}' (the live version).",
                code="model_not_found",
                param="model",
            )

    async def completions(self, request: web.Request) -> web.StreamResponse:
        scope = authenticate(request, self.api_keys, request.app.get(CLIENTS))
        body = decode_json(await read_body(request), CompletionBody)
        chat = to_chat_request(
            body,
            scope=scope,
            reply_to=self.replies.adapter_id,
            max_message_chars=self.max_message_chars,
        )
        await self._check_model(body.model)
        log.debug("api completion %s for %s: %.80r", chat.id, chat.conversation, chat.text)
        completion = Completion(body.model)
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        # A stream cannot take text back: under the safety filter's regenerate action it is
        # given a reply only once the filter has passed it.
        events_of = self.replies.events(chat, retractable=not body.stream)
        async with closing_iter(events_of) as events:
            first = await anext(events)
            if isinstance(first, Error):
                raise ApiError(error_status(first), first.message, code=first.code)
            if body.stream:
                return await self._stream(request, completion, first, events, include_usage)
            final = await last_event(first, events)
            if isinstance(final, Error):
                raise ApiError(error_status(final), final.message, code=final.code)
            return web.json_response(completion.whole(final))

    async def _stream(
        self,
        request: web.Request,
        completion: Completion,
        first: Delta | Done,
        events: AsyncIterator[ReplyEvent],
        include_usage: bool,
    ) -> web.StreamResponse:
        response = await open_sse(request)
        try:
            await response.write(completion.chunk({"role": "assistant", "content": ""}))
            sent = ""
            event: ReplyEvent = first
            while isinstance(event, Delta):
                if event.text:
                    sent += event.text
                    await response.write(completion.chunk({"content": event.text}))
                event = await anext(events)
            if isinstance(event, Done) and not event.text.startswith(sent):
                # The final text is not what was streamed (a reclaimed request's second
                # attempt, or the safety filter replacing the reply): a stream cannot take
                # text back, so it ends with an error rather than with a wrong answer.
                log.warning(
                    "api completion %s: the final text disagrees with the streamed one",
                    completion.id,
                )
                error = error_body(502, REPLACED_MESSAGE, code="reply_replaced")
                await response.write(Completion.data(error))
            elif isinstance(event, Done):
                rest = event.text[len(sent) :]
                if rest:
                    await response.write(completion.chunk({"content": rest}))
                await response.write(completion.chunk({}, finish_reason(event)))
                if include_usage:
                    await response.write(completion.usage_chunk(event))
            else:
                error = error_body(error_status(event), event.message, code=event.code)
                await response.write(Completion.data(error))
            await response.write(DONE_LINE)
            await response.write_eof()
        except ConnectionError:
            log.info("api completion %s: the client went away mid-reply", completion.id)
        return response


async def last_event(first: ReplyEvent, events: AsyncIterator[ReplyEvent]) -> Done | Error:
    event = first
    while isinstance(event, Delta):
        event = await anext(events)
    return event
