"""Lua scripts run by SHA, loaded on demand.

redis-py's ``Script`` objects cost a ``SCRIPT EXISTS`` round trip on every pipeline that uses
them; these do not: they are called with EVALSHA and loaded only when Redis answers NOSCRIPT
(first use, a restarted server, ``SCRIPT FLUSH``). Every script here is safe to run twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoScriptError

from bot.redis import Redis

Call = tuple["LuaScript", Sequence[str], Sequence[Any]]
"""A script, its keys and its arguments."""


class LuaScript:
    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()

    async def load(self, redis: Redis) -> None:
        await redis.script_load(self.text)

    async def __call__(self, redis: Redis, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.load(redis)
            return await redis.evalsha(self.sha, len(keys), *keys, *args)


async def call_all(redis: Redis, calls: Sequence[Call]) -> list[Any]:
    """Run ``calls`` in one pipelined round trip (not a transaction); their results in order."""
    if not calls:
        return []
    try:
        return await _pipelined(redis, calls)
    except NoScriptError:
        for script in {id(c[0]): c[0] for c in calls}.values():
            await script.load(redis)
        return await _pipelined(redis, calls)


async def _pipelined(redis: Redis, calls: Sequence[Call]) -> list[Any]:
    async with redis.pipeline(transaction=False) as pipe:
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        return list(await pipe.execute())
