"""A local Telegram Bot API server for tests, speaking the real HTTP protocol.

The unmodified python-telegram-bot client talks to it when its ``base_url`` is
:attr:`FakeBotAPI.base_url` (``http://127.0.0.1:<port>/bot``; the token follows, then the
method). It accepts the encodings the library sends (form fields whose non-string values are
JSON, a JSON body, a query string) and answers as Telegram does (``{"ok": true, "result": …}``
or ``{"ok": false, "error_code": …, "description": …, "parameters": …}``).

Behaviour kept from the real server, because the adapter must cope with it:

- ``getUpdates``: an offset confirms (drops) every update below it; without pending updates the
  call waits up to ``timeout`` seconds for one (long polling); a second concurrent call ends the
  first with 409 "terminated by other getUpdates request"; while a webhook is set it is refused
  with 409; ``allowed_updates`` filters what is delivered and is remembered across calls.
- ``sendMessage`` / ``editMessageText``: a text over 4,096 UTF-16 units is "message is too
  long"; an edit to the same text is "message is not modified"; an edit of an unknown message
  is "message to edit not found".
- Flood control: :meth:`flood` answers a chat's next requests with 429 and ``retry_after``; a
  request to that chat before the wait is over gets 429 again and is recorded in
  :attr:`violations`, as is any ``parse_mode`` (the adapter sends plain text).

Tests inject updates (:meth:`send_text` and friends, :meth:`add_update`), errors
(:meth:`fail_next`) and answers lost on the way back (:meth:`hold_answer`: the call is carried
out, its answer held until the test releases it, so the client times out), then wait on what
the bot did with :meth:`wait_for` (an event, no sleeps).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

MAX_TEXT_UTF16 = 4096
TEXT_FIELDS = {"text", "action", "url", "secret_token", "callback_query_id", "parse_mode"}
"""Form fields the library sends as plain strings (everything else is JSON-encoded)."""


def utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


@dataclass(frozen=True)
class User:
    id: int
    first_name: str
    username: str | None = None
    is_bot: bool = False

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "is_bot": self.is_bot, "first_name": self.first_name}
        if self.username:
            out["username"] = self.username
        return out


@dataclass(frozen=True)
class Chat:
    id: int
    type: str = "private"
    title: str | None = None
    is_forum: bool = False

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "type": self.type}
        if self.title:
            out["title"] = self.title
        if self.is_forum:
            out["is_forum"] = True
        return out


@dataclass
class Sent:
    """A message the bot sent, and every text it was edited to."""

    chat_id: int
    message_id: int
    text: str
    reply_to: int | None
    thread_id: int | None
    edits: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ApiError:
    """An error answer: HTTP status, description, optional ``retry_after``."""

    status: int
    description: str
    retry_after: int | None = None


TOO_MANY = ApiError(429, "Too Many Requests: retry after 1", retry_after=1)
NOT_MODIFIED = ApiError(
    400,
    "Bad Request: message is not modified: specified new message content and reply markup "
    "are exactly the same as a current content and reply markup of the message",
)
TOO_LONG = ApiError(400, "Bad Request: message is too long")
BAD_GATEWAY = ApiError(502, "Bad Gateway")
INTERNAL = ApiError(500, "Internal Server Error")
CONFLICT = ApiError(
    409,
    "Conflict: terminated by other getUpdates request; "
    "make sure that only one bot instance is running",
)


class FakeBotAPI:
    """One bot's Bot API. ``async with FakeBotAPI() as api:`` then point the client at it."""

    def __init__(
        self, *, token: str = "123456:TEST-TOKEN", username: str = "parley_test_bot"
    ) -> None:
        self.token = token
        self.bot = User(int(token.split(":")[0]), "Parley", username, is_bot=True)
        self.honour_allowed_updates = True
        self.sent: list[Sent] = []
        self.actions: list[tuple[int, str, int | None]] = []
        self.commands: dict[str, list[tuple[str, str]]] = {}
        """``setMyCommands``: scope (JSON, ``default`` when none) -> (command, description)."""
        self.webhook: dict[str, Any] | None = None
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.delivered: list[int] = []
        """update_ids as they were handed out by getUpdates, in order (redeliveries repeat)."""
        self.confirmed_below = 0
        self.allowed_updates: list[str] | None = None
        self.violations: list[str] = []
        self.answered_callbacks: list[str] = []
        self.conflicts = 0
        """getUpdates calls ended by a newer one (two pollers of one token)."""
        self._updates: list[dict[str, Any]] = []
        self._history: dict[int, dict[str, Any]] = {}
        self._update_ids = itertools.count(1000)
        self._message_ids = itertools.count(1)
        self._failures: list[tuple[str, int | None, ApiError]] = []
        self._holds: list[tuple[str, asyncio.Event]] = []
        self.held = 0
        """Calls whose answer :meth:`hold_answer` held back (counted when they arrived)."""
        self._flood: dict[int, tuple[float, int]] = {}
        self._flood_until: dict[int, float] = {}
        self._changed = asyncio.Condition()
        self._poller: asyncio.Future[None] | None = None
        self._poller_transport: asyncio.BaseTransport | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> FakeBotAPI:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        # A poller that hung up ends its getUpdates here too (as it does at Telegram).
        self._runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=1.0, handler_cancellation=True
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def close(self) -> None:
        if self._poller is not None and not self._poller.done():
            self._poller.set_result(None)
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeBotAPI:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bot"

    # -- injecting -----------------------------------------------------------------------------

    def add_update(self, body: dict[str, Any]) -> int:
        """Queue an update (``{"message": {...}}`` and the like); returns its update_id."""
        update_id = next(self._update_ids)
        update = {"update_id": update_id, **body}
        self._updates.append(update)
        self._history[update_id] = update
        self._notify()
        return update_id

    def redeliver(self, update_id: int) -> None:
        """Deliver an update again, as Telegram does when its offset was never confirmed."""
        self._updates = [self._history[update_id]] + [
            u for u in self._updates if u["update_id"] != update_id
        ]
        self.confirmed_below = min(self.confirmed_below, update_id)
        self._notify()

    def message(
        self,
        chat: Chat,
        user: User,
        text: str | None = None,
        *,
        reply_to: int | None = None,
        thread_id: int | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """A message object as Telegram writes it, entities (in UTF-16 offsets) included."""
        msg: dict[str, Any] = {
            "message_id": next(self._message_ids),
            "from": user.json(),
            "chat": chat.json(),
            "date": int(time.time()),
            **extra,
        }
        if text is not None:
            msg["text"] = text
            entities = _entities(text)
            if entities:
                msg["entities"] = entities
        if reply_to is not None:
            original = self._find(chat.id, reply_to)
            author = self.bot.json() if original is not None else user.json()
            msg["reply_to_message"] = {
                "message_id": reply_to,
                "from": author,
                "chat": chat.json(),
                "date": int(time.time()),
                "text": original.text if original is not None else "",
            }
        if thread_id is not None:
            msg["message_thread_id"] = thread_id
            msg["is_topic_message"] = True
        return msg

    def send_text(self, chat: Chat, user: User, text: str, **kwargs: Any) -> int:
        """A user writes ``text``; returns the update_id."""
        return self.add_update({"message": self.message(chat, user, text, **kwargs)})

    def fail_next(
        self, method: str, error: ApiError, *, times: int = 1, chat_id: int | None = None
    ) -> None:
        """Answer the next ``times`` calls of ``method`` (to ``chat_id``, if given) with it."""
        self._failures.extend([(method, chat_id, error)] * times)

    def hold_answer(self, method: str) -> asyncio.Event:
        """Carry out the next ``method`` call but answer it only once the returned event is
        set: to a client with a shorter read timeout, a call that failed yet took effect."""
        release = asyncio.Event()
        self._holds.append((method, release))
        return release

    def flood(self, chat_id: int, *, retry_after: int = 1, times: int = 1) -> None:
        """The chat's next ``times`` send/edit calls get 429 with ``retry_after``; a call to
        it before that wait is over gets 429 again and is a violation."""
        self._flood[chat_id] = (float(retry_after), times)

    # -- inspecting ----------------------------------------------------------------------------

    def messages_in(self, chat_id: int) -> list[Sent]:
        return [s for s in self.sent if s.chat_id == chat_id]

    def calls_of(self, method: str) -> list[dict[str, Any]]:
        return [params for name, params in self.calls if name == method]

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
        """Until ``predicate()`` holds (checked after every request); TimeoutError if never."""
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(predicate)

    # -- the server ----------------------------------------------------------------------------

    def _notify(self) -> None:
        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        asyncio.get_running_loop().create_task(notify())

    async def _handle(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return _answer_error(ApiError(401, "Unauthorized"))
        method = request.match_info["method"]
        params = await _params(request)
        self.calls.append((method, params))
        self._notify()
        try:
            handler = getattr(self, f"_api_{method}", None)
            if handler is None:
                return _answer_error(ApiError(404, "Not Found: method not found"))
            failure = self._take_failure(method, params)
            if failure is not None:
                return _answer_error(failure)
            if method == "getUpdates":
                return _answer(await self._get_updates(params, request.transport))
            answer = _answer(await handler(params))
            await self._held_back(method)
            return answer
        except _Fail as e:
            return _answer_error(e.error)
        finally:
            self._notify()

    async def _held_back(self, method: str) -> None:
        for i, (name, release) in enumerate(self._holds):
            if name == method:
                del self._holds[i]
                self.held += 1
                self._notify()
                await release.wait()
                return

    def _take_failure(self, method: str, params: dict[str, Any]) -> ApiError | None:
        chat = params.get("chat_id")
        for i, (name, chat_id, error) in enumerate(self._failures):
            if name == method and (chat_id is None or chat_id == chat):
                del self._failures[i]
                return error
        return None

    def _check_flood(self, chat_id: int) -> None:
        now = time.monotonic()
        until = self._flood_until.get(chat_id, 0.0)
        if now < until:
            self.violations.append(f"request to chat {chat_id} {until - now:.2f} s early")
            raise _Fail(ApiError(429, "Too Many Requests", retry_after=int(until - now) + 1))
        wait_s, times = self._flood.get(chat_id, (0.0, 0))
        if times > 0:
            self._flood[chat_id] = (wait_s, times - 1)
            self._flood_until[chat_id] = now + wait_s
            raise _Fail(ApiError(429, f"Too Many Requests: retry after {int(wait_s)}", int(wait_s)))

    def _find(self, chat_id: int, message_id: int) -> Sent | None:
        for sent in self.sent:
            if sent.chat_id == chat_id and sent.message_id == message_id:
                return sent
        return None

    def _check_text(self, params: dict[str, Any]) -> str:
        if "parse_mode" in params:
            self.violations.append(f"parse_mode {params['parse_mode']!r} used")
        text = str(params.get("text", ""))
        if not text.strip():
            raise _Fail(ApiError(400, "Bad Request: message text is empty"))
        if utf16_units(text) > MAX_TEXT_UTF16:
            raise _Fail(TOO_LONG)
        return text

    def _message_json(self, sent: Sent) -> dict[str, Any]:
        out: dict[str, Any] = {
            "message_id": sent.message_id,
            "from": self.bot.json(),
            "chat": {"id": sent.chat_id, "type": "private" if sent.chat_id > 0 else "supergroup"},
            "date": int(time.time()),
            "text": sent.text,
        }
        if sent.thread_id is not None:
            out["message_thread_id"] = sent.thread_id
        return out

    async def _api_getMe(self, params: dict[str, Any]) -> Any:
        return {**self.bot.json(), "can_join_groups": True, "can_read_all_group_messages": False}

    async def _api_deleteWebhook(self, params: dict[str, Any]) -> Any:
        self.webhook = None
        if params.get("drop_pending_updates"):
            self._updates.clear()
        return True

    async def _api_setWebhook(self, params: dict[str, Any]) -> Any:
        self.webhook = params
        if "allowed_updates" in params:
            self.allowed_updates = params["allowed_updates"]
        return True

    async def _api_setMyCommands(self, params: dict[str, Any]) -> Any:
        scope = json.dumps(params.get("scope") or "default", sort_keys=True)
        self.commands[scope] = [(c["command"], c["description"]) for c in params["commands"]]
        return True

    async def _api_answerCallbackQuery(self, params: dict[str, Any]) -> Any:
        self.answered_callbacks.append(str(params["callback_query_id"]))
        return True

    async def _api_sendChatAction(self, params: dict[str, Any]) -> Any:
        self.actions.append(
            (int(params["chat_id"]), str(params["action"]), params.get("message_thread_id"))
        )
        return True

    async def _api_sendMessage(self, params: dict[str, Any]) -> Any:
        chat_id = int(params["chat_id"])
        self._check_flood(chat_id)
        text = self._check_text(params)
        reply = params.get("reply_parameters") or {}
        reply_to = reply.get("message_id", params.get("reply_to_message_id"))
        sent = Sent(
            chat_id, next(self._message_ids), text, reply_to, params.get("message_thread_id")
        )
        self.sent.append(sent)
        return self._message_json(sent)

    async def _api_editMessageText(self, params: dict[str, Any]) -> Any:
        chat_id = int(params["chat_id"])
        self._check_flood(chat_id)
        text = self._check_text(params)
        sent = self._find(chat_id, int(params["message_id"]))
        if sent is None:
            raise _Fail(ApiError(400, "Bad Request: message to edit not found"))
        if sent.text == text:
            raise _Fail(NOT_MODIFIED)
        sent.text = text
        sent.edits.append(text)
        return self._message_json(sent)

    async def _api_getUpdates(self, params: dict[str, Any]) -> Any:
        return await self._get_updates(params, None)

    async def _get_updates(
        self, params: dict[str, Any], transport: asyncio.BaseTransport | None
    ) -> Any:
        if self.webhook is not None:
            raise _Fail(
                ApiError(
                    409,
                    "Conflict: can't use getUpdates method while webhook is active; "
                    "use deleteWebhook to delete the webhook first",
                )
            )
        if self._poller is not None and not self._poller.done():
            if self._poller_transport is None or self._poller_transport.is_closing():
                self._poller.set_result(None)  # its client hung up; no one to conflict with
            else:
                self.conflicts += 1
                self._poller.set_exception(_Fail(CONFLICT))
        offset = int(params.get("offset", 0))
        if offset:
            self.confirmed_below = max(self.confirmed_below, offset)
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
            self._notify()
        if "allowed_updates" in params:
            self.allowed_updates = params["allowed_updates"]
        limit = int(params.get("limit", 100))
        timeout_s = float(params.get("timeout", 0))
        if not self._pending() and timeout_s > 0:
            poller = self._poller = asyncio.get_running_loop().create_future()
            self._poller_transport = transport
            waiter = asyncio.create_task(self.wait_for(self._pending, timeout_s))
            try:
                await asyncio.wait({poller, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await waiter
            if poller.done() and poller.exception() is not None:
                raise poller.exception()  # type: ignore[misc]
            if not poller.done():
                poller.set_result(None)
        batch = self._pending()[:limit]
        self.delivered.extend(u["update_id"] for u in batch)
        return batch

    def _pending(self) -> list[dict[str, Any]]:
        wanted = self.allowed_updates if self.honour_allowed_updates else None
        return [
            u
            for u in self._updates
            if u["update_id"] >= self.confirmed_below and (not wanted or _kind(u) in wanted)
        ]


class _Fail(Exception):
    def __init__(self, error: ApiError) -> None:
        super().__init__(error.description)
        self.error = error


def _kind(update: dict[str, Any]) -> str:
    return next(k for k in update if k != "update_id")


def _entities(text: str) -> list[dict[str, Any]]:
    """bot_command at the start, and every @mention, with offsets in UTF-16 units."""
    out: list[dict[str, Any]] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in "/@" and (i == 0 or text[i - 1].isspace()):
            j = i + 1
            while j < len(text) and (text[j].isalnum() or text[j] in "_@"):
                j += 1
            if j > i + 1 and (ch == "@" or i == 0):
                kind = "bot_command" if ch == "/" else "mention"
                out.append(
                    {
                        "type": kind,
                        "offset": utf16_units(text[:i]),
                        "length": utf16_units(text[i:j]),
                    }
                )
            i = j
        else:
            i += 1
    return out


async def _params(request: web.Request) -> dict[str, Any]:
    """The call's parameters from a query string, a JSON body or form fields."""
    raw: dict[str, Any] = dict(request.query)
    if request.can_read_body:
        if request.content_type == "application/json":
            raw.update(await request.json())
            return raw
        form = await request.post()
        raw.update({k: v for k, v in form.items() if isinstance(v, str)})
    return {
        k: (v if k in TEXT_FIELDS or not isinstance(v, str) else _json(v)) for k, v in raw.items()
    }


def _json(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def _answer(result: Any) -> web.Response:
    return web.json_response({"ok": True, "result": result})


def _answer_error(error: ApiError) -> web.Response:
    body: dict[str, Any] = {
        "ok": False,
        "error_code": error.status,
        "description": error.description,
    }
    if error.retry_after is not None:
        body["parameters"] = {"retry_after": error.retry_after}
    return web.json_response(body, status=error.status)
