"""A streamed reply only ever shows the beginning of the reply it ends with (real Redis, a real
engine worker, the real web adapter, the official ``openai`` client).

The engine finishes a reply as its generated text cut at the first stop string and cleaned
(``clean_text``: runs of spaces become one, lines are stripped …). Its deltas carried the raw
text, so a reply that began with a space or held a doubled one streamed text that its final
answer did not begin with. A stream cannot take text back: the OpenAI API ended such a reply
with an error (``reply_replaced``) although the engine had answered it and logged the
exchange — which ``bench/soak.py`` counted as one request lost (its user saw an error) and
one duplicated (a logged exchange that no user saw), in equal numbers, in its past-capacity
run, the one whose replies are long enough to stream.

The model here is a tiny seeded GRU that never ends a turn and favours spaces, so raw replies
begin with spaces and double them (the test checks that they do, through the scheduler, so it
cannot pass without exercising the case); every token is streamed (``stream_interval_ms=0``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest
import redis.asyncio as aioredis
import torch

from adapters.web.openai_api import key_scope
from bot import keys, wire
from bot.queue import Delivery, RequestConsumer
from bot.settings import EngineSettings, RedisSettings, SamplingSettings, Settings, WebSettings
from bot.wire import ChatRequest, Sampling
from engine.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from engine.models import build_model
from engine.serve.scheduler import Scheduler
from engine.serve.work import Finished, Output, Progress, Work
from engine.tokenizer import train_char_tokenizer
from tests.integration.conftest_web import serve
from tests.unit.engine_fixtures import CONFIGS, CORPUS

pytestmark = pytest.mark.timeout(240)

API_KEY = "sk-streamed-text-key"
SEEDS = range(8)
MAX_TOKENS = 40
PROMPT = "hello there"


def spacey_checkpoint(directory: Path) -> Checkpoint:
    """A tiny seeded GRU that never samples end-of-turn and samples a space about every
    third character."""
    torch.manual_seed(0)
    tokenizer = train_char_tokenizer(CORPUS)
    model = build_model(CONFIGS["gru"].with_vocab(tokenizer.vocab_size))
    with torch.no_grad():
        model.lm_head.bias[tokenizer.eot_id] = -1e4  # type: ignore[index]
        (space,) = tokenizer.encode(" ")
        model.lm_head.bias[space] = 4.0  # type: ignore[index]
    path = save_checkpoint(directory, model, tokenizer, preset="spacey", metrics={}, provenance={})
    return load_checkpoint(path, device="cpu")


def sampling(seed: int) -> Sampling:
    return Sampling(temperature=1.0, seed=seed, max_new_tokens=MAX_TOKENS)


def raw_streams(ckpt: Checkpoint, settings: Settings) -> dict[int, tuple[str, str]]:
    """Per seed, what the scheduler reports: (its progress text joined, its final reply)."""
    scheduler = Scheduler(ckpt, settings.engine, settings.sampling, ckpt.model.device)
    for seed in SEEDS:
        request = ChatRequest(
            id=f"raw-{seed}", conversation=f"raw{seed}", reply_to="x", text=PROMPT,
            sampling=sampling(seed), history=(),
        )  # fmt: skip
        scheduler.submit(Work(Delivery(0, f"0-{seed + 1}", request), request, ()))
    outputs: list[Output] = []
    while sum(isinstance(o, Finished) for o in outputs) < len(SEEDS):
        outputs.extend(scheduler.step_once())
    streams = {
        int(o.work.request.id.split("-")[1]): o.reply.text
        for o in outputs
        if isinstance(o, Finished)
    }
    return {
        seed: ("".join(o.text for o in outputs if isinstance(o, Progress)
                       and o.work.request.id == f"raw-{seed}"), final)
        for seed, final in streams.items()
    }  # fmt: skip


@contextlib.asynccontextmanager
async def engine(
    redis: aioredis.Redis, settings: Settings, ckpt: Checkpoint
) -> AsyncIterator[None]:
    from engine.serve.worker import EngineWorker

    scheduler = Scheduler(ckpt, settings.engine, settings.sampling, ckpt.model.device)
    consumer = RequestConsumer(redis, settings.redis, consumer="streamed-text")
    worker = EngineWorker(settings, redis, consumer, scheduler, "streamed-text")
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


async def logged_replies(redis: aioredis.Redis) -> dict[str, list[str]]:
    """The engine's logged replies per user."""
    found: dict[str, list[str]] = {}
    for _id, fields in await redis.xrange(keys.LOG_STREAM):
        exchange = wire.decode_exchange(fields[keys.FIELD.encode()])
        found.setdefault(exchange.user, []).append(exchange.reply)
    return found


async def test_api_streams_only_the_beginning_of_the_final_reply(
    redis: aioredis.Redis, redis_settings: RedisSettings, tmp_path: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        redis=redis_settings,
        engine=EngineSettings(read_block_ms=10, stream_interval_ms=0, heartbeat_s=0.2),
        sampling=SamplingSettings(max_new_tokens=MAX_TOKENS),
        web=WebSettings(api_keys=[API_KEY], rate_limit=None, global_rate_limit=None),
    )
    ckpt = spacey_checkpoint(tmp_path / "spacey")
    raw = raw_streams(ckpt, settings)
    # The case is exercised: raw progress that the final (cleaned) reply does not begin with.
    assert any(not final.startswith(streamed) for streamed, final in raw.values()), raw

    async with (
        engine(redis, settings, ckpt),
        serve(settings, redis) as url,
        openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0) as api,
    ):

        async def ask(seed: int) -> tuple[list[str], str | None]:
            """Streamed content pieces and the finish reason of one seeded completion."""
            pieces: list[str] = []
            finish = None
            stream = await api.chat.completions.create(
                model="parley",
                messages=[{"role": "user", "content": PROMPT}],
                stream=True,
                temperature=1.0,
                seed=seed,
                max_tokens=MAX_TOKENS,
                user=f"streamed{seed}",
            )
            async for chunk in stream:  # an error event in the stream raises APIError
                if chunk.choices and chunk.choices[0].delta.content:
                    pieces.append(chunk.choices[0].delta.content)
                if chunk.choices and chunk.choices[0].finish_reason is not None:
                    finish = chunk.choices[0].finish_reason
            return pieces, finish

        answers = dict(zip(SEEDS, await asyncio.gather(*(ask(s) for s in SEEDS)), strict=True))
        logged = await logged_replies(redis)

    scope = key_scope(API_KEY)
    for seed, (pieces, finish) in answers.items():
        final = raw[seed][1]
        assert finish == "length", (seed, pieces)
        assert len(pieces) > 1, (seed, pieces)  # it did stream
        assert "".join(pieces) == final, (seed, pieces, final)
        assert logged[f"api:{scope}:streamed{seed}"] == [final]  # the answer the user saw
