"""How good a model is: held-out loss in nats/token and bits/char, and how its replies read.

Bits per character (``total nats / ln 2 / characters``) is the number that compares a
character model with a BPE one: a BPE token covers ~3.6 characters, so its loss per token is
naturally higher. Loss alone cannot tell fluent nonsense from language, so we also sample
replies to fixed prompts (temperature 0.8, through the engine's own batch path, stopping at
``<|eot|>``) and measure ``word_validity`` (share of their words in the training text's
strict vocabulary, :mod:`engine.quality.words`), ``reply_chars`` (mean reply length) and
``distinct_2`` (share of distinct word bigrams: low means the model repeats itself).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from prometheus_client import CollectorRegistry
from torch import Tensor

from bot.errors import ModelError
from bot.queue import Delivery
from bot.settings import EngineSettings, SamplingSettings
from bot.wire import ChatRequest, Sampling, Turn
from engine.checkpoint import Checkpoint
from engine.data import distinct_n, word_validity
from engine.hardware import cpu_has_native_bf16
from engine.models import LanguageModel
from engine.serve.metrics import EngineMetrics
from engine.serve.replies import ReplyPicker
from engine.serve.scheduler import Scheduler
from engine.serve.work import Failed, Finished, Work
from engine.tokenizer import Tokenizer
from engine.train.data import TokenSplit, chars_per_token, eval_windows

PROMPTS: tuple[str, ...] = (
    "hi! how are you?",
    "what did you do this weekend?",
    "do you like music?",
    "what's your favorite food?",
    "any plans for tonight?",
    "i just got back from the gym",
    "have you seen any good movies lately?",
    "what do you do for work?",
    "i'm so tired today",
    "where would you like to travel?",
    "do you have any pets?",
    "what are you studying?",
)
"""The fixed prompts every evaluation samples replies to."""


@dataclass(frozen=True)
class LossReport:
    loss: float  # mean nats per predicted token
    bpc: float  # bits per character of the text those tokens encode
    tokens: int  # targets evaluated


@dataclass(frozen=True)
class EvalReport:
    val_loss: float
    val_bpc: float
    val_tokens: int
    word_validity: float
    distinct_2: float
    reply_chars: float
    samples: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------ precision


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` ("auto", "bf16", "fp32") on ``device``.

    "auto" is bf16 on CUDA, and on CPUs with native bf16 dot products (AVX512-BF16 / AMX),
    where oneDNN's bf16 matmuls run several times faster than fp32 ones; fp32 elsewhere.
    Weights, optimizer state and the loss stay fp32 either way.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_native_bf16() else None


def autocast(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ----------------------------------------------------------------------------------- loss


@torch.no_grad()
def evaluate_loss(
    model: LanguageModel,
    split: TokenSplit,
    *,
    batch_size: int = 32,
    max_windows: int | None = None,
    amp_dtype: torch.dtype | None = None,
) -> LossReport:
    """Loss over the split in windows of the model's ``block_size``, each from a fresh state.

    Without ``max_windows`` every token after the first is scored and bpc is exact; with it, a
    fixed subset is scored and bpc uses the split's average characters per token.
    """
    device = model.device
    tokens = torch.from_numpy(split.tokens)
    windows, tail = eval_windows(tokens, model.config.block_size, max_windows)
    was_training = model.training
    model.eval()
    total_nats, n_targets = 0.0, 0
    for batch in _batches(windows, tail, batch_size):
        batch = batch.to(device)
        with autocast(device, amp_dtype):
            logits, _ = model(batch[:, :-1])  # (B, T, V)
        nats = F.cross_entropy(
            logits.float().flatten(0, 1), batch[:, 1:].flatten(), reduction="sum"
        )
        total_nats += float(nats)
        n_targets += batch[:, 1:].numel()
    model.train(was_training)
    if n_targets == 0:
        raise ValueError("nothing to evaluate: the validation split is empty")
    covered_all = n_targets >= len(split) - 1
    n_chars = split.n_chars if covered_all else n_targets * chars_per_token(split)
    return LossReport(total_nats / n_targets, total_nats / math.log(2) / n_chars, n_targets)


def _batches(windows: Tensor, tail: Tensor | None, batch_size: int) -> Iterator[Tensor]:
    for start in range(0, windows.shape[0], batch_size):
        yield windows[start : start + batch_size]
    if tail is not None:
        yield tail


# ------------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class Ask:
    """One reply to sample: ``prompt`` after ``history`` (``(role, text)`` turns), seeded."""

    prompt: str
    history: tuple[tuple[str, str], ...] = ()
    seed: int = 0


def generate_replies(
    model: LanguageModel,
    tokenizer: Tokenizer,
    asks: Sequence[Ask],
    *,
    temperature: float = 0.8,
    max_new_tokens: int | None = None,
    picker: ReplyPicker | None = None,
    path: Path = Path("eval"),
) -> list[str]:
    """One reply per ask, in order, generated as one batch through the engine's own serving
    path (:class:`~engine.serve.scheduler.Scheduler`): the prompt layout, the batched prefill
    and decode, the banned special tokens and the reply's cleaning are the engine's. With
    ``picker``, in its reply mode (remembered replies come from the checkpoint at ``path``).

    ``max_new_tokens`` defaults to about 200 characters' worth (64 BPE tokens, 200 chars).
    A reply cut off there loses its last, possibly half-written, word
    (:func:`trim_cut_reply`): word validity must not punish a model for where the budget
    happened to end. The model runs in its own dtype, as the engine runs it.
    """
    if not asks:
        return []
    if max_new_tokens is None:
        max_new_tokens = _REPLY_TOKENS[tokenizer.kind]
    was_training = model.training
    replies: dict[str, str] = {}
    try:
        rows = min(len(asks), MAX_ROWS)
        if picker is not None and picker.mode == "hybrid":
            rows *= picker.settings.n
        scheduler = _scheduler(
            Checkpoint(model, tokenizer, model.config, "eval", {}, {}, path),
            rows, temperature, max_new_tokens, picker,
        )  # fmt: skip
        requests = [_request(i, ask, temperature, max_new_tokens) for i, ask in enumerate(asks)]
        for request in requests:
            turns = request.history or ()
            scheduler.submit(Work(Delivery(0, request.id, request), request, turns))
        while len(replies) < len(requests):
            for out in scheduler.step_once():
                if isinstance(out, Finished):
                    r = out.reply
                    text = r.text if r.finish_reason == "stop" else trim_cut_reply(r.text)
                    replies[out.work.request.id] = text
                elif isinstance(out, Failed):
                    raise ModelError(f"sampling a reply failed: {out.failure} {out.detail}")
    finally:
        model.train(was_training)  # serving put it in eval mode
    return [replies[r.id] for r in requests]


def sample_replies(
    model: LanguageModel,
    tokenizer: Tokenizer,
    prompt: str,
    *,
    n: int = 1,
    temperature: float = 0.8,
    max_new_tokens: int | None = None,
    seed: int = 0,
    history: Sequence[tuple[str, str]] = (),
) -> list[str]:
    """``n`` replies to one user message after ``history`` (:func:`generate_replies`); reply
    ``i`` is seeded from ``(seed, i)``, so it is the same whatever ``n`` is."""
    asks = [Ask(prompt, tuple(history), _row_seed(seed, i)) for i in range(n)]
    return generate_replies(
        model, tokenizer, asks, temperature=temperature, max_new_tokens=max_new_tokens
    )


_REPLY_TOKENS = {"bpe": 64, "char": 200}
MAX_ROWS = 64
"""Replies generated at once (more wait their turn, as they would in the engine)."""


def _row_seed(seed: int, row: int) -> int:
    return seed * 7919 + row


def _scheduler(
    checkpoint: Checkpoint,
    rows: int,
    temperature: float,
    max_new: int,
    replies: ReplyPicker | None,
) -> Scheduler:
    engine = EngineSettings(
        max_batch=rows,
        stream_interval_ms=_NO_STREAMING_MS,
        cuda_graphs=False,  # one batch: capturing would cost more than it saves
    )
    bounds = SamplingSettings(
        max_new_tokens=max_new,
        max_new_tokens_limit=max_new,
        max_temperature=max(temperature, 0.0),
    )
    metrics = EngineMetrics("eval", CollectorRegistry())  # not the process's /metrics
    device = checkpoint.model.device
    return Scheduler(checkpoint, engine, bounds, device, metrics=metrics, replies=replies)


_NO_STREAMING_MS = 10**9
"""Evaluation wants whole replies only: no progress outputs."""


def _request(i: int, ask: Ask, temperature: float, max_new: int) -> ChatRequest:
    sampling = Sampling(
        temperature=temperature,
        top_k=0,
        top_p=1.0,
        repetition_penalty=1.0,
        max_new_tokens=max_new,
        seed=ask.seed,
    )
    history = tuple(Turn(role, text) for role, text in ask.history)  # type: ignore[arg-type]
    return ChatRequest(
        id=f"eval-{i}",
        conversation=f"eval-{i}",
        reply_to="eval",
        text=ask.prompt,
        sampling=sampling,
        history=history,
    )


def trim_cut_reply(text: str) -> str:
    """A reply the token budget cut off, without its last (possibly half-written) word."""
    cut = max(text.rfind(" "), text.rfind("\n"))
    return text[:cut].rstrip() if cut > 0 else ""


def evaluate_samples(
    model: LanguageModel,
    tokenizer: Tokenizer,
    vocabulary: set[str],
    *,
    prompts: Sequence[str] = PROMPTS,
    per_prompt: int = 4,
    seed: int = 0,
) -> tuple[float, float, float, list[dict[str, str]]]:
    """(word_validity, distinct_2, reply_chars, one sample per prompt) over ``per_prompt``
    replies each."""
    asks = [
        Ask(prompt, seed=_row_seed(seed + i, row))
        for i, prompt in enumerate(prompts)
        for row in range(per_prompt)
    ]
    replies = generate_replies(model, tokenizer, asks)  # every prompt's replies in one batch
    shown = [
        {"prompt": prompt, "reply": replies[i * per_prompt]} for i, prompt in enumerate(prompts)
    ]
    reply_chars = sum(len(r) for r in replies) / len(replies) if replies else 0.0
    return word_validity(replies, vocabulary), distinct_n(replies, 2), reply_chars, shown


def evaluate_model(
    model: LanguageModel,
    tokenizer: Tokenizer,
    val: TokenSplit,
    vocabulary: set[str],
    *,
    amp_dtype: torch.dtype | None = None,
    seed: int = 0,
    samples_per_prompt: int = 4,
) -> EvalReport:
    """The full report ``parley eval`` prints and the trainer stores in metrics.json."""
    loss = evaluate_loss(model, val, amp_dtype=amp_dtype)
    validity, distinct, chars, samples = evaluate_samples(
        model, tokenizer, vocabulary, per_prompt=samples_per_prompt, seed=seed
    )
    return EvalReport(loss.loss, loss.bpc, loss.tokens, validity, distinct, chars, samples)
