"""Two ranks over gloo, as ``torchrun --nproc_per_node 2`` would start them, on a tiny model."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp

from tests.unit.test_train_helpers import (
    register_tiny_preset,
    tiny_config,
    tiny_options,
    write_corpus,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_main(rank: int, tmp: str, port: int) -> None:
    # What torchrun would set for each worker.
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    register_tiny_preset()
    from engine.train import ddp
    from engine.train.run import run_training

    world = ddp.init_world("cpu")
    try:
        tmp_path = Path(tmp)
        opts = tiny_options(tmp_path, tmp_path / "chats.jsonl")
        result = run_training(opts, tiny_config(max_steps=12, eval_interval=4), world)
        digest = hashlib.sha256()
        for tensor in result.model.state_dict().values():  # this rank's own copy
            digest.update(tensor.numpy().tobytes())
        (tmp_path / f"rank{rank}.json").write_text(
            json.dumps({"params": digest.hexdigest(), "metrics": result.metrics})
        )
    finally:
        ddp.close_world(world)


def test_two_gloo_ranks_train_one_model(tmp_path: Path) -> None:
    write_corpus(tmp_path / "chats.jsonl", n=80)
    mp.spawn(_rank_main, args=(str(tmp_path), _free_port()), nprocs=2, join=True)

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["params"] == ranks[1]["params"]
    metrics = ranks[0]["metrics"]
    assert metrics["world_size"] == 2 and metrics["steps"] == 12
    # Each step saw both ranks' windows: twice the tokens of one process.
    assert metrics["train_tokens"] == 12 * 2 * 8 * 32
    val = metrics["history"]["val"]
    assert val[-1][1] < val[0][1]
    assert ranks[1]["metrics"] == {}  # rank 0 alone evaluates, saves and reports


def test_thread_tuner_uses_the_fastest_count_and_rechecks() -> None:
    from engine.train.ddp import ThreadTuner

    before = torch.get_num_threads()
    try:
        tuner = ThreadTuner(2, every=10, trial=2, skip=1)
        speed = {1: 1.0, 2: 3.0}  # seconds per step: one thread is faster (a busy neighbour)
        used = []
        for step in range(25):
            n = tuner.threads_for(step)
            used.append(n)
            tuner.record(step, n, speed[n])
            if step == 12:
                speed = {1: 1.0, 2: 0.5}  # the neighbour left
        assert used[0] == 2  # warm-up at the default
        assert used[1:5] == [1, 1, 2, 2]  # a trial of each count
        assert set(used[5:11]) == {1}  # then the faster one
        assert used[11:15] == [1, 1, 2, 2]  # every 10 steps, a new round
        assert set(used[15:21]) == {2}  # which notices that 2 threads are faster now
    finally:
        torch.set_num_threads(before)
