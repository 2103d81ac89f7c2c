"""Retrain jobs: one at a time, each in a child process, reported to everyone who asked.

A ``retrain`` request becomes a job: the archive is exported (consent applied) into a fresh
run directory, a :class:`~bot.trainer.spec.RetrainSpec` is written beside it, and
``python -m engine.train.retrain`` trains in a child process (so a GPU's memory is freed when
it exits, and a crash cannot take the trainer service down). The child's progress lines are
forwarded to every requester's answer stream at most every ``progress_interval_s`` and kept
in :data:`bot.keys.TRAIN_PROGRESS` for the dashboard. A ``retrain`` that arrives while a job
runs joins it: it gets the running job's progress and its result.

When the child says the new model beat the live one on the held-out split, this process adds
it to the registry, moves the live pointer and announces it (engines hot-swap); otherwise, or
when the child fails, the live model keeps serving and the requesters are told why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from redis.exceptions import RedisError

from bot import keys, wire
from bot.archive import AsyncArchive, ExportStats
from bot.errors import ParleyError, QueueError, WireError
from bot.redis import Redis
from bot.registry import ModelRegistry
from bot.safety import training_exclusion
from bot.settings import Settings
from bot.store import ConversationStore
from bot.trainer.spec import MODEL_DIR, RetrainSpec, write_spec
from bot.wire import JobUpdate, TrainerReply, TrainerRequest

log = logging.getLogger(__name__)

REPLY_TTL_S = 24 * 3600
LOCK_TTL_S = 120
LOCK_RENEW_S = 30.0
ARCHIVE_EXPORT = "archive.jsonl"
CHILD_LOG = "train.log"


async def answer(redis: Redis, request_id: str, message: TrainerReply | JobUpdate) -> None:
    """Append one answer to ``request_id``'s answer stream (which expires after a day)."""
    stream = keys.trainer_replies(request_id)
    try:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.xadd(stream, {keys.FIELD: wire.encode(message)})
            pipe.expire(stream, REPLY_TTL_S)
            await pipe.execute()
    except (RedisError, OSError) as e:
        raise QueueError(f"cannot answer request {request_id}: {e}") from e


