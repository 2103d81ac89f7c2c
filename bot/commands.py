"""The chat commands every platform offers, in one place: what each does, who may use it.

Adapters parse a platform's command (a Discord slash command, a Telegram ``/command``, a
dashboard button), build a :class:`Caller` and call :meth:`Commands.run`; they only present
the text it returns. The admin check and its refusal live here, so every platform refuses
alike and every refusal is logged.

``/chat`` is not here: it is an ordinary message, and each adapter sends it down the chat path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from bot.engines import read_heartbeats
from bot.errors import ParleyError
from bot.model_admin import rollback as rollback_to
from bot.redis import Redis
from bot.registry import STARTER, ModelRegistry
from bot.store import ConversationStore
from bot.trainer.client import TrainerClient, now_ms
from bot.trainer.progress import describe
from bot.wire import (
    ControlCommand,
    ControlRequest,
    Error,
    Feedback,
    JobUpdate,
    ReplyEvent,
    TrainerCommand,
    TrainerReply,
    TrainerRequest,
)

log = logging.getLogger(__name__)

CONTROL_TIMEOUT_S = 15.0
JOB_IDLE_TIMEOUT_S = 3600.0
"""A retrain job reports at least every ``learning.progress_interval_s``; following its
progress stops after this long without a word (the trainer service went away)."""

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
    CommandSpec("optout", "Stop archiving your messages and keep them out of training"),
    CommandSpec("optin", "Let your messages be archived and used for training again"),
    CommandSpec("status", "Is the bot up, and which model answers"),
    CommandSpec(
        "retrain",
        "Admins: retrain the model on the archived conversations",
        admin=True,
        argument="scratch",
    ),
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


@dataclass(frozen=True)
class Answer:
    """A command's reply, and for ``/retrain`` the job's later progress: an adapter that can
    edit its reply (Discord, Telegram) replaces the text with each update, which arrive at
    most every ``learning.progress_interval_s`` and end with the job's result."""

    text: str
    updates: AsyncIterator[str] | None = None


