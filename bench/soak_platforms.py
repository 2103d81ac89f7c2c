"""The soak's Discord and Telegram users: the local protocol fakes, and the real adapter
processes (``parley adapter discord`` / ``parley adapter telegram``) talking to them.

The fakes (:mod:`tests.fakes`) run in the soak's event loop; the adapters are the real
commands, pointed at the fakes by their ``api_base``/``gateway_url`` and ``base_url``
settings. A Discord user sends a direct message and waits for the bot's reply to it; a
Telegram user writes in their private chat and waits for the bot's next message there. The
latency of a platform request is the time to that first visible reply (it is then edited as
it streams); the web users' is the time to the end of the reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.fakes.discord import FakeDiscord
from tests.fakes.discord_payloads import Message, User
from tests.fakes.telegram_api import Chat, FakeBotAPI
from tests.fakes.telegram_api import User as TelegramUser

READY_TIMEOUT_S = 180.0
REPLY_TIMEOUT_S = 120.0
TELEGRAM_FIRST_ID = 5_000_000


def is_busy(text: str) -> bool:
    return "busy" in text.lower()


class Platforms:
    """The fakes and the two adapter processes, for ``discord_users`` and ``telegram_users``.

    ``env(name, settings)`` builds a child's environment (see :func:`bench.soak.parley_env`).
    """

    def __init__(self, work: Path, env: Any, discord_users: int, telegram_users: int) -> None:
        self.work = work
        self.env = env
        self.discord = FakeDiscord()
        self.telegram = FakeBotAPI()
        self.discord_count = discord_users
        self.telegram_count = telegram_users
        self.procs: list[subprocess.Popen[bytes]] = []
        self.asked: list[Message] = []
        self.telegram_sent: Counter[int] = Counter()

    async def __aenter__(self) -> Platforms:
        await self.discord.__aenter__()
        await self.telegram.__aenter__()
        self.discord_users = [self.discord.add_user(f"soak{n}") for n in range(self.discord_count)]
        self.discord.add_guild("Soak", self.discord_users)
        rate = {"rate_limit": "100000/minute"}
        discord_env = self.env("discord", {
            "discord__token": self.discord.token,
            "discord__api_base": self.discord.api_base,
            "discord__gateway_url": self.discord.gateway_url,
            "discord__guild_ready_timeout_s": "0.05",
            "discord__edit_interval_s": "0.5",
            "discord__reply_timeout_s": "60",
            **{f"discord__{k}": v for k, v in rate.items()},
        })  # fmt: skip
        telegram_env = self.env("telegram", {
            "telegram__token": self.telegram.token,
            "telegram__base_url": self.telegram.base_url,
            "telegram__private_interval_s": "0",
            "telegram__group_interval_s": "0",
            "telegram__poll_timeout_s": "5",
            "telegram__reply_timeout_s": "60",
            **{f"telegram__{k}": v for k, v in rate.items()},
        })  # fmt: skip
        for name, env in (("discord", discord_env), ("telegram", telegram_env)):
            log = (self.work / f"{name}.log").open("wb")
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "bot.cli", "adapter", name],
                    env=env,
                    stdout=log,
                    stderr=log,
                )
            )
        await self.discord.wait_for(lambda: self.discord.identifies >= 1, READY_TIMEOUT_S)
        await self.telegram.wait_for(
            lambda: any(name == "getUpdates" for name, _ in self.telegram.calls), READY_TIMEOUT_S
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                await asyncio.to_thread(proc.wait, 60)
            except subprocess.TimeoutExpired:
                proc.kill()
        with contextlib.suppress(Exception):
            await self.telegram.__aexit__(exc_type, exc, tb)
        with contextlib.suppress(Exception):
            await self.discord.__aexit__(exc_type, exc, tb)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    # -- one request each ----------------------------------------------------------------------

    async def ask_discord(self, n: int, text: str) -> tuple[str, float, tuple[str, str]]:
        """A DM from Discord user ``n``: (outcome, latency in s, its (platform, user))."""
        user: User = self.discord_users[n % len(self.discord_users)]
        start = time.perf_counter()
        message = await self.discord.dm(user, text)
        self.asked.append(message)
        await self.discord.wait_for(lambda: bool(self.discord.replies_to(message)), REPLY_TIMEOUT_S)
        took = time.perf_counter() - start
        reply = self.discord.replies_to(message)[0]
        return ("busy" if is_busy(reply.text) else "done"), took, ("discord", str(user.id))

    async def ask_telegram(self, n: int, text: str) -> tuple[str, float, tuple[str, str]]:
        """A private message from Telegram user ``n``: (outcome, latency in s, (platform, user))."""
        user_id = TELEGRAM_FIRST_ID + n
        user, chat = TelegramUser(user_id, f"Soak {n}", f"soak{n}"), Chat(user_id)
        before = len(self.telegram.messages_in(user_id))
        start = time.perf_counter()
        self.telegram.send_text(chat, user, text)
        self.telegram_sent[user_id] += 1
        await self.telegram.wait_for(
            lambda: len(self.telegram.messages_in(user_id)) > before, REPLY_TIMEOUT_S
        )
        took = time.perf_counter() - start
        reply = self.telegram.messages_in(user_id)[before]
        return (
            ("busy" if is_busy(reply.text) else "done"),
            took,
            ("telegram", f"telegram:{user_id}"),
        )

    def duplicated(self) -> int:
        """Requests answered by more than one bot message (no reply here is long enough to be
        split), on both platforms."""
        discord = sum(1 for m in self.asked if len(self.discord.replies_to(m)) > 1)
        telegram = sum(
            max(0, len(self.telegram.messages_in(uid)) - sent)
            for uid, sent in self.telegram_sent.items()
        )
        return discord + telegram
