"""The chat commands every platform offers, in one place: what each does, who may use it.

Adapters parse a platform's command (a Discord slash command, a Telegram ``/command``, a
dashboard button), build a :class:`Caller` and call :meth:`Commands.run`; they only present
the text it returns. The admin check and its refusal live here, so every platform refuses
alike and every refusal is logged.

``/chat`` is not here: it is an ordinary message, and each adapter sends it down the chat path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from bot.engines import read_heartbeats
from bot.errors import ParleyError
from bot.redis import Redis
from bot.registry import ModelRegistry
from bot.wire import ControlCommand, ControlRequest, Error, ReplyEvent

log = logging.getLogger(__name__)

CONTROL_TIMEOUT_S = 15.0

RetrainCallback = Callable[[], Awaitable[str]]
"""Starts a training run; returns a message for the admin."""
RollbackCallback = Callable[[str | None], Awaitable[str]]
"""Makes a version live (``None``: the one before the live one); returns a message."""


@dataclass(frozen=True)
class CommandSpec:
    """A command as platforms list it (slash commands, ``setMyCommands``, ``/help``)."""

    name: str
    description: str
    admin: bool = False
    argument: str | None = None
    """Name of the one optional argument, if the command takes one."""


COMMANDS: tuple[CommandSpec, ...] = (
    CommandSpec("help", "What this bot is and what it can do"),
    CommandSpec("reset", "Start our conversation here afresh"),
    CommandSpec("forget", "Delete what the bot stored about you, keep you out of training"),
    CommandSpec("status", "Is the bot up, and which model answers"),
    CommandSpec("retrain", "Admins: retrain the model on the logged conversations", admin=True),
    CommandSpec(
        "rollback", "Admins: serve an earlier model version", admin=True, argument="version"
    ),
    CommandSpec("model", "Admins: the model versions and which one is live", admin=True),
)
"""Every command, in the order ``/help`` lists them. ``/start`` (Telegram) answers as help."""

_BY_NAME = {spec.name: spec for spec in COMMANDS}


@dataclass(frozen=True)
class Caller:
    """Who sent a command, and from where, as the adapter established it."""

    platform: str
    user: str
    """The platform's user id (the same value the adapter puts in ``ChatRequest.user``)."""
    conversation: str
    """The context key of the conversation the command was sent in."""
    request_id: str
    """Derived from the platform's ids, like a chat request's, so a redelivery is recognised."""
    reply_to: str
    """The adapter instance whose reply stream answers control requests."""
    is_admin: bool = False


class ControlClient(Protocol):
    """What the commands need of :class:`bot.queue.ParleyClient`."""

    async def reply(
        self, request: ControlRequest, *, timeout_s: float | None = None
    ) -> ReplyEvent: ...


def admin_refusal(name: str) -> str:
    return f"Only this bot's admins can use /{name}."


class Commands:
    """Runs chat commands for every adapter; each returns the text to show the caller."""

    def __init__(
        self,
        client: ControlClient,
        redis: Redis,
        registry: ModelRegistry,
        *,
        retrain: RetrainCallback | None = None,
        rollback: RollbackCallback | None = None,
        bot_name: str = "Parley",
    ) -> None:
        self.client = client
        self.redis = redis
        self.registry = registry
        self.retrain = retrain
        self.rollback = rollback
        self.bot_name = bot_name

    @staticmethod
    def known(name: str) -> bool:
        return name in _BY_NAME or name == "start"

    async def run(self, name: str, argument: str, caller: Caller) -> str:
        """Run command ``name`` (without its slash) for ``caller``; never raises a ParleyError."""
        name = name.lower()
        if name == "start":
            name = "help"
        spec = _BY_NAME.get(name)
        if spec is None:
            return f"I don't know /{name}. Try /help."
        if spec.admin and not caller.is_admin:
            log.warning(
                "refused /%s from %s user %s (not an admin)", name, caller.platform, caller.user
            )
            return admin_refusal(name)
        handler = getattr(self, f"_{name}")
        try:
            text: str = await handler(argument.strip(), caller)
        except ParleyError as e:
            log.warning("/%s from %s user %s failed: %s", name, caller.platform, caller.user, e)
            return f"/{name} failed: {e}"
        return text

    # -- everyone ------------------------------------------------------------------------------

    async def _help(self, argument: str, caller: Caller) -> str:
        lines = [
            f"I'm {self.bot_name}, a chatbot trained on this community's conversations. "
            "Talk to me and I'll answer.",
            "",
        ]
        for spec in COMMANDS:
            if spec.admin and not caller.is_admin:
                continue
            usage = f"/{spec.name}" + (f" [{spec.argument}]" if spec.argument else "")
            lines.append(f"{usage} — {spec.description}")
        return "\n".join(lines)

    async def _reset(self, argument: str, caller: Caller) -> str:
        failed = await self._control("reset", caller)
        return failed or "Done — our conversation here starts afresh."

    async def _forget(self, argument: str, caller: Caller) -> str:
        failed = await self._control("forget", caller)
        return failed or (
            "Done — I deleted your conversation history and my cached context of it, "
            "and your messages are kept out of training from now on."
        )

    async def _status(self, argument: str, caller: Caller) -> str:
        now = time.time()
        alive = [b for b in await read_heartbeats(self.redis) if b.alive(now)]
        if not alive:
            return "No engine is answering right now; messages wait until one is back."
        versions = sorted({b.model_version for b in alive if b.model_version}) or ["none loaded"]
        busy = sum(b.running for b in alive)
        return (
            f"Up: {len(alive)} engine(s), model {', '.join(versions)}, "
            f"{busy} conversation(s) being answered now."
        )

    # -- admins --------------------------------------------------------------------------------

    async def _retrain(self, argument: str, caller: Caller) -> str:
        if self.retrain is None:
            return "Retraining is not available from here."
        log.info("/retrain by %s user %s", caller.platform, caller.user)
        return await self.retrain()

    async def _rollback(self, argument: str, caller: Caller) -> str:
        if self.rollback is None:
            return "Rollback is not available from here."
        log.info("/rollback %s by %s user %s", argument or "-", caller.platform, caller.user)
        return await self.rollback(argument or None)

    async def _model(self, argument: str, caller: Caller) -> str:
        versions = self.registry.versions()
        live = await self.registry.live_version(self.redis)
        if not versions:
            return f"No trained versions yet; serving {live or 'the built-in starter model'}."
        lines = ["Model versions (newest last):"]
        for v in versions:
            loss = v.validation_loss
            shown = f"validation loss {loss:.3f}" if loss is not None else "no validation loss"
            mark = "  ← live" if v.version == live else ""
            lines.append(f"{v.version}: {shown}{mark}")
        return "\n".join(lines)

    # -- helpers -------------------------------------------------------------------------------

    async def _control(self, command: ControlCommand, caller: Caller) -> str | None:
        """Send a control request and wait for the engine; a message if it failed, else None."""
        request = ControlRequest(
            id=caller.request_id,
            conversation=caller.conversation,
            reply_to=caller.reply_to,
            command=command,
            user=caller.user,
            created_ms=int(time.time() * 1000),
        )
        final = await self.client.reply(request, timeout_s=CONTROL_TIMEOUT_S)
        if isinstance(final, Error):
            return final.message
        return None