@dataclass
class Job:
    id: str
    run_dir: Path
    watchers: list[str]
    last: JobUpdate
    export: ExportStats
    live_version: str
    sent_s: float = -math.inf
    process: asyncio.subprocess.Process | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class RetrainJobs:
    """Starts and supervises retrain jobs for one trainer service."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        archive: AsyncArchive,
        store: ConversationStore,
        registry: ModelRegistry,
        *,
        python: str = sys.executable,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.archive = archive
        self.store = store
        self.registry = registry
        self.python = python
        self.job: Job | None = None

    async def request(self, request: TrainerRequest) -> None:
        """Start a job for ``request``, or let it join the running one."""
        job = self.job
        if job is not None:
            job.watchers.append(request.id)
            joined = msgspec.structs.replace(
                job.last, request_id=request.id, message=f"already running: {job.last.message}"
            )
            await answer(self.redis, request.id, joined)
            return
        if not await self.redis.set(keys.TRAIN_LOCK, request.id, nx=True, ex=LOCK_TTL_S):
            holder = await self.redis.get(keys.TRAIN_LOCK)
            name = holder.decode(errors="replace") if isinstance(holder, bytes) else holder
            await self._refuse(request, f"another trainer service is running job {name}")
            return
        try:
            job = await self._prepare(request)
        except ParleyError as e:
            await self.redis.delete(keys.TRAIN_LOCK)
            await self._refuse(request, f"the retrain could not start: {e}")
            return
        self.job = job
        await self._publish_progress(job, job.last, force=True)
        job.task = asyncio.create_task(self._supervise(job), name=f"retrain-{job.id}")

    async def _refuse(self, request: TrainerRequest, message: str) -> None:
        log.warning("retrain %s refused: %s", request.id, message)
        update = JobUpdate(
            job_id=request.id,
            request_id=request.id,
            status="failed",
            message=message,
            final=True,
            time=time.time(),
        )
        await answer(self.redis, request.id, update)

    async def _prepare(self, request: TrainerRequest) -> Job:
        """Export the archive into a fresh run directory and write the child's spec."""
        learning = self.settings.learning
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = self.settings.data_dir / "runs" / f"retrain-{stamp}-{_slug(request.id)}"
        run_dir.mkdir(parents=True, exist_ok=False)
        opted_out = await self.store.opted_out_users()
        export_path = run_dir / ARCHIVE_EXPORT
        stats = await self.archive.call(
            lambda a: a.export(
                export_path,
                bot_replies=learning.bot_replies,
                good_reply_weight=learning.good_reply_weight,
                exclude_users=opted_out,
                exclude_text=training_exclusion(self.settings.safety),
            )
        )
        if not stats.conversations and not learning.corpora:
            raise ParleyError("the archive holds no conversations and no corpora are set")
        live = await asyncio.to_thread(self.registry.live)
        if live is not None:  # checked (a damaged one is refused), and local if from a URL
            live = await asyncio.to_thread(self.registry.get, live.version)
        spec = RetrainSpec(
            job_id=request.id,
            run_dir=str(run_dir),
            archive=str(export_path) if stats.conversations else None,
            corpora=tuple(learning.corpora),
            archive_share=learning.archive_share,
            opted_out=tuple(opted_out),
            live_model=str(live.path) if live else None,
            live_version=live.version if live else "",
            warm_start=learning.warm_start and not request.from_scratch,
            preset=self.settings.train.preset,
            budget_s=learning.budget_s,
            max_steps=learning.max_steps,
            seed=self.settings.train.seed,
            val_fraction=learning.val_fraction,
            min_improvement=learning.min_improvement,
            max_corpora_rise=learning.max_corpora_rise,
            cache_dir=str(self.settings.data_dir / "cache"),
            report_every_s=min(2.0, learning.progress_interval_s),
        )
        write_spec(spec)
        queued = JobUpdate(
            job_id=request.id,
            request_id=request.id,
            status="queued",
            live_version=spec.live_version,
            message=(
                f"retraining on {stats.messages} archived messages in {stats.conversations} "
                f"conversations"
                + (f" plus {', '.join(learning.corpora)}" if learning.corpora else "")
            ),
            time=time.time(),
        )
        return Job(request.id, run_dir, [request.id], queued, stats, spec.live_version)

    async def _supervise(self, job: Job) -> None:
        final: JobUpdate | None = None
        renewing = asyncio.create_task(self._renew_lock(job))
        try:
            final = await self._run_child(job)
            if final.status == "published":
                final = await self._publish(job, final)
            elif final.status == "kept":
                where = job.run_dir / MODEL_DIR
                final = msgspec.structs.replace(
                    final, message=f"{final.message}; the new model and its loss curve: {where}"
                )
        except asyncio.CancelledError:
            final = self._failed(job, "the trainer service stopped during the job")
            raise
        except Exception as e:  # the job fails, the service goes on
            log.exception("retrain job %s failed", job.id)
            final = self._failed(job, f"{type(e).__name__}: {e}")
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
            self.job = None
            with contextlib.suppress(RedisError, OSError):
                await self.redis.delete(keys.TRAIN_LOCK)
            if final is not None:
                with contextlib.suppress(QueueError, RedisError, OSError):
                    await self._publish_progress(job, final, force=True)

    async def _run_child(self, job: Job) -> JobUpdate:
        log_path = job.run_dir / CHILD_LOG
        with log_path.open("wb") as log_file:
            job.process = await asyncio.create_subprocess_exec(
                self.python,
                "-m",
                "engine.train.retrain",
                str(job.run_dir / "job.json"),
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
            )
            assert job.process.stdout is not None
            verdict: JobUpdate | None = None
            async for line in job.process.stdout:
                try:
                    update = wire.decode_job_line(line)
                except WireError:
                    log.warning("job %s printed an unreadable line: %.200r", job.id, line)
                    continue
                if update.final:
                    verdict = update
                else:
                    await self._publish_progress(job, update)
            returncode = await job.process.wait()
        if verdict is None or returncode != 0:
            reason = _last_line(log_path) or f"exit status {returncode}"
            return self._failed(job, f"the training process failed: {reason}")
        return verdict

    async def _publish(self, job: Job, verdict: JobUpdate) -> JobUpdate:
        provenance = self._provenance(job)
        added = await asyncio.to_thread(self.registry.add, job.run_dir / MODEL_DIR, provenance)
        await asyncio.to_thread(self.registry.set_live, added.version)
        await self.registry.announce(self.redis, added.version)
        log.info("retrain %s published %s", job.id, added.version)
        return msgspec.structs.replace(
            verdict,
            version=added.version,
            message=f"{added.version} is live: {verdict.message}; engines are swapping now",
        )

    def _provenance(self, job: Job) -> dict[str, Any]:
        e = job.export

        def iso(ms: int | None) -> str | None:
            return (
                None if ms is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))
            )

        return {
            "job": job.id,
            "archive": {
                "messages": e.messages,
                "conversations": e.conversations,
                "first": iso(e.first_ms),
                "last": iso(e.last_ms),
                "platforms": list(e.platforms),
                "opted_out_users_excluded": e.opted_out_users,
            },
            "corpora": list(self.settings.learning.corpora),
            "warm_start_from": job.live_version if self.settings.learning.warm_start else None,
            "run_dir": str(job.run_dir),
        }

    def _failed(self, job: Job, reason: str) -> JobUpdate:
        live = job.live_version or "the live model"
        return JobUpdate(
            job_id=job.id,
            status="failed",
            live_version=job.live_version,
            message=f"{reason}; {live} keeps serving",
            final=True,
            time=time.time(),
        )

    async def _publish_progress(self, job: Job, update: JobUpdate, *, force: bool = False) -> None:
        """Keep ``update`` for the dashboard; send it to the requesters if it is time."""
        job.last = update
        await self.redis.set(keys.TRAIN_PROGRESS, wire.encode(update))
        now = time.monotonic()
        if (
            not (force or update.final)
            and now - job.sent_s < self.settings.learning.progress_interval_s
        ):
            return
        job.sent_s = now
        for watcher in list(job.watchers):
            await answer(self.redis, watcher, msgspec.structs.replace(update, request_id=watcher))

    async def _renew_lock(self, job: Job) -> None:
        while True:
            await asyncio.sleep(LOCK_RENEW_S)
            with contextlib.suppress(RedisError, OSError):
                await self.redis.set(keys.TRAIN_LOCK, job.id, ex=LOCK_TTL_S)

    async def close(self) -> None:
        """Stop a running job (its child is terminated; the requesters are told)."""
        job = self.job
        if job is None or job.task is None:
            return
        if job.process is not None and job.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                job.process.terminate()
        job.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await job.task


def _plus(corpora: list[str]) -> str:
    return f" plus {', '.join(corpora)}" if corpora else ""


def iso(ms: int | None) -> str | None:
    return None if ms is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def _slug(request_id: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in request_id)[-24:]


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][-300:] if lines else ""
