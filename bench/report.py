"""Benchmark results on disk, and the README's performance section generated from them.

Every benchmark saves its JSON with :func:`save_result`: the figures plus ``meta`` (commit,
whether the tree had uncommitted changes, machine, date), as ``bench/results/<name>.json``.
Running this module rewrites the part of README.md between ``<!-- bench:start -->`` and
``<!-- bench:end -->`` from those files, so no figure in it is typed by hand::

    python -m bench.report            # rewrite README.md's block
    python -m bench.report --check    # exit 1 if the block is not what the files give
    python -m bench.serving | python -m bench.report --save serving-cpu  # a script that
                                      # only prints its JSON, saved with commit and machine

A result file without ``meta`` (written before results carried it) is listed as such.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


# ------------------------------------------------------------------------- writing results


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_meta() -> dict[str, Any]:
    """Where and when a result was measured: commit, machine and date."""
    import torch  # benchmarks need torch anyway; the README generator does not

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "commit": _git("rev-parse", "HEAD"),
        "uncommitted_changes": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "gpu": gpu,
        },
    }


def save_result(name: str, figures: dict[str, Any], directory: Path = RESULTS) -> Path:
    """Write ``figures`` with :func:`run_meta` as ``directory/<name>.json``; its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    path.write_text(json.dumps({"meta": run_meta(), **figures}, indent=2) + "\n")
    return path


