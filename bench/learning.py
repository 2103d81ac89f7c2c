"""Does the learning loop learn? One run through the real control path.

    python -m bench.learning [--budget-s 180] [--quick]

On a fresh data directory with an embedded Redis: an engine serves the starter model, the
trainer service runs, and the English part of the ``chatterbot-corpus`` package (a domain the
starter never saw: AI, computers, history, trivia …) is split by conversation into a part fed
in and a held-out part. The fed part goes in as logged exchanges (each corpus line answered by
the next, in a chat of its own, with the reply marked 👍 by its user, as a community rating
its bot's answers), and a tenth of its users first send ``/optout``, and another tenth
``/optout`` after their messages were archived. Then an admin's ``/retrain`` goes through
:class:`bot.commands.Commands` to the trainer service, which trains (warm start from the
starter, on the archive plus the chitchat corpus with the default settings, so the archive is
repeated up to half the training text, for the fixed budget), gates and publishes; the
running engine swaps. ``--quick`` is a smoke run (a few conversations, no chitchat corpus,
5 steps) whose figures mean nothing and are not saved.

Printed (one JSON object) and saved as ``bench/results/learning-cpu.json``:

- ``new_domain_loss_drop``: the held-out chatterbot loss (nats/token), starter vs the new
  version, as a fraction of the starter's (target ≥ 0.20);
- ``chitchat_loss_rise``: the same on the chitchat corpus's held-out split (the split every
  run uses, never trained on), as a fraction (target ≤ 0.05);
- ``retrain_to_serving_s``: from sending ``/retrain`` to the first reply from the new version
  (``null`` when the gate did not publish it; the losses are then the kept checkpoint's);
- ``optout_messages_in_dataset``: messages of opted-out users in the dataset the job trained
  on (its exported archive; target 0).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

# `python bench/X.py` puts bench/ first on sys.path; the repository root belongs there, so
# `bench`, `bot` and `engine` import as they do under `python -m bench.X`.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import torch
import yaml

from bench.report import save_result
from bot import keys, wire
from bot.commands import Caller, Commands
from bot.embedded import EmbeddedRedis
from bot.queue import ParleyClient
from bot.redis import connect
from bot.registry import ModelRegistry
from bot.settings import EngineSettings, LearningSettings, Settings
from bot.trainer.client import now_ms
from bot.trainer.jobs import ARCHIVE_EXPORT
from bot.trainer.service import TrainerService
from bot.wire import ChatRequest, Done, Exchange, Sampling
from engine import service as engine_service
from engine.checkpoint import load_checkpoint
from engine.data import Conversation, Message, format_conversations, read_jsonl
from engine.train.data import encode_split, load_texts
from engine.train.evaluate import evaluate_loss

log = logging.getLogger("bench.learning")

ADAPTER = "bench-learning"
HELD_OUT = 0.2
SETTINGS_SHOWN = {"corpora", "archive_share", "good_reply_weight", "bot_replies", "warm_start"}
OPTED_OUT_SHARE = 0.1


def corpus_conversations() -> list[list[str]]:
    import chatterbot_corpus  # the package's data files; no code of it runs

    root = Path(chatterbot_corpus.__file__).parent / "data" / "english"
    found: list[list[str]] = []
    for path in sorted(glob.glob(str(root / "*.yml"))):
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
        for lines in data.get("conversations") or []:
            texts = [str(x).strip() for x in lines if str(x).strip()]
            if len(texts) >= 2:
                found.append(texts)
    return found


def held_out(texts: list[str]) -> bool:
    digest = hashlib.blake2b("\x00".join(texts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < HELD_OUT


def as_text(conversations: list[list[str]]) -> list[str]:
    convs = [
        Conversation(
            f"held:{i}",
            tuple(Message("a" if j % 2 == 0 else "b", t) for j, t in enumerate(c)),
            "chatterbot",
        )
        for i, c in enumerate(conversations)
    ]
    return format_conversations(convs, include_bot=True, min_turns=2)


def loss(path: Path, texts: list[str], cache: Path) -> float:
    ckpt = load_checkpoint(path)
    return evaluate_loss(ckpt.model, encode_split(ckpt.tokenizer, texts, cache)).loss


def settings_for(data_dir: Path, url: str, budget_s: float, quick: bool) -> Settings:
    return Settings(
        data_dir=data_dir,
        redis={"url": url},  # type: ignore[arg-type]
        engine=EngineSettings(dtype="float32", torch_threads=1, read_block_ms=20),
        learning=LearningSettings(
            corpora=[] if quick else ["chitchat"],
            budget_s=budget_s,
            max_steps=5 if quick else None,
            progress_interval_s=10.0,
        ),
    )


@contextlib.asynccontextmanager
async def system(settings: Settings) -> AsyncIterator[tuple[Commands, ParleyClient]]:
    redis = await connect(settings.redis.url or "")
    stop, ready = asyncio.Event(), asyncio.Event()
    engine = asyncio.create_task(engine_service.serve(settings, redis, stop, ready=ready))
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({engine, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if engine.done():
        engine.result()  # the engine's start-up error
    trainer = TrainerService(settings, redis)
    trainer_task = asyncio.create_task(trainer.run(stop))
    try:
        async with ParleyClient(redis, settings.redis, ADAPTER) as client:
            yield Commands(client, redis, ModelRegistry(settings.models_dir)), client
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(engine, trainer_task), 120)
        await redis.aclose()


def caller(user: str, request_id: str, admin: bool = False) -> Caller:
    return Caller("discord", user, f"discord:{user}:{user}", request_id, ADAPTER, admin)


async def feed(commands: Commands, fed: list[list[str]]) -> set[str]:
    """Log the fed conversations as exchanges with 👍; returns the users who opted out."""
    redis = commands.redis
    opted_out: set[str] = set()
    late: list[str] = []
    base_ms = now_ms() - 10 * 24 * 3600 * 1000
    for i, lines in enumerate(fed):
        user = f"user{i}"
        if i % 10 == 0:  # opts out before saying anything
            await commands.run("optout", "", caller(user, f"optout-{i}"))
            opted_out.add(user)
        elif i % 10 == 1:
            late.append(user)
        for j in range(0, len(lines) - 1, 2):
            exchange = Exchange(
                request_id=f"fed-{i}-{j}",
                conversation=f"discord:{user}:{user}",
                platform="discord",
                user=user,
                prompt=lines[j],
                reply=lines[j + 1],
                model_version="starter",
                created_ms=base_ms + i * 2 * 3600 * 1000 + j * 1000,
            )
            await redis.xadd(keys.LOG_STREAM, {keys.FIELD: wire.encode(exchange)})
            await commands.feedback(caller(user, f"fb-{i}-{j}"), exchange.request_id, 1)
    while await redis.xlen(keys.LOG_STREAM):  # a benchmark may poll: until all is archived
        await asyncio.sleep(0.5)
    for user in late:  # opts out after being archived: their rows must leave the dataset
        await commands.run("optout", "", caller(user, f"late-{user}"))
        opted_out.add(user)
    return opted_out


async def serving(client: ParleyClient, version: str) -> None:
    """Chat until a reply comes from ``version``."""
    n = 0
    while True:
        request = ChatRequest(
            id=f"probe-{n}",
            conversation="discord:probe:probe",
            reply_to=ADAPTER,
            text="what is AI?",
            user="probe",
            platform="discord",
            sampling=Sampling(max_new_tokens=4, seed=1),
            created_ms=now_ms(),
        )
        final = await client.reply(request, timeout_s=120)
        if isinstance(final, Done) and final.model_version == version:
            return
        n += 1


async def run(budget_s: float, quick: bool) -> dict[str, Any]:
    conversations = corpus_conversations()
    fed = [c for c in conversations if not held_out(c)]
    kept = [c for c in conversations if held_out(c)]
    if quick:
        fed, kept = fed[:40], kept[:10]
    with tempfile.TemporaryDirectory(prefix="parley-bench-learning-") as tmp:
        data_dir = Path(tmp)
        cache = data_dir / "cache"
        with EmbeddedRedis(data_dir / "redis") as url:
            settings = settings_for(data_dir, url, budget_s, quick)
            learning = settings.learning
            starter = ModelRegistry(settings.models_dir).live()
            assert starter is not None and starter.builtin, "the starter model is missing"
            new_domain = as_text(kept)
            chitchat = load_texts(["chitchat"], val_fraction=0.05, split_seed=0).val
            if quick:
                chitchat = chitchat[:20]
            log.info(
                "scoring the starter on %d + %d held-out texts", len(new_domain), len(chitchat)
            )
            before = (loss(starter.path, new_domain, cache), loss(starter.path, chitchat, cache))
            async with system(settings) as (commands, client):
                log.info("feeding %d conversations as logged exchanges", len(fed))
                opted_out = await feed(commands, fed)
                log.info("archived; /retrain")
                started = time.perf_counter()
                answer = await commands.answer("retrain", "", caller("admin", "retrain-1", True))
                updates = []
                async for update in answer.updates or _nothing():
                    log.info("%s", update.splitlines()[0])
                    updates.append(update)
                registry = ModelRegistry(settings.models_dir)
                live = registry.live()
                published = live is not None and not live.builtin
                if published:
                    assert live is not None
                    await serving(client, live.version)
                serving_s = time.perf_counter() - started
                run_dir = next((data_dir / "runs").iterdir())
            dataset = read_jsonl(run_dir / ARCHIVE_EXPORT)
            leaked = sum(1 for c in dataset for m in c.messages if m.author in opted_out)
            after_path = live.path if published and live else run_dir / "model"
            after = (loss(after_path, new_domain, cache), loss(after_path, chitchat, cache))
    return {
        "new_domain_loss_drop": round((before[0] - after[0]) / before[0], 4),
        "chitchat_loss_rise": round((after[1] - before[1]) / before[1], 4),
        "retrain_to_serving_s": round(serving_s, 1) if published else None,
        "optout_messages_in_dataset": leaked,
        "published": live.version if published and live else None,
        "result": updates[-1] if updates else answer.text,
        "new_domain_loss": {"before": round(before[0], 4), "after": round(after[0], 4)},
        "chitchat_loss": {"before": round(before[1], 4), "after": round(after[1], 4)},
        "conversations": {"fed": len(fed), "held_out": len(kept), "exported": len(dataset)},
        "opted_out_users": len(opted_out),
        "budget_s": budget_s,
        "settings": learning.model_dump(include=SETTINGS_SHOWN),
        "quick": quick,
    }


async def _nothing() -> AsyncIterator[str]:
    for text in ():
        yield text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget-s", type=float, default=180.0, help="Retrain budget.")
    parser.add_argument("--quick", action="store_true", help="A smoke run (5 steps).")
    parser.add_argument("--threads", type=int, default=None, help="Torch threads here.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("engine").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    figures = asyncio.run(run(args.budget_s, args.quick))
    if not args.quick:
        save_result("learning-cpu", figures)
    json.dump(figures, sys.stdout, indent=2, ensure_ascii=False)
    print()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
