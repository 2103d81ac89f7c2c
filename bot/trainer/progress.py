"""Retrain progress as text for people: one function every surface shares (chat replies,
the edited progress message on Discord and Telegram, ``parley retrain``)."""

from __future__ import annotations

from bot.wire import JobUpdate, TrainerReply


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def describe(answer: TrainerReply | JobUpdate) -> str:
    """What an answer from the trainer says, in a line or a few."""
    if isinstance(answer, TrainerReply):
        return answer.message
    u = answer
    if u.status == "queued":
        return f"Retrain {u.job_id} starting: {u.message}."
    if u.status == "running":
        parts = [f"Retraining ({u.message})" if u.message else "Retraining"]
        if u.step:
            parts.append(f"step {u.step}" + (f" of {u.steps}" if u.steps else ""))
        if u.loss is not None:
            parts.append(f"loss {u.loss:.3f}")
        if u.val_loss is not None:
            parts.append(f"held-out loss {u.val_loss:.3f}")
        if u.eta_s is not None:
            parts.append(f"about {_duration(u.eta_s)} left")
        parts.append(f"{_duration(u.elapsed_s)} so far")
        return ", ".join(parts) + "."
    if u.status == "failed":
        return f"Retrain {u.job_id} failed: {u.message}."
    head = "Published" if u.status == "published" else "Not published"
    lines = [f"{head}: {u.message}."]
    for prompt, reply in u.samples:
        lines.append(f"> {prompt}\n{reply}")
    if u.version:
        lines.append(f"The loss curve of {u.version} is on the dashboard.")
    return "\n".join(lines)