def load_results(directory: Path = RESULTS) -> dict[str, dict[str, Any]]:
    """Every result file, by name (the file name without ``.json``)."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))}


# ------------------------------------------------------------------------------ the README

PEER_BASELINES = {
    "parley": "Parley's scheduler, driven in-process: continuous batching of up to 64 rows, "
    'prompts in chunks, the dtype `engine.dtype = "auto"` picks',
    "transformers": "`LlamaForCausalLM.generate` on the export: a static batch of whatever "
    "waits (up to 64, left-padded), its default KV cache; a batch runs until its last row ends",
    "ctranslate2": "`Generator.generate_batch` on the export converted by CTranslate2's "
    "transformers converter, float32, batched the same way; a row stops at its own end",
    "ctranslate2-int8": "the same with int8 weights (what CTranslate2 recommends on a CPU)",
}


def _ms(side: dict[str, Any], what: str) -> str:
    return f"{side[f'{what}_p50_ms']:,.0f} / {side[f'{what}_p99_ms']:,.0f}"


def describe_run(name: str, result: dict[str, Any]) -> str:
    meta = result.get("meta")
    if not meta:
        return f"`{name}.json`: no commit or machine recorded (written before results carried them)"
    m = meta["machine"]
    gpu = f", {m['gpu']}" if m.get("gpu") else ", no GPU"
    dirty = " + uncommitted changes" if meta.get("uncommitted_changes") else ""
    return (
        f"[`{name}.json`](bench/results/{name}.json): commit `{meta['commit'][:10]}`{dirty}, "
        f"{meta['date'][:10]}, {m['cpu']} ({m['cores']} cores{gpu}), torch {m['torch']}"
    )


def render_peers(name: str, r: dict[str, Any]) -> list[str]:
    wb = r["workload"]["b"]
    lines = [
        f"**Peers on the same weights** — `python -m bench.peers` ({describe_run(name, r)}; "
        f"{r['threads']} threads on every side, temperature {r['sampling']['temperature']} "
        "over the whole vocabulary"
        + (
            f"; 1-minute load average {r['load_average']['start'][0]:.1f} at the start, "
            f"{r['load_average']['end'][0]:.1f} at the end"
            if "load_average" in r
            else ""
        )
        + ").",
        "",
        f"(a) {r['workload']['a']['sequences']} sequences × {r['workload']['a']['new_tokens']} "
        f"new tokens at once. (b) {wb['conversations']} chitchat-validation conversations, "
        f"Poisson arrivals at {wb['arrival_rate_per_s']}/s"
        + (
            f" ({wb['load']} × what Parley sustains on them, measured in the run)"
            if wb.get("load") and "capacity_tokens_per_s" in wb
            else ""
        )
        + f", mean prompt "
        f"{wb['mean_prompt_tokens']} tokens, replies of {wb['mean_reply_tokens']} tokens on "
        f"average (cap {wb['reply_cap']}; "
        + (
            "ending at the model's end-of-turn"
            if r["reply_lengths"] == "model"
            else "random weights, so each reply ends where the human reply it stands for did"
        )
        + f"). Model: {r['model']['params']:,} parameters, {r['model']['weights']} weights. "
        f"Best of {r['workload']['repeats']} interleaved runs per side.",
        "",
        "| side | dtype | (a) tokens/s | (a) TTFT p50 / p99 ms | (a) ITL p50 / p99 ms "
        "| (b) tokens/s | (b) TTFT p50 / p99 ms | (b) ITL p50 / p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for side, a in r["workload_a"].items():
        b = r["workload_b"][side]
        bold = "**" if side.startswith("parley") else ""
        lines.append(
            f"| {bold}{side}{bold} | {a['dtype']} | {a['tokens_per_s']:,.0f} | {_ms(a, 'ttft')} "
            f"| {_ms(a, 'itl')} | {b['tokens_per_s']:,.0f} | {_ms(b, 'ttft')} | {_ms(b, 'itl')} |"
        )
    mfu = r["decode_mfu_detail"]
    lines += [
        "",
        f"Parley over the best peer: (a) **{r['best_peer_ratio_a']:.2f}×** "
        f"({r['best_peer_a']}), (b) **{r['best_peer_ratio_b']:.2f}×** ({r['best_peer_b']}); "
        "Parley's p99 TTFT in (b) is "
        + ("below" if r["parley_p99_ttft_below_every_peer_b"] else "not below")
        + " every peer's. Decode FLOP utilisation at "
        f"{mfu['rows']} rows: **{100 * r['decode_mfu']:.1f}%** of a {mfu['peak_dtype']} matmul "
        f"peak measured in the run ({mfu['peak_flops'] / 1e9:,.0f} GFLOP/s; "
        f"{mfu['flops_per_token'] / 1e6:.1f} MFLOP per token; prefill time included).",
        "",
    ]
    lines += [
        f"- {side}: {PEER_BASELINES[side]}." for side in r["workload_a"] if side in PEER_BASELINES
    ]
    lines += [f"- Note: {note}" for note in r.get("notes", [])]
    return lines


ENGINE_MODELS = {"gru": "GRU preset", "transformer": "Transformer preset"}


def render_engine(name: str, r: dict[str, Any]) -> list[str]:
    """bench/serving.py's sections: throughput (each dtype paired with itself), follow-ups,
    end to end; a section the run skipped is left out."""
    extra = render_followup(r) + render_e2e(r) + render_notes(r)
    if not any(f"{key}_throughput_ratio_fp32" in r for key in ENGINE_MODELS):
        return [f"**Engine** — `python -m bench.serving` ({describe_run(name, r)}).", *extra]
    lines = [
        f"**Engine vs plain loops** — `python -m bench.serving` ({describe_run(name, r)}). "
        f"{r.get('transformer_concurrency', 64)} conversations through the scheduler against, "
        "on the same model in the same dtype:",
        "",
        "- batch-1 loop: one request at a time, one token per step, carrying the model's own "
        "state (the GRU's hidden state, the GPT's KV cache);",
        "- static batch: all the requests as one batch decoded together with that state until "
        "the last is done.",
        "",
        "| model | dtype | engine tokens/s | batch-1 loop tokens/s | engine ÷ loop "
        "| static batch tokens/s | engine ÷ static |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, label in ENGINE_MODELS.items():
        if f"{key}_throughput_ratio_fp32" not in r or f"{key}_static_ratio" not in r:
            continue
        chosen = "bf16" if r[f"{key}_engine_decode_dtype"] == "bfloat16" else "fp32"
        for prec in ("fp32", "bf16"):
            b = "**" if prec == chosen else ""
            lines.append(
                f"| {label} ({r[f'{key}_new_tokens']} new tokens) | {prec} "
                f"| {r[f'{key}_engine_{prec}_tokens_per_s']:,.0f} "
                f"| {r[f'{key}_loop_{prec}_tokens_per_s']:,.0f} "
                f"| {b}{r[f'{key}_throughput_ratio_{prec}']:.1f}×{b} "
                f"| {r[f'{key}_static_{prec}_tokens_per_s']:,.0f} "
                f"| {b}{r[f'{key}_static_ratio_{prec}']:.2f}×{b} |"
            )
    if "transformer_naive_ratio" in r:
        lines += [
            "",
            "Naive, no headline: nanoGPT's `generate` as written (the whole context re-run for "
            f"every token, fp32) makes {r['transformer_naive_fp32_tokens_per_s']:,.0f} tokens/s; "
            f"the engine is {r['transformer_naive_ratio']:.1f}× that. Bold: the dtype the "
            'engine picks (`engine.dtype = "auto"`); each side at its best of the thread '
            "counts tried (all 1..cores unless `--threads` fixed one).",
        ]
    return lines + extra


def render_notes(r: dict[str, Any]) -> list[str]:
    """The run's notes and load average, when it recorded them."""
    lines = []
    if "load_average" in r:
        start, end = r["load_average"]["start"][0], r["load_average"]["end"][0]
        lines.append(f"- 1-minute load average {start:.1f} at the start, {end:.1f} at the end.")
    lines += [f"- Note: {note}" for note in r.get("notes", [])]
    return ["", *lines] if lines else []


