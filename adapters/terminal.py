"""``parley chat``: a terminal conversation through the queue, like any other adapter.

Interactive (a terminal on stdin): a prompt, replies streamed as they are generated, and
``/reset`` to start over. Scripted (stdin is a pipe or file): one message per input line, one
reply per output line, exit at end of input — the exit status is 1 if any reply failed.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import sys
import time
import uuid
from collections.abc import AsyncIterator

from bot.queue import ParleyClient
from bot.redis import connect
from bot.runtime import find_redis_url
from bot.settings import Settings
from bot.wire import ChatRequest, ControlRequest, Delta, Done, Error, ReplyEvent

PROMPT = "you> "


async def _lines(prompt: str | None) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    while True:
        if prompt:
            sys.stdout.write(prompt)
            sys.stdout.flush()
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        yield line.rstrip("\n")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _request(text: str, conversation: str, user: str, adapter_id: str) -> ChatRequest:
    return ChatRequest(
        id=uuid.uuid4().hex,
        conversation=conversation,
        reply_to=adapter_id,
        text=text,
        user=user,
        platform="terminal",
        created_ms=int(time.time() * 1000),
    )


async def _interactive_reply(events: AsyncIterator[ReplyEvent]) -> None:
    sys.stdout.write("bot> ")
    async for event in events:
        if isinstance(event, Delta):
            sys.stdout.write(event.text)
        elif isinstance(event, Error):
            sys.stdout.write(f"[{event.code}] {event.message}")
        sys.stdout.flush()
    sys.stdout.write("\n")


async def _scripted_reply(events: AsyncIterator[ReplyEvent]) -> bool:
    final: ReplyEvent | None = None
    async for event in events:
        final = event
    if isinstance(final, Done):
        print(_one_line(final.text), flush=True)
        return True
    message = final.message if isinstance(final, Error) else "no reply"
    print(f"error: {_one_line(message)}", flush=True)
    return False


async def run_chat(settings: Settings, *, conversation: str | None, timeout_s: float) -> None:
    if settings.log_level != "DEBUG":  # the conversation owns the terminal; keep logs quiet
        logging.getLogger().setLevel(logging.WARNING)
    redis = await connect(find_redis_url(settings))
    user = getpass.getuser()
    conversation_key = f"terminal:{conversation or user}:{user}"
    adapter_id = f"terminal-{uuid.uuid4().hex[:12]}"
    interactive = sys.stdin.isatty()
    ok = True
    try:
        async with ParleyClient(redis, settings.redis, adapter_id) as client:
            async for text in _lines(PROMPT if interactive else None):
                if not text.strip():
                    continue
                if interactive and text.strip() == "/reset":
                    control = ControlRequest(
                        id=uuid.uuid4().hex,
                        conversation=conversation_key,
                        reply_to=adapter_id,
                        command="reset",
                        user=user,
                    )
                    await _interactive_reply(client.stream(control, timeout_s=timeout_s))
                    continue
                request = _request(text, conversation_key, user, adapter_id)
                events = client.stream(request, timeout_s=timeout_s)
                if interactive:
                    await _interactive_reply(events)
                else:
                    ok = await _scripted_reply(events) and ok
    finally:
        await redis.aclose()
    if not ok:
        sys.exit(1)
