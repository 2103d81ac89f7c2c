"""Bad input that arrives as files and bytes: importers, the config file, queue entries,
checkpoints. Each gets a clear, named error (``DataError``, ``ConfigError``, a dead letter,
``ModelError``) or is read; nothing crashes with anything else, and nothing good is lost."""

from __future__ import annotations

import asyncio
import copy
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis
from hypothesis import strategies as st

from bot import keys, wire
from bot.errors import ConfigError, DataError, ModelError
from bot.queue import ParleyClient
from bot.registry import ModelRegistry
from bot.settings import EngineSettings, RedisSettings, SamplingSettings, Settings, load_settings
from bot.wire import ChatRequest, Done, Sampling
from engine.checkpoint import load_checkpoint
from engine.data import format_conversations, parse_discord, parse_telegram, read_jsonl
from engine.service import serve
from tests.reliability.nasty import NASTY, ODD_NAMES, any_text, draw
from tests.unit.engine_fixtures import tiny_checkpoint

pytestmark = pytest.mark.timeout(300)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text(30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text(8), inner, max_size=3),
    max_leaves=6,
)


# --- importers ----------------------------------------------------------------------------


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside a JSON document."""
    found = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            found += paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += paths(v, (*prefix, i))
    return found


def mutated(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    """``document`` with the value at ``path`` replaced."""
    if not path:
        return value
    copied = copy.deepcopy(document)
    target = copied
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return copied


def parse_jsonl_bytes(data: bytes, tmp: Path) -> list[Any]:
    path = tmp / "data.jsonl"
    path.write_bytes(data)
    return read_jsonl(path)


IMPORTERS: dict[str, tuple[str, Callable[[bytes, Path], list[Any]]]] = {
    "discord": ("discord_channel.json", lambda data, tmp: parse_discord(data, "export.json")),
    "telegram": ("telegram_group.json", lambda data, tmp: parse_telegram(data, "result.json")),
    "jsonl": ("conversations.jsonl", parse_jsonl_bytes),
}


def read_or_refuse(parse: Callable[[bytes, Path], list[Any]], data: bytes, tmp: Path) -> str:
    try:
        conversations = parse(data, tmp)
    except DataError as e:
        assert str(e), "a DataError without a message"
        return "refused"
    format_conversations(conversations)  # what the trainer does next must not crash either
    return "read"


@pytest.mark.parametrize("kind", sorted(IMPORTERS))
def test_importers_read_or_refuse_any_bytes_and_any_damage(kind: str, tmp_path: Path) -> None:
    fixture, parse = IMPORTERS[kind]
    original = (FIXTURES / fixture).read_bytes()
    for data in draw(st.binary(max_size=300), 30):
        read_or_refuse(parse, data, tmp_path)
    for cut in range(0, len(original), max(1, len(original) // 25)):  # truncated anywhere
        read_or_refuse(parse, original[:cut], tmp_path)
    if kind == "jsonl":
        lines = original.decode().splitlines()
        documents = [json.loads(line) for line in lines if line.strip()]
        targets = [(i, p) for i, d in enumerate(documents) for p in paths(d)]
    else:
        documents = [json.loads(original)]
        targets = [(0, p) for p in paths(documents[0])]
    picks = draw(st.tuples(st.sampled_from(targets), JSON_VALUES), 60)
    outcomes = set()
    for (index, path), value in picks:
        changed = list(documents)
        changed[index] = mutated(documents[index], path, value)
        data = "\n".join(json.dumps(d) for d in changed).encode()
        outcomes.add(read_or_refuse(parse, data, tmp_path))
    assert outcomes == {"read", "refused"}  # some damage is harmless, some is refused


@pytest.mark.parametrize("kind", ["discord", "telegram"])
def test_exports_full_of_nasty_text_and_names_lose_no_message(kind: str) -> None:
    fixture, _ = IMPORTERS[kind]
    export = json.loads((FIXTURES / fixture).read_bytes())
    texts = [t for t in NASTY.values() if t.strip() and "\ud800" not in t]
    names = [n for n in ODD_NAMES if n.strip()]
    messages = [m for m in export["messages"] if m.get("type") in ("Default", "Reply", "message")]
    for i, m in enumerate(messages):
        text = texts[i % len(texts)]
        # each message from another author, so none is merged into the one before
        if kind == "discord":
            m["content"], m["author"]["name"] = text, names[i % len(names)]
            m["author"]["id"] = str(900 + i)
        else:
            m["text"], m["text_entities"], m["from"] = text, [], names[i % len(names)]
            m["from_id"] = f"user{900 + i}"
    parse = parse_discord if kind == "discord" else parse_telegram
    conversations = parse(json.dumps(export).encode(), fixture)
    kept = sum(len(c.messages) for c in conversations)
    forwarded = [m for m in messages if "forwarded_from" in m]  # not the author's words: rule
    assert kept == len(messages) - len(forwarded)  # every other one is kept, whatever it says
    format_conversations(conversations)


# --- the config file ----------------------------------------------------------------------


def load_or_refuse(path: Path) -> str:
    try:
        load_settings(path)
    except ConfigError as e:
        assert str(path) in str(e) or "setting " in str(e), str(e)  # names the file or setting
        return "refused"
    return "loaded"


def test_any_config_file_loads_or_is_refused_naming_the_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in __import__("os").environ if n.startswith("PARLEY_")]:
        monkeypatch.delenv(name)
    config = tmp_path / "parley.toml"
    cases = [
        b"",
        b"\xff\xfe\x00garbage",
        b"web = 5\n",
        b"[web]\nport = 'eighty'\n",
        b"[redis]\nshards = -1\n",
        b"[engine]\nmax_batch = 1e400\n",
        b"[web]\napi_keys = ['sk-not-in-a-file-123']\n",
        b"web = [1, 2]\n",
        b"[[web]]\nport = 1\n",
        b"[nonsense]\nx = 1\n",
        b"[safety]\npatterns = ['(unclosed']\n",
        b"[discord]\nrate_limit = 'lots'\n",
        b"log_level = 'LOUD'\n",
        b"[web\n",
        "[web]\nhost = '\u202e\x00'\n".encode(),
    ]
    cases += [t.encode("utf-8", "surrogatepass") for t in draw(any_text(80), 30)]
    cases += [
        f"[{section}]\n{key} = {value}\n".encode()
        for section, key, value in draw(
            st.tuples(
                st.sampled_from(["web", "redis", "engine", "sampling", "safety", "discord"]),
                st.sampled_from(["port", "shards", "max_batch", "blocklist", "token", "x"]),
                st.sampled_from(["1", "-1", "'x'", "[]", "{}", "true", "1.5", "'5/minute'"]),
            ),
            30,
        )
    ]
    outcomes = set()
    for data in cases:
        config.write_bytes(data)
        outcomes.add(load_or_refuse(config))
    assert outcomes == {"loaded", "refused"}
    assert load_or_refuse(tmp_path) == "refused"  # a directory, not a file
    assert load_or_refuse(tmp_path / "missing.toml") == "refused"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PARLEY_WEB__API_KEYS", "not json"),
        ("PARLEY_WEB__PORT", "eighty"),
        ("PARLEY_REDIS__SHARDS", "many"),
        ("PARLEY_WEB__TRUSTED_PROXIES", "[1, 2"),
        ("PARLEY_DISCORD__ADMINS", "{"),
    ],
)
def test_a_bad_environment_variable_is_refused_naming_it(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as refused:
        load_settings()
    setting = variable.removeprefix("PARLEY_").lower().replace("__", ".")
    assert variable in str(refused.value) or setting in str(refused.value), str(refused.value)


# --- queue entries ------------------------------------------------------------------------


async def test_malformed_queue_entries_are_dead_lettered_and_nothing_is_lost(
    redis: aioredis.Redis, redis_settings: RedisSettings, tmp_path: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        redis=redis_settings,
        engine=EngineSettings(
            model=tiny_checkpoint(tmp_path / "tiny").path,
            read_block_ms=10,
            stream_interval_ms=0,
            heartbeat_s=0.2,
            dtype="float32",
        ),
        sampling=SamplingSettings(max_new_tokens=6),
    )
    valid = ChatRequest(id="x", conversation="web:q:q", reply_to="rel-dead", text="hi")
    good = wire.encode(valid)
    bad: list[dict[bytes, bytes]] = [
        {keys.FIELD.encode(): b""},
        {b"other": good},  # no request field
        {keys.FIELD.encode(): good[:-3]},  # truncated
        {keys.FIELD.encode(): msgspec.msgpack.encode({"type": "chat", "v": 1})},  # fields missing
        {keys.FIELD.encode(): wire.encode(msgspec.structs.replace(valid, v=99))},  # from the future
        {keys.FIELD.encode(): msgspec.msgpack.encode(["not", "a", "request"])},
    ]
    bad += [{keys.FIELD.encode(): raw} for raw in draw(st.binary(max_size=64), 20)]
    stop = asyncio.Event()
    engine = asyncio.create_task(serve(settings, redis, stop))
    try:
        async with ParleyClient(redis, settings.redis, "rel-dead") as client:
            replies = []
            for i, fields in enumerate(bad):
                shard = i % settings.redis.shards
                await redis.xadd(keys.request_stream(shard), fields)  # type: ignore[arg-type]
                request = ChatRequest(
                    id=f"good-{i}",
                    conversation=f"web:q{i}:q{i}",
                    reply_to="rel-dead",
                    text="hello",
                    sampling=Sampling(max_new_tokens=4),
                )
                replies.append(await client.reply(request, timeout_s=60))
    finally:
        stop.set()
        await asyncio.wait_for(engine, 60)
    assert all(isinstance(r, Done) for r in replies), replies  # every good request answered
    dead = sum([await redis.xlen(keys.dead_letter_stream(s)) for s in range(2)])
    assert dead == len(bad)  # every bad entry set aside, with its reason
    for s in range(2):
        assert await redis.xlen(keys.request_stream(s)) == 0  # nothing left behind
        for _id, fields in await redis.xrange(keys.dead_letter_stream(s)):
            assert fields[keys.DEAD_REASON_FIELD.encode()]


# --- checkpoints --------------------------------------------------------------------------


def broken_copies(good: Path, tmp: Path) -> dict[str, Path]:
    """Damaged copies of checkpoint ``good``: truncated weights, weights of another shape,
    config.json damaged in several ways."""
    made: dict[str, Path] = {}

    def copy_as(name: str) -> Path:
        target = tmp / name
        shutil.copytree(good, target)
        made[name] = target
        return target

    weights = (good / "model.safetensors").read_bytes()
    for cut in (0, 7, len(weights) // 2, len(weights) - 1):
        (copy_as(f"truncated-{cut}") / "model.safetensors").write_bytes(weights[:cut])
    other = tiny_checkpoint(tmp / "gpt-source", "gpt").path
    shutil.copy(other / "model.safetensors", copy_as("wrong-shapes") / "model.safetensors")
    config = json.loads((good / "config.json").read_text())
    for i, (key, value) in enumerate(
        draw(st.tuples(st.sampled_from(sorted(config["model"])), JSON_VALUES), 25)
    ):
        damaged = copy.deepcopy(config)
        damaged["model"][key] = value
        (copy_as(f"config-{i}") / "config.json").write_text(json.dumps(damaged))
    (copy_as("config-not-json") / "config.json").write_text("{not json")
    (copy_as("tokenizer-not-json") / "tokenizer.json").write_text("[1, 2")
    return made


def test_damaged_checkpoints_are_refused_with_a_model_error(tmp_path: Path) -> None:
    good = tiny_checkpoint(tmp_path / "good").path
    refused = 0
    for name, path in broken_copies(good, tmp_path).items():
        try:
            load_checkpoint(path)
        except ModelError as e:
            # names the checkpoint's file, or the config value that is wrong
            assert str(path) in str(e) or "config" in str(e), (name, str(e))
            refused += 1
    assert refused >= 7  # the truncations, the shapes, the unreadable JSON at least


async def test_a_damaged_new_version_is_refused_and_the_old_model_keeps_serving(
    redis: aioredis.Redis, redis_settings: RedisSettings, tmp_path: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        redis=redis_settings,
        engine=EngineSettings(read_block_ms=10, stream_interval_ms=0, heartbeat_s=0.2),
        sampling=SamplingSettings(max_new_tokens=6),
    )
    registry = ModelRegistry(settings.models_dir, starter=False)
    good = tiny_checkpoint(tmp_path / "good").path
    live = registry.add(good)
    registry.set_live(live.version)
    wrong = tmp_path / "wrong"
    shutil.copytree(good, wrong)
    other = tiny_checkpoint(tmp_path / "other", "gpt").path
    shutil.copy(other / "model.safetensors", wrong / "model.safetensors")
    damaged = registry.add(wrong)  # whole and matching its manifest, but the wrong shapes
    stop = asyncio.Event()
    engine = asyncio.create_task(serve(settings, redis, stop))
    try:
        async with ParleyClient(redis, settings.redis, "rel-ckpt") as client:

            async def ask(n: int) -> Done:
                request = ChatRequest(
                    id=f"ck-{n}", conversation=f"web:c{n}:c{n}", reply_to="rel-ckpt", text="hi"
                )
                reply = await client.reply(request, timeout_s=60)
                assert isinstance(reply, Done), reply
                return reply

            assert (await ask(0)).model_version == live.version
            await registry.announce(redis, damaged.version)
            for n in range(1, 4):
                assert (await ask(n)).model_version == live.version
    finally:
        stop.set()
        await asyncio.wait_for(engine, 60)