def render_followup(r: dict[str, Any]) -> list[str]:
    """bench/serving.py's follow-up table: time to first token by history length."""
    if "followup" not in r:
        return []
    lines = [
        "",
        "Time to first token of a follow-up (ms, arrival to first token, fastest of "
        f"{r.get('followup_repeats', 'several')} runs): the conversation's state cached in memory, "
        "recomputed from the stored history (the GRU through `nn.GRU`'s fused kernel; the "
        "GPT's recompute is capped by its window), or restored from the state "
        "spilled to Redis (the GET and deserialising included).",
        "",
        "| model | history (characters) | cached | recomputed | restored from Redis |",
        "|---|---|---|---|---|",
    ]
    for key, rows in r["followup"].items():
        label = ENGINE_MODELS.get(key, "Transformer preset" if key == "gpt" else key)
        for chars, row in rows.items():
            lines.append(
                f"| {label} | {int(chars):,} | {row['cached_ms']:,.1f} "
                f"| {row['recomputed_ms']:,.1f} | {row['restored_ms']:,.1f} |"
            )
    return lines


def render_e2e(r: dict[str, Any]) -> list[str]:
    """bench/serving.py's end-to-end figure, over the best bare engine."""
    if "e2e_fraction" not in r or "e2e_bare_engine_threads" not in r:
        return []
    return [
        "",
        f"End to end: {r['e2e_users']} users chatting through the web adapter (HTTP + SSE, "
        f"Redis, the engine in its own process at {r['e2e_engine_threads']} torch thread(s)) "
        f"get {r['e2e_tokens_per_s']:,} tokens/s, **{r['e2e_fraction']:.2f}** of the best bare "
        f"engine ({r['e2e_bare_engine_tokens_per_s']:,} tokens/s at "
        f"{r['e2e_bare_engine_threads']} threads, same requests; "
        f"{r['e2e_fraction_same_threads']:.2f} of the bare engine at the same thread count).",
    ]


MODE_LABELS = {
    "generate": "`generate`",
    "retrieve": "`retrieve`, likelihood",
    "retrieve_pmi": "`retrieve`, PMI",
    "hybrid": "`hybrid`, likelihood",
    "hybrid_pmi": "`hybrid`, PMI",
    "retrieve_fused": "`retrieve`, fused",
    "hybrid_fused": "`hybrid`, fused",
}


