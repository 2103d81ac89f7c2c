"""`parley export --format hf`: transformers loads the result as a Llama that computes what
Parley's model computes (logits within 1e-4, the same greedy tokens) and tokenizes alike."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from bot.cli import cli
from bot.errors import ModelError
from engine.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from engine.data.formatting import format_prompt
from engine.export import export_hf
from engine.models import ModelConfig, build_model
from engine.tokenizer import Tokenizer, train_bpe_tokenizer, train_char_tokenizer

transformers = pytest.importorskip("transformers")

TEXTS = [
    "<|user|>hey, are we still on for games?<|eot|><|bot|>yes! after 9, bring chips<|eot|>",
    "<|user|>did you see the match?<|eot|><|bot|>no, who won? tell me everything<|eot|>",
] * 10
PROMPT = "<|user|>hey, who won the match tonight?<|eot|><|bot|>"


def tokenizer_of(kind: str) -> Tokenizer:
    if kind == "char":
        return train_char_tokenizer([string.printable])
    return train_bpe_tokenizer(TEXTS, vocab_size=300)


def checkpoint(tmp_path: Path, tokenizer: Tokenizer, **overrides: object) -> Checkpoint:
    torch.manual_seed(0)
    fields: dict[str, object] = {
        "arch": "gpt",
        "vocab_size": tokenizer.vocab_size,
        "n_embd": 64,
        "n_layer": 2,
        "n_head": 4,
        "block_size": 64,
        "mlp": "swiglu",
        **overrides,
    }
    model = build_model(ModelConfig(**fields))  # type: ignore[arg-type]
    with torch.no_grad():  # peaked, so a wrong position or weight visibly moves the logits
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.1)
    path = save_checkpoint(
        tmp_path / "ckpt", model, tokenizer, preset="test", metrics={}, provenance={}
    )
    return load_checkpoint(path)


@pytest.fixture(params=["char", "bpe"])
def exported(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Checkpoint, Path]:
    ckpt = checkpoint(tmp_path, tokenizer_of(request.param))
    return ckpt, export_hf(ckpt, tmp_path / "hf")


def load_hf(path: Path) -> object:
    model = transformers.LlamaForCausalLM.from_pretrained(path, local_files_only=True)
    return model.eval()


@torch.no_grad()
def test_logits_equal_parleys(exported: tuple[Checkpoint, Path]) -> None:
    ckpt, path = exported
    hf = load_hf(path)
    torch.manual_seed(1)
    tokens = torch.randint(0, ckpt.config.vocab_size, (2, ckpt.config.block_size))  # (B, T)
    ours, _ = ckpt.model(tokens)
    theirs = hf(tokens).logits  # type: ignore[operator]
    assert ours.std() > 0.5  # logits of order 1, so 1e-4 is a tight bound
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=0), (ours - theirs).abs().max()


@torch.no_grad()
def parley_greedy(ckpt: Checkpoint, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding through Parley's KV cache, stopping after end-of-turn."""
    logits, state = ckpt.model(torch.tensor([prompt]), None, last_only=True)
    out: list[int] = []
    while len(out) < n:
        nxt = int(logits[0, -1].argmax())
        out.append(nxt)
        if nxt == ckpt.tokenizer.eot_id:
            break
        logits, state = ckpt.model(torch.tensor([[nxt]]), state, last_only=True)
    return out


@torch.no_grad()
def test_greedy_decoding_gives_the_same_tokens(exported: tuple[Checkpoint, Path]) -> None:
    ckpt, path = exported
    hf = load_hf(path)
    prompt = ckpt.tokenizer.encode(PROMPT)
    n = ckpt.config.block_size - len(prompt)
    ours = parley_greedy(ckpt, prompt, n)
    generated = hf.generate(  # type: ignore[attr-defined]
        torch.tensor([prompt]), do_sample=False, max_new_tokens=n
    )
    theirs = generated[0, len(prompt) :].tolist()
    assert len(set(ours)) > 3  # not one token repeated: the comparison has something to see
    assert theirs == ours


def test_tokenizer_and_chat_template_match(exported: tuple[Checkpoint, Path]) -> None:
    ckpt, path = exported
    hf_tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    ids = ckpt.tokenizer.encode(PROMPT)
    assert hf_tok(PROMPT, add_special_tokens=False)["input_ids"] == ids
    assert hf_tok.decode(ids, skip_special_tokens=True) == ckpt.tokenizer.decode(ids)
    assert hf_tok.eos_token_id == ckpt.tokenizer.eot_id
    messages = [
        {"role": "user", "content": "hey"},
        {"role": "assistant", "content": "hi there"},
        {"role": "user", "content": "who won?"},
    ]
    templated = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert templated == format_prompt([("user", "hey"), ("bot", "hi there")], "who won?")


def test_a_gelu_checkpoint_is_refused_and_nothing_written(tmp_path: Path) -> None:
    ckpt = checkpoint(tmp_path, tokenizer_of("char"), mlp="gelu")
    with pytest.raises(ModelError, match="mlp is 'gelu'"):
        export_hf(ckpt, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_cli_exports_and_refuses_a_non_empty_target(tmp_path: Path) -> None:
    ckpt = checkpoint(tmp_path, tokenizer_of("bpe"))
    out = tmp_path / "hf"
    ran = CliRunner().invoke(cli, ["export", str(ckpt.path), "--format", "hf", str(out)])
    assert ran.exit_code == 0, ran.output
    assert load_hf(out) is not None
    again = CliRunner().invoke(cli, ["export", str(ckpt.path), str(out)])
    assert again.exit_code != 0
    assert "not an empty directory" in again.output and "Traceback" not in again.output
