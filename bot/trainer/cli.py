"""``parley trainer`` (the service) and ``parley retrain`` (ask it for a job and follow it)."""

from __future__ import annotations

import asyncio
import getpass
import sys
import uuid

import click

from bot import systemd
from bot.settings import Settings
from bot.trainer.client import TrainerClient, now_ms
from bot.trainer.progress import describe
from bot.wire import JobUpdate, TrainerReply, TrainerRequest

FIRST_ANSWER_TIMEOUT_S = 30.0
IDLE_TIMEOUT_S = 3600.0
"""A job reports at least every ``learning.progress_interval_s`` while it trains; an hour of
silence means the trainer service is gone."""


@click.command("trainer")
@click.pass_obj
def trainer_command(settings: Settings) -> None:
    """Run the trainer service: archive the conversation log, apply /forget, /optout and
    feedback to the archive, and run /retrain jobs (needs torch only in the job's child)."""
    from bot.cli import run_async
    from bot.redis import connect
    from bot.runtime import find_redis_url, stop_event_on_signals
    from bot.trainer.service import TrainerService

    async def main() -> None:
        stop, ready = stop_event_on_signals(), asyncio.Event()
        async with systemd.supervised(ready, stop, name="trainer"):
            redis = await connect(find_redis_url(settings))
            try:
                await TrainerService(settings, redis).run(stop, ready=ready)
            finally:
                await redis.aclose()

    run_async(main())


@click.command("retrain")
@click.option("--from-scratch", is_flag=True, help="Fresh weights instead of the live model's.")
@click.option("--no-wait", is_flag=True, help="Send the request and exit.")
@click.pass_obj
def retrain_command(settings: Settings, from_scratch: bool, no_wait: bool) -> None:
    """Ask the trainer service to retrain from the archive, and print its progress.

    Exit status 0 when the job ended (published, or the live model was kept because the new
    one was not better), 1 when it failed or no trainer answered.
    """
    from bot.cli import run_async
    from bot.redis import connect
    from bot.runtime import find_redis_url

    request = TrainerRequest(
        id=f"cli-{uuid.uuid4().hex[:12]}",
        command="retrain",
        platform="cli",
        user=getpass.getuser(),
        from_scratch=from_scratch,
        created_ms=now_ms(),
    )

    async def main() -> int:
        redis = await connect(find_redis_url(settings))
        try:
            client = TrainerClient(redis)
            await client.send(request)
            if no_wait:
                click.echo(f"sent retrain request {request.id}")
                return 0
            last: TrainerReply | JobUpdate | None = None
            answers = client.answers(
                request.id, first_timeout_s=FIRST_ANSWER_TIMEOUT_S, idle_timeout_s=IDLE_TIMEOUT_S
            )
            async for answer in answers:
                last = answer
                click.echo(describe(answer))
            if last is None:
                click.echo("no trainer service answered; is `parley trainer` running?", err=True)
                return 1
            if isinstance(last, JobUpdate) and not last.final:
                click.echo("the trainer service went silent during the job", err=True)
                return 1
            ok = isinstance(last, JobUpdate) and last.status in ("published", "kept")
            return 0 if ok else 1
        finally:
            await redis.aclose()

    sys.exit(run_async(main()))