def render_quality(name: str, r: dict[str, Any]) -> list[str]:
    """bench/quality.py: the judge's figures per reply mode, and the sample replies."""
    human, rand = r["human"]["judge_score"], r["random"]["judge_score"]
    lines = [
        f"**Do replies fit the conversation?** — `python bench/quality.py` "
        f"({describe_run(name, r)}; {r['contexts']} contexts of the {r.get('split', 'test')} "
        f"split). The judge ({r['settings']['judge']}) scores the cosine between the user's "
        f"message and the reply: human replies {human:.3f}, random human replies (the "
        f"baseline: another conversation's reply) {rand:.3f}. Preference: the share of "
        "contexts where it scores Parley's reply above the random one; relative: "
        "(Parley − random) / (human − random). Served by default: "
        f"{MODE_LABELS.get(r['default_mode'], r['default_mode'])}.",
        "",
        "| mode | judge preference | relative score | word validity | reply chars "
        "| remembered lines |",
        "|---|---|---|---|---|---|",
    ]
    for mode, f in r["modes"].items():
        label = MODE_LABELS.get(mode, mode) + (" (default)" if mode == r["default_mode"] else "")
        lines.append(
            f"| {label} | {f['judge_preference']:.1%} | {f['judge_relative_score']:.2f} "
            f"| {f['word_validity']:.1%} | {f['reply_chars']:.0f} "
            f"| {f.get('remembered_share', 0.0):.0%} |"
        )
    modes = list(r["modes"])
    lines += [
        "",
        "Sample replies (no history; the five fixed prompts):",
        "",
        "| prompt | " + " | ".join(MODE_LABELS.get(m, m) for m in modes) + " |",
        "|---" * (len(modes) + 1) + "|",
    ]
    for sample in r["samples"]:
        cells = [_cell(sample["prompt"]), *(_cell(sample[m]) for m in modes)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + render_notes(r)


def _cell(text: str, limit: int = 80) -> str:
    """A reply as one table cell: one line, pipes escaped, long ones cut."""
    flat = " / ".join(line.strip() for line in text.splitlines() if line.strip())
    flat = flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"
    return flat.replace("|", "\\|") or "(empty)"


def render_eval(name: str, r: dict[str, Any]) -> list[str]:
    """``parley eval --json`` of a checkpoint, saved with ``bench.report --save``."""
    return [
        f"**The model's own figures** — `parley eval {r['checkpoint']} --json` "
        f"({describe_run(name, r)}; test split, {r['contexts']} contexts): "
        f"{r['test_bpc']:.3f} bits/char; R@1 of 10 {r['r_at_1']:.3f} by likelihood, "
        f"{r.get('r_at_1_pmi', float('nan')):.3f} by PMI, "
        f"{r.get('r_at_1_fused', float('nan')):.3f} by PMI fused with TF-IDF (the served "
        "ranking), against a TF-IDF ranker's "
        f"{r['r_at_1_tfidf']:.3f} (the floor) and chance's 0.100; "
        f"{r['word_validity']:.1%} of generated words valid (strict), replies of "
        f"{r['reply_chars']:.0f} characters, distinct-2 {r['distinct_2']:.2f}.",
    ]


RENDERERS: dict[str, Callable[[str, dict[str, Any]], list[str]]] = {
    "peers-": render_peers,
    "serving-": render_engine,
    "quality-": render_quality,
    "eval-": render_eval,
}


def render(results: dict[str, dict[str, Any]]) -> str:
    """The README block for ``results`` (quick runs left out)."""
    lines = [
        START,
        "<!-- Generated by `python -m bench.report` from bench/results/*.json: edit those "
        "scripts, not this block. -->",
        "",
    ]
    others = []
    for name, result in results.items():
        if result.get("quick"):
            continue
        renderer = next((f for p, f in RENDERERS.items() if name.startswith(p)), None)
        if renderer is None or "meta" not in result:
            others.append(describe_run(name, result))
        else:
            lines += [*renderer(name, result), ""]
    if others:
        lines += ["Other result files:", "", *[f"- {o}" for o in others], ""]
    return "\n".join([*lines, END])


def rewrite(readme: str, block: str) -> str:
    start, end = readme.find(START), readme.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"README.md has no {START} ... {END} block to rewrite")
    return readme[:start] + block + readme[end + len(END) :]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Rewrite README.md's figures from bench/results.")
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is stale")
    parser.add_argument(
        "--save",
        metavar="NAME",
        help="instead: save the JSON object on stdin (a benchmark's output) as NAME.json",
    )
    args = parser.parse_args(argv)
    if args.save:
        print(save_result(args.save, json.loads(sys.stdin.read())))
        return 0
    readme = README.read_text(encoding="utf-8")
    updated = rewrite(readme, render(load_results()))
    if args.check:
        if updated != readme:
            print("README.md's figures differ from bench/results: run python -m bench.report")
            return 1
        return 0
    README.write_text(updated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
