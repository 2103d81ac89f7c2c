"""A local Discord: the REST routes and the gateway an unmodified discord.py 2.x client uses.

One aiohttp server plays both halves of Discord's API v10:

- **Gateway** (``/gateway``): HELLO, IDENTIFY (token and intents checked; asking for the
  message-content intent when the application may not have it closes with 4014, as Discord
  does), heartbeats and their ACKs, READY with a ``resume_gateway_url`` pointing back here,
  GUILD_CREATE, and the dispatches tests trigger (MESSAGE_CREATE, THREAD_CREATE,
  INTERACTION_CREATE, MESSAGE_REACTION_ADD and MESSAGE_REACTION_REMOVE — the last two only
  to a session that asked for the guild or DM reactions intent, as Discord does). The
  session keeps every dispatch it sequenced, so after :meth:`FakeDiscord.drop_gateway` or
  :meth:`FakeDiscord.send_reconnect` a RESUME replays exactly what the client missed, then
  RESUMED. zlib-stream compression as the client asks.
- **REST** (``/api/v10``): the bot user and application, command sync, messages (send, edit,
  typing), interaction callbacks (valid for 3 s after the interaction, as on Discord) and
  webhook follow-ups. :meth:`FakeDiscord.fail_next` makes a route answer 429 with Discord's
  headers and body, so the client's own rate-limit handling runs.

Without the message-content intent, guild messages that neither mention the bot nor come in
a DM reach the client with empty content, as Discord sends them.

Tests drive it with :meth:`say`, :meth:`dm`, :meth:`slash`, :meth:`react` and :meth:`unreact`,
and wait on it with :meth:`wait_for` (woken on every change, never polled on a timer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes.discord_payloads import (
    Channel,
    Guild,
    Message,
    Payload,
    Role,
    Snowflakes,
    User,
    now_iso,
)

API = "/api/v10"
MESSAGE_CONTENT_INTENT = 1 << 15
GUILD_MESSAGE_REACTIONS_INTENT = 1 << 10
DIRECT_MESSAGE_REACTIONS_INTENT = 1 << 13
SUPER_REACTION_COLOURS = ["#ffd700", "#ff8c00"]
INTERACTION_ACK_WINDOW_S = 3.0
"""Discord refuses an interaction callback this long after the interaction."""
HEARTBEAT_INTERVAL_MS = 41_250


@dataclass
class _Session:
    id: str
    intents: int
    seq: int = 0
    sent: list[Payload] = field(default_factory=list)
    ws: web.WebSocketResponse | None = None
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    compressor: Any = None


@dataclass
class _Interaction:
    id: int
    token: str
    channel: Channel
    user: User
    name: str
    created_s: float
    callbacks: list[Payload] = field(default_factory=list)
    followups: list[int] = field(default_factory=list)
    payload: Payload = field(default_factory=dict)
    """The INTERACTION_CREATE data, kept for :meth:`FakeDiscord.redeliver`."""
    attempts: int = 0
    """Callback requests received, refused ones included."""


@dataclass
class _Failure:
    method: str
    path: re.Pattern[str]
    times: int
    retry_after_s: float


class FakeDiscord:
    """The local Discord server; ``async with FakeDiscord() as discord:`` starts and stops it."""

    def __init__(self, *, token: str = "fake-token", message_content_allowed: bool = True) -> None:
        self.token = token
        self.message_content_allowed = message_content_allowed
        self.ids = Snowflakes()
        self.bot = User(self.ids(), "parley", bot=True)
        self.owner = User(self.ids(), "owner")
        self.users: dict[int, User] = {self.bot.id: self.bot, self.owner.id: self.owner}
        self.guilds: dict[int, Guild] = {}
        self.channels: dict[int, Channel] = {}
        self.messages: dict[int, Message] = {}
        self.interactions: dict[int, _Interaction] = {}
        self.commands: dict[int | None, list[Payload]] = {}
        """Synced commands by guild id (``None``: global)."""
        self.typing: list[int] = []
        """Channel ids of every typing indicator the bot triggered, in order."""
        self.rate_limited: list[str] = []
        """``METHOD path`` of every request answered with an injected 429."""
        self.read_only: set[int] = set()
        """Channels where the bot lacks Send Messages: posting there answers 403."""
        self.identifies = 0
        """Sessions started (IDENTIFY accepted)."""
        self.refused_intents = 0
        """IDENTIFYs closed with 4014 (message content asked for but not allowed)."""
        self.resumes = 0
        self.reactions: set[tuple[int, int, str, bool]] = set()
        """(message id, user id, emoji, super) of every reaction on a message now."""
        self.withheld: list[str] = []
        """Events not sent because the session lacks the intent Discord requires for them."""
        self._session: _Session | None = None
        self._failures: list[_Failure] = []
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> FakeDiscord:
        app = web.Application()
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", API + "/{path:.*}", self._rest)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def close(self) -> None:
        session = self._session
        if session is not None and session.ws is not None:
            await session.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeDiscord:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}{API}"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    # -- the world tests set up --------------------------------------------------------------

    def add_user(self, name: str) -> User:
        user = User(self.ids(), name)
        self.users[user.id] = user
        return user

    def add_guild(self, name: str, members: list[User]) -> Guild:
        guild = Guild(self.ids(), name, owner_id=self.owner.id)
        guild.members = {self.bot.id: [], **{u.id: [] for u in members}}
        self.guilds[guild.id] = guild
        return guild

    def add_role(self, guild: Guild, name: str, members: list[User]) -> Role:
        role = Role(self.ids(), name)
        guild.roles.append(role)
        for user in members:
            guild.members[user.id].append(role.id)
        return role

    def add_channel(self, guild: Guild, name: str) -> Channel:
        channel = Channel(self.ids(), name, type=0, guild_id=guild.id)
        guild.channels.append(channel)
        self.channels[channel.id] = channel
        return channel

    async def add_thread(self, parent: Channel, name: str, owner: User) -> Channel:
        """A public thread in ``parent``; announced with THREAD_CREATE when a client is on."""
        assert parent.guild_id is not None
        thread = Channel(
            self.ids(),
            name,
            type=11,
            guild_id=parent.guild_id,
            parent_id=parent.id,
            owner_id=owner.id,
        )
        self.guilds[parent.guild_id].channels.append(thread)
        self.channels[thread.id] = thread
        if self._session is not None:
            await self.dispatch("THREAD_CREATE", {**thread.payload(), "newly_created": True})
        return thread

    def dm_channel(self, user: User) -> Channel:
        for channel in self.channels.values():
            if channel.type == 1 and channel.recipient is user:
                return channel
        channel = Channel(self.ids(), "", type=1, recipient=user)
        self.channels[channel.id] = channel
        return channel

    # -- what users do -----------------------------------------------------------------------

    async def say(
        self,
        user: User,
        channel: Channel,
        text: str,
        *,
        mention_bot: bool = False,
        reply_to: int | None = None,
        attachments: list[Payload] | None = None,
    ) -> Message:
        """``user`` posts ``text`` in ``channel`` (a mention puts ``<@bot>`` in front)."""
        mentions = []
        if mention_bot:
            text = f"<@{self.bot.id}> {text}"
            mentions.append(self.bot)
        if reply_to is not None and self.messages[reply_to].author is self.bot:
            mentions.append(self.bot)  # a reply pings the replied-to author by default
        message = Message(
            self.ids(),
            channel,
            user,
            [text],
            reference=reply_to,
            mentions=mentions,
            attachments=attachments or [],
        )
        await self._store(message)
        await self.deliver(message)
        return message

    async def dm(self, user: User, text: str, **kwargs: Any) -> Message:
        return await self.say(user, self.dm_channel(user), text, **kwargs)

    async def deliver(self, message: Message) -> None:
        """Dispatch MESSAGE_CREATE for ``message`` (again, for a redelivery)."""
        payload = message.payload(self.messages, self._guild_of(message.channel))
        session = self._session
        addressed = self.bot in message.mentions or message.channel.type == 1
        if session is not None and not session.intents & MESSAGE_CONTENT_INTENT and not addressed:
            payload["content"] = ""  # what Discord sends without the intent
        await self.dispatch("MESSAGE_CREATE", payload)

    async def redeliver(self, interaction: _Interaction) -> None:
        """Dispatch ``interaction``'s INTERACTION_CREATE again (as a replayed event would)."""
        await self.dispatch("INTERACTION_CREATE", interaction.payload)

    async def slash(self, user: User, channel: Channel, name: str, **options: str) -> _Interaction:
        """``user`` runs ``/name`` in ``channel``: INTERACTION_CREATE, as Discord sends it."""
        guild = self._guild_of(channel)
        command = self._command(name, guild.id if guild else None)
        interaction = _Interaction(
            self.ids(), f"itoken-{self.ids()}", channel, user, name, time.monotonic()
        )
        self.interactions[interaction.id] = interaction
        data: Payload = {
            "id": str(interaction.id),
            "application_id": str(self.bot.id),
            "type": 2,
            "token": interaction.token,
            "version": 1,
            "channel_id": str(channel.id),
            "channel": channel.payload(),
            "data": {
                "id": command["id"],
                "name": name,
                "type": 1,
                "options": [{"name": k, "type": 3, "value": v} for k, v in options.items()],
            },
            "app_permissions": "0",
            "locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {},
            "attachment_size_limit": 8 * 2**20,
        }
        if guild is not None:
            data.update(guild_id=str(guild.id), guild_locale="en-US", context=0)
            data["member"] = guild.member_payload(user)
            data["data"]["guild_id"] = str(guild.id)
        else:
            data.update(user=user.payload(), context=1)
        interaction.payload = data
        await self.dispatch("INTERACTION_CREATE", data)
        return interaction

    async def react(self, user: User, message: Message, emoji: str, *, burst: bool = False) -> bool:
        """``user`` puts ``emoji`` (a Unicode emoji; ``burst``: as a super reaction) on
        ``message``: MESSAGE_REACTION_ADD, unless it is there already (Discord sends nothing
        then either). Whether the reaction is new."""
        assert not message.deleted, "Discord refuses reactions on a deleted message"
        reaction = (message.id, user.id, emoji, burst)
        if reaction in self.reactions:
            return False
        self.reactions.add(reaction)
        data = self._reaction_payload(user, message, emoji, burst)
        guild = self._guild_of(message.channel)
        if guild is not None:
            data["member"] = guild.member_payload(user)
        data["message_author_id"] = str(message.author.id)
        if burst:
            data["burst_colors"] = SUPER_REACTION_COLOURS
        await self._dispatch_reaction("MESSAGE_REACTION_ADD", message, data)
        return True

    async def unreact(
        self, user: User, message: Message, emoji: str, *, burst: bool = False
    ) -> bool:
        """``user`` takes ``emoji`` off ``message``: MESSAGE_REACTION_REMOVE, unless it was
        not there. Whether there was one to take off."""
        reaction = (message.id, user.id, emoji, burst)
        if reaction not in self.reactions:
            return False
        self.reactions.discard(reaction)
        data = self._reaction_payload(user, message, emoji, burst)
        await self._dispatch_reaction("MESSAGE_REACTION_REMOVE", message, data)
        return True

    def _reaction_payload(self, user: User, message: Message, emoji: str, burst: bool) -> Payload:
        """The fields MESSAGE_REACTION_ADD and MESSAGE_REACTION_REMOVE share."""
        data: Payload = {
            "user_id": str(user.id),
            "channel_id": str(message.channel.id),
            "message_id": str(message.id),
            "emoji": {"id": None, "name": emoji},
            "burst": burst,
            "type": 1 if burst else 0,
        }
        if message.channel.guild_id is not None:
            data["guild_id"] = str(message.channel.guild_id)
        return data

    async def _dispatch_reaction(self, event: str, message: Message, data: Payload) -> None:
        session = self._session
        assert session is not None, "no gateway session yet"
        in_dm = message.channel.type == 1
        needed = DIRECT_MESSAGE_REACTIONS_INTENT if in_dm else GUILD_MESSAGE_REACTIONS_INTENT
        if not session.intents & needed:
            self.withheld.append(event)
            return
        await self.dispatch(event, data)

    # -- what tests observe ------------------------------------------------------------------

    def bot_messages(self, channel: Channel | None = None) -> list[Message]:
        """Messages the bot posted (channel messages and follow-ups), oldest first."""
        return [
            m
            for m in self.messages.values()
            if m.author is self.bot and (channel is None or m.channel is channel)
        ]

    def replies_to(self, message: Message) -> list[Message]:
        return [m for m in self.bot_messages() if m.reference == message.id]

    def followups(self, interaction: _Interaction) -> list[Message]:
        return [self.messages[i] for i in interaction.followups]

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 30.0) -> None:
        """Return once ``predicate()`` holds; it is checked after every change here."""
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(predicate)

    # -- faults ------------------------------------------------------------------------------

    def fail_next(
        self, method: str, path: str, *, times: int = 1, retry_after_s: float = 0.3
    ) -> None:
        """The next ``times`` requests ``METHOD`` matching regex ``path`` (under /api/v10)
        are answered 429, with Discord's rate-limit headers and body."""
        self._failures.append(_Failure(method, re.compile(path), times, retry_after_s))

    async def drop_gateway(self, code: int = 4000) -> None:
        """Close the gateway connection as a network or Discord failure would."""
        session = self._session
        assert session is not None and session.ws is not None, "no gateway connection"
        ws, session.ws = session.ws, None
        await ws.close(code=code, message=b"dropped by the test")

    async def send_reconnect(self) -> None:
        """Ask the client to reconnect (op 7); it closes and RESUMEs."""
        session = self._session
        assert session is not None and session.ws is not None
        await self._send(session, {"op": 7, "d": None, "s": None, "t": None})

    # -- gateway -----------------------------------------------------------------------------

    async def dispatch(self, event: str, data: Payload) -> None:
        """Sequence a dispatch in the session; send it now if the client is connected."""
        session = self._session
        assert session is not None, "no gateway session yet"
        session.seq += 1
        payload = {"op": 0, "t": event, "s": session.seq, "d": data}
        session.sent.append(payload)
        if session.ws is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self._send(session, payload)

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        compress = request.query.get("compress")
        if compress not in (None, "zlib-stream"):
            await ws.close(code=4000, message=b"unsupported compression")
            return ws
        conn = _Session("pending", 0, ws=ws)
        conn.compressor = zlib.compressobj() if compress else None
        await self._send(conn, {"op": 10, "d": {"heartbeat_interval": HEARTBEAT_INTERVAL_MS}})
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                break
            frame = json.loads(msg.data)
            op, data = frame.get("op"), frame.get("d")
            if op == 1:
                await self._send(conn, {"op": 11, "d": None})
            elif op == 2:
                await self._identify(ws, conn, data)
            elif op == 6:
                await self._resume(ws, conn, data)
            async with self._changed:
                self._changed.notify_all()
        session = self._session
        if session is not None and session.ws is ws:
            session.ws = None
        return ws

    async def _identify(self, ws: web.WebSocketResponse, conn: _Session, data: Payload) -> None:
        if data.get("token") != self.token:
            await ws.close(code=4004, message=b"Authentication failed.")
            return
        intents = int(data.get("intents", 0))
        if intents & MESSAGE_CONTENT_INTENT and not self.message_content_allowed:
            self.refused_intents += 1
            await ws.close(code=4014, message=b"Disallowed intent(s).")
            return
        session = _Session(f"session-{self.ids()}", intents, ws=ws, compressor=conn.compressor)
        session.send_lock = conn.send_lock
        self._session = session
        self.identifies += 1
        ready = {
            "v": 10,
            "user": self.bot.payload(),
            "guilds": [{"id": str(g), "unavailable": True} for g in self.guilds],
            "session_id": session.id,
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.bot.id), "flags": 0},
            "private_channels": [],
            "relationships": [],
        }
        await self.dispatch("READY", ready)
        for guild in self.guilds.values():
            await self.dispatch("GUILD_CREATE", guild.payload(self.users))

    async def _resume(self, ws: web.WebSocketResponse, conn: _Session, data: Payload) -> None:
        session = self._session
        if (
            session is None
            or data.get("session_id") != session.id
            or data.get("token") != (self.token)
        ):
            await self._send(conn, {"op": 9, "d": False})
            return
        session.ws, session.compressor, session.send_lock = ws, conn.compressor, conn.send_lock
        self.resumes += 1
        missed = [p for p in session.sent if p["s"] > int(data.get("seq") or 0)]
        for payload in missed:
            await self._send(session, payload)
        await self.dispatch("RESUMED", {})

    async def _send(self, conn: _Session, payload: Payload) -> None:
        payload = {"s": None, "t": None, **payload}
        text = json.dumps(payload)
        assert conn.ws is not None
        async with conn.send_lock:
            if conn.compressor is not None:
                data = conn.compressor.compress(text.encode()) + conn.compressor.flush(
                    zlib.Z_SYNC_FLUSH
                )
                await conn.ws.send_bytes(data)
            else:
                await conn.ws.send_str(text)

    # -- REST --------------------------------------------------------------------------------

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["path"]
        failure = self._failure(request.method, path)
        if failure is not None:
            return self._too_many(request, failure)
        body: Payload = {}
        if request.can_read_body:
            body = await request.json()
        try:
            response = await self._route(request, path, body)
        finally:
            async with self._changed:
                self._changed.notify_all()
        return response

    def _failure(self, method: str, path: str) -> _Failure | None:
        for failure in self._failures:
            if failure.times > 0 and failure.method == method and failure.path.fullmatch(path):
                failure.times -= 1
                return failure
        return None

    def _too_many(self, request: web.Request, failure: _Failure) -> web.Response:
        self.rate_limited.append(f"{request.method} {request.match_info['path']}")
        headers = {
            "Via": "1.1 google",
            "Retry-After": str(max(1, round(failure.retry_after_s))),
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": f"{time.time() + failure.retry_after_s:.3f}",
            "X-RateLimit-Reset-After": f"{failure.retry_after_s:.3f}",
            "X-RateLimit-Bucket": "fake-bucket",
            "X-RateLimit-Scope": "user",
        }
        body = {
            "message": "You are being rate limited.",
            "retry_after": failure.retry_after_s,
            "global": False,
        }
        return _json(body, status=429, headers=headers)

    async def _route(self, request: web.Request, path: str, body: Payload) -> web.Response:
        method = request.method
        if path.startswith(("/webhooks/", "/interactions/")):
            return await self._webhook_route(method, path, body)
        if request.headers.get("Authorization") != f"Bot {self.token}":
            return _error(401, 0, "401: Unauthorized")
        if method == "GET" and path == "/users/@me":
            return _json(self.bot.payload())
        if method == "GET" and path == "/oauth2/applications/@me":
            return _json(self._application())
        if method == "GET" and path in ("/gateway", "/gateway/bot"):
            return _json({"url": self.gateway_url, "shards": 1})
        if m := re.fullmatch(r"/applications/(\d+)(?:/guilds/(\d+))?/commands", path):
            if method == "PUT":
                return _json(self._sync_commands(m.group(2), body))
            return _json(self.commands.get(_int(m.group(2)), []))
        if m := re.fullmatch(r"/channels/(\d+)/typing", path):
            self.typing.append(int(m.group(1)))
            return web.Response(status=204)
        if m := re.fullmatch(r"/channels/(\d+)/messages", path):
            channel = self.channels.get(int(m.group(1)))
            if channel is None or method != "POST":
                return _error(404, 10003, "Unknown Channel")
            if channel.id in self.read_only:
                return _error(403, 50013, "Missing Permissions")
            return await self._post_message(channel, body)
        if m := re.fullmatch(r"/channels/(\d+)/messages/(\d+)", path):
            return await self._edit_message(method, int(m.group(2)), body)
        return _error(404, 0, f"404: Not Found ({method} {path})")

    async def _webhook_route(self, method: str, path: str, body: Payload) -> web.Response:
        if m := re.fullmatch(r"/interactions/(\d+)/([^/]+)/callback", path):
            interaction = self.interactions.get(int(m.group(1)))
            if interaction is None or interaction.token != m.group(2):
                return _error(404, 10062, "Unknown interaction")
            interaction.attempts += 1
            if time.monotonic() - interaction.created_s > INTERACTION_ACK_WINDOW_S:
                return _error(404, 10062, "Unknown interaction")
            if interaction.callbacks:
                return _error(400, 40060, "Interaction has already been acknowledged.")
            interaction.callbacks.append(body)
            return _json(
                {
                    "interaction": {
                        "id": str(interaction.id),
                        "type": 2,
                        "response_message_loading": body.get("type") == 5,
                        "response_message_ephemeral": bool(
                            (body.get("data") or {}).get("flags", 0) & 64
                        ),
                    },
                    "resource": {"type": body.get("type")},
                }
            )
        m = re.fullmatch(r"/webhooks/(\d+)/([^/]+)(?:/messages/(\d+|@original))?", path)
        interaction = self._interaction_by_token(m.group(2)) if m else None
        if m is None or interaction is None or not interaction.callbacks:
            return _error(404, 10015, "Unknown Webhook")
        if m.group(3) is None and method == "POST":
            message = Message(
                self.ids(),
                interaction.channel,
                self.bot,
                [body.get("content", "")],
                allowed_mentions=body.get("allowed_mentions"),
                interaction_id=interaction.id,
            )
            interaction.followups.append(message.id)
            await self._store(message)
            return _json(self._message_payload(message))
        if m.group(3) is not None and method == "PATCH":
            target = (
                interaction.followups[0]
                if m.group(3) == "@original" and interaction.followups
                else _int(m.group(3))
            )
            return await self._edit_message(method, target or 0, body)
        return _error(405, 0, "405: Method Not Allowed")

    async def _post_message(self, channel: Channel, body: Payload) -> web.Response:
        content = body.get("content") or ""
        if not content or len(content) > 2000:
            return _error(400, 50035, "Invalid Form Body: content must be 1-2000 characters")
        ref = body.get("message_reference") or {}
        reference = _int(ref.get("message_id"))
        if reference is not None and reference not in self.messages:
            if ref.get("fail_if_not_exists", True):
                return _error(400, 50035, "Invalid Form Body: Unknown message")
            reference = None
        message = Message(
            self.ids(),
            channel,
            self.bot,
            [content],
            reference=reference,
            allowed_mentions=body.get("allowed_mentions"),
        )
        await self._store(message)
        return _json(self._message_payload(message))

    async def _edit_message(self, method: str, message_id: int, body: Payload) -> web.Response:
        message = self.messages.get(message_id)
        if message is None or message.deleted:
            return _error(404, 10008, "Unknown Message")
        if method == "DELETE":
            message.deleted = True
            return web.Response(status=204)
        if method != "PATCH":
            return _error(405, 0, "405: Method Not Allowed")
        if "content" in body:
            content = body["content"] or ""
            if len(content) > 2000:
                return _error(400, 50035, "Invalid Form Body: content over 2000 characters")
            message.texts.append(content)
        if "allowed_mentions" in body:
            message.allowed_mentions = body["allowed_mentions"]
        return _json(self._message_payload(message))

    def delete(self, message: Message) -> None:
        """A user or moderator deletes ``message``; later edits of it get 404."""
        message.deleted = True

    # -- helpers -----------------------------------------------------------------------------

    async def _store(self, message: Message) -> None:
        async with self._changed:
            self.messages[message.id] = message
            self._changed.notify_all()

    def _message_payload(self, message: Message) -> Payload:
        return message.payload(self.messages, self._guild_of(message.channel))

    def _guild_of(self, channel: Channel) -> Guild | None:
        return self.guilds.get(channel.guild_id) if channel.guild_id else None

    def _interaction_by_token(self, token: str) -> _Interaction | None:
        return next((i for i in self.interactions.values() if i.token == token), None)

    def _command(self, name: str, guild_id: int | None) -> Payload:
        for scope in (guild_id, None):
            for command in self.commands.get(scope, []):
                if command["name"] == name:
                    return command
        raise AssertionError(f"/{name} was never synced (synced: {self.commands})")

    def _sync_commands(self, guild_id: str | None, body: Any) -> list[Payload]:
        synced = [
            {
                **command,
                "id": str(self.ids()),
                "application_id": str(self.bot.id),
                "version": "1",
                **({"guild_id": guild_id} if guild_id else {}),
            }
            for command in body
        ]
        self.commands[_int(guild_id)] = synced
        return synced

    def _application(self) -> Payload:
        return {
            "id": str(self.bot.id),
            "name": self.bot.name,
            "description": "",
            "icon": None,
            "bot_public": True,
            "bot_require_code_grant": False,
            "owner": self.owner.payload(),
            "verify_key": "0" * 64,
            "flags": 0,
            "summary": "",
            "team": None,
            "interactions_endpoint_url": None,
            "created_at": now_iso(),
        }


def _int(value: Any) -> int | None:
    return int(value) if value not in (None, "") else None


def _json(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response typed exactly ``application/json``, as Discord's (discord.py checks)."""
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers={**(headers or {}), "Content-Type": "application/json"},
    )


def _error(status: int, code: int, message: str) -> web.Response:
    return _json({"message": message, "code": code}, status=status)