class Commands:
    """Runs chat commands for every adapter; each returns the text to show the caller.

    ``/retrain`` is a request to the trainer service (:mod:`bot.trainer`) wherever it runs;
    ``retrain`` is accepted for callers written before that and not used. ``/rollback``
    calls ``rollback`` when given, else moves the registry's live pointer itself.
    """

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
        self.trainer = TrainerClient(redis)
        self.store = ConversationStore(redis, ttl_s=1)  # consent only: nothing it writes expires

    @staticmethod
    def known(name: str) -> bool:
        return name in _BY_NAME or name == "start"

    async def run(self, name: str, argument: str, caller: Caller) -> str:
        """Run command ``name`` (without its slash) for ``caller``; never raises a ParleyError."""
        return (await self.answer(name, argument, caller)).text

    async def answer(self, name: str, argument: str, caller: Caller) -> Answer:
        """:meth:`run`, with the later updates of a ``/retrain`` for adapters that show them."""
        if name.lower() == "retrain" and caller.is_admin:
            try:
                return await self._retrain_job(argument.strip(), caller)
            except ParleyError as e:
                log.warning("/retrain from %s user %s failed: %s", caller.platform, caller.user, e)
                return Answer(f"/retrain failed: {e}")
        return Answer(await self._run(name, argument, caller))

    async def feedback(self, caller: Caller, reply_request_id: str, value: int) -> None:
        """Record ``caller``'s 👍 (1), 👎 (-1) or withdrawn reaction (0) on the bot's reply to
        request ``reply_request_id``; the trainer stores it with the archived exchange."""
        if value not in (-1, 0, 1):
            raise ValueError(f"feedback must be -1, 0 or 1, got {value}")
        await self.trainer.feedback(
            Feedback(
                request_id=reply_request_id,
                platform=caller.platform,
                user=caller.user,
                value=value,  # type: ignore[arg-type]
                created_ms=now_ms(),
            )
        )

    async def _run(self, name: str, argument: str, caller: Caller) -> str:
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
        if failed:
            return failed
        archived = await self._ask_trainer("forget", caller)
        if archived is None:
            what = (
                "your archived messages will be deleted when the trainer service is back "
                "(until then no training uses them)"
            )
        elif not archived.ok:
            what = f"deleting your archived messages failed ({archived.message}); ask an admin"
        else:
            what = f"from the archive I {archived.message}"
        return (
            "Done — I deleted your conversation history and my cached context of it; "
            f"{what}. From now on your messages are not archived or used for training "
            "(/optin undoes that)."
        )

    async def _optout(self, argument: str, caller: Caller) -> str:
        await self.store.opt_out(caller.user)
        await self._ask_trainer("optout", caller)
        return (
            "Done — your messages are no longer archived, and none of them (nor what is "
            "archived already) is used for training. /optin undoes that; /forget also "
            "deletes what is stored."
        )

    async def _optin(self, argument: str, caller: Caller) -> str:
        await self.store.opt_in(caller.user)
        recorded = await self._ask_trainer("optin", caller)
        later = "" if recorded is not None else " once the trainer service is back"
        return (
            f"Done — your messages are archived and may be used for training again{later}. "
            "/optout stops that."
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
        return (await self._retrain_job(argument, caller)).text

    async def _retrain_job(self, argument: str, caller: Caller) -> Answer:
        """Ask the trainer service for a job (or join the running one) and follow it."""
        if argument not in ("", "scratch"):
            return Answer("Usage: /retrain, or /retrain scratch to start from fresh weights.")
        log.info("/retrain %s by %s user %s", argument or "-", caller.platform, caller.user)
        request = TrainerRequest(
            id=caller.request_id,
            command="retrain",
            platform=caller.platform,
            user=caller.user,
            from_scratch=argument == "scratch",
            created_ms=now_ms(),
        )
        first = await self.trainer.ask(request, timeout_s=CONTROL_TIMEOUT_S)
        if first is None:
            return Answer(
                "The trainer service did not answer; the retrain waits for it "
                "(it runs if `parley trainer` is back within the hour)."
            )
        final = isinstance(first, TrainerReply) or first.final
        return Answer(describe(first), None if final else self._progress(request.id))

    async def _progress(self, request_id: str) -> AsyncIterator[str]:
        answers = self.trainer.answers(request_id, idle_timeout_s=JOB_IDLE_TIMEOUT_S)
        seen_first = False
        async for answer in answers:
            if seen_first:
                yield describe(answer)
            seen_first = True

    async def _rollback(self, argument: str, caller: Caller) -> str:
        log.info("/rollback %s by %s user %s", argument or "-", caller.platform, caller.user)
        if self.rollback is None:
            return await rollback_to(self.registry, self.redis, argument or None)
        return await self.rollback(argument or None)

    async def _model(self, argument: str, caller: Caller) -> str:
        # The registry may be an object store: its listing is I/O, off the event loop.
        versions = await asyncio.to_thread(self.registry.versions)
        live = await self.registry.live_version(self.redis)
        if not versions:
            return f"No model versions; serving {live or 'nothing'}."
        lines = ["Model versions (newest last):"]
        for v in versions:
            loss = v.validation_loss
            shown = f"validation loss {loss:.3f}" if loss is not None else "no validation loss"
            name = "starter (the built-in model)" if v.version == STARTER else v.version
            mark = "  ← live" if v.version == live else ""
            lines.append(f"{name}: {shown}{mark}")
        if await asyncio.to_thread(self.registry.previous, live) is None:
            lines.append("There is no earlier version to roll back to.")
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

    async def _ask_trainer(self, command: TrainerCommand, caller: Caller) -> TrainerReply | None:
        """A consent request to the trainer service; ``None`` if it did not answer in time
        (the request stays queued and is applied when it runs)."""
        request = TrainerRequest(
            id=f"{caller.request_id}:{command}",
            command=command,
            platform=caller.platform,
            user=caller.user,
            created_ms=now_ms(),
        )
        answer = await self.trainer.ask(request, timeout_s=CONTROL_TIMEOUT_S)
        if isinstance(answer, JobUpdate):  # a consent request never gets one
            return None
        return answer
