"""The peers of ``bench/peers.py``: Hugging Face ``transformers`` and CTranslate2 serving the
same exported weights as a plain server would — one static batch of whatever waits (up to
:data:`MAX_BATCH`), run to its end — and the request and timing records every side shares."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from bot.wire import Turn
from engine.checkpoint import Checkpoint

TEMPERATURE = 0.8
MAX_BATCH = 64


@dataclass(frozen=True)
class Request:
    history: tuple[Turn, ...]
    text: str
    prompt: list[int]
    """The ids of ``format_prompt(history, text)``: what every side is fed."""
    reply_tokens: int
    """The human reply's length in tokens, capped: where a ``data`` reply ends."""
    arrival_s: float = 0.0


@dataclass
class Trace:
    """One request as a side served it: when its tokens came back, and how many."""

    arrival_s: float
    times: list[float] = dataclasses.field(default_factory=list)
    tokens: int = 0


# ------------------------------------------------------------------------------- peers


class StaticBatcher(Protocol):
    """A peer: one static batch at a time; per row, the times its tokens came back."""

    name: str
    dtype: str

    def generate(
        self,
        prompts: Sequence[list[int]],
        limits: Sequence[int],
        eot: bool,
        clock: Callable[[], float],
    ) -> list[Trace]: ...


class TransformersSide:
    def __init__(self, path: Path, ckpt: Checkpoint, dtype: torch.dtype, device: str) -> None:
        from transformers import LlamaForCausalLM

        self.name = "transformers" + ("" if dtype == torch.float32 else "-bf16")
        self.dtype = str(dtype).removeprefix("torch.")
        self.model = LlamaForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
        self.model.to(device).eval()
        self.device = device
        tok = ckpt.tokenizer
        self.pad, self.eot, self.specials = tok.pad_id, tok.eot_id, sorted(tok.special_ids)

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[list[int]],
        limits: Sequence[int],
        eot: bool,
        clock: Callable[[], float],
    ) -> list[Trace]:
        from transformers import StoppingCriteria, StoppingCriteriaList

        width = max(len(p) for p in prompts)
        ids = torch.tensor([[self.pad] * (width - len(p)) + p for p in prompts])  # left-padded
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        limit = torch.tensor(limits)
        times: list[float] = []

        class RowLimits(StoppingCriteria):  # type: ignore[misc]
            """Records when each step's tokens came back; a row stops at its own limit."""

            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **_: Any) -> Any:
                times.append(clock())
                return (input_ids.shape[1] - width >= limit).to(input_ids.device)

        banned = [t for t in self.specials if not (eot and t == self.eot)]
        out = self.model.generate(
            ids.to(self.device),
            attention_mask=mask.to(self.device),
            do_sample=True,
            temperature=TEMPERATURE,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max(limits),
            suppress_tokens=banned,
            eos_token_id=self.eot if eot else None,
            pad_token_id=self.pad,
            stopping_criteria=StoppingCriteriaList([RowLimits()]),
        )
        traces = []
        for row, n in zip(out[:, width:].tolist(), limits, strict=True):
            ended = row.index(self.eot) if eot and self.eot in row[:n] else None
            steps = n if ended is None else ended + 1  # the end-of-turn step ends the reply
            traces.append(Trace(0.0, times[:steps], steps if ended is None else ended))
        return traces


class CTranslate2Side:
    def __init__(self, ct2_dir: Path, ckpt: Checkpoint, compute: str, device: str, threads: int):
        import ctranslate2

        self.name = "ctranslate2" + ("" if compute in ("float32", "bfloat16") else f"-{compute}")
        self.dtype = compute
        self.generator = ctranslate2.Generator(
            str(ct2_dir), device=device, compute_type=compute, intra_threads=threads
        )
        tok = ckpt.tokenizer
        self.vocab = json.loads((ct2_dir / "vocabulary.json").read_text())
        self.eot, self.specials = tok.eot_id, sorted(tok.special_ids)

    def generate(
        self,
        prompts: Sequence[list[int]],
        limits: Sequence[int],
        eot: bool,
        clock: Callable[[], float],
    ) -> list[Trace]:
        traces = [Trace(0.0) for _ in prompts]
        end = self.eot

        # The callback must not hold `self`: CT2 may drop it on its own worker thread, and
        # were it the generator's last reference, the generator would join that thread from
        # inside it ("Resource deadlock avoided").
        def on_token(step: Any) -> bool:  # ctranslate2.GenerationStepResult
            trace = traces[step.batch_id]
            trace.times.append(clock())
            if step.token_id != end:
                trace.tokens += 1
            return len(trace.times) >= limits[step.batch_id]  # True: this row is done

        banned = [[self.vocab[t]] for t in self.specials if not (eot and t == self.eot)]
        self.generator.generate_batch(
            [[self.vocab[i] for i in p] for p in prompts],
            max_length=max(limits),
            sampling_topk=0,  # the whole vocabulary
            sampling_temperature=TEMPERATURE,
            include_prompt_in_result=False,  # the prompt in one forward, not token by token
            suppress_sequences=banned,
            end_token=self.vocab[self.eot],
            callback=on_token,
        )
        return traces


def serve_static(
    side: StaticBatcher, requests: Sequence[Request], limits: Sequence[int], eot: bool
) -> list[Trace]:
    """A plain server: take whatever has arrived (up to 64) as one batch, run it to the end."""
    traces: list[Trace] = []
    t0 = time.perf_counter()
    clock = lambda: time.perf_counter() - t0  # noqa: E731
    i = 0
    while i < len(requests):
        now = clock()
        if requests[i].arrival_s > now:
            time.sleep(requests[i].arrival_s - now)  # idle until the next arrival
            continue
        j = i
        while j < len(requests) and j - i < MAX_BATCH and requests[j].arrival_s <= now:
            j += 1
        batch = side.generate([r.prompt for r in requests[i:j]], limits[i:j], eot, clock)
        for r, trace in zip(requests[i:j], batch, strict=True):
            traces.append(dataclasses.replace(trace, arrival_s=r.arrival_s))
        i = j
    return traces


def convert_ct2(hf_dir: Path, out: Path) -> Path:
    import ctranslate2

    ctranslate2.converters.TransformersConverter(str(hf_dir)).convert(str(out))
    # CT2 requires a start token name; Parley's models have none and every prompt here
    # brings its own tokens, so any vocabulary entry will do.
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    config["bos_token"] = config.get("bos_token") or "<|pad|>"
    config_path.write_text(json.dumps(config))
    return out
