"""The Discord adapter end to end: local Discord → discord.py → adapter → Redis → engine → back.

The unmodified discord.py client talks to :class:`tests.fakes.discord.FakeDiscord` over real
HTTP and a real gateway websocket; the engine here is a stub answering through the real
queue (scripted texts for the splitting and mention cases, a gate to hold a reply mid-way).
The conversations with the real tiny-model engine are in ``test_discord_engine.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from bot import keys
from bot.commands import COMMANDS
from bot.errors import QueueError
from bot.queue import Delivery, Outgoing, RequestConsumer, cancel_and_wait
from bot.queue.client import BUSY_MESSAGE
from bot.registry import ModelRegistry
from bot.settings import LearningSettings, RedisSettings, Settings
from bot.trainer.service import TrainerService
from bot.wire import ChatRequest, Delta, Done, Error, Request
from tests.fakes.discord import FakeDiscord
from tests.fakes.discord_harness import World, adapter_settings, build_world, running_adapter
from tests.fakes.discord_payloads import Message

pytestmark = pytest.mark.timeout(60)

ZWSP = "\u200b"


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as discord:
        yield discord


@pytest.fixture
def world(fake: FakeDiscord) -> World:
    return build_world(fake)


def settings_for(
    world: World, redis_settings: RedisSettings, tmp_path: Path, **discord: Any
) -> Settings:
    return Settings(
        data_dir=tmp_path, redis=redis_settings, discord=adapter_settings(world, **discord)
    )


def metric(name: str, settings: Settings, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, {"adapter": settings.discord.adapter_id, **labels})
    return value or 0.0


async def reply_to(fake: FakeDiscord, message: Message, *, final: str | None = None) -> Message:
    """The bot's (first) reply to ``message``, once it shows ``final`` (if given)."""

    def arrived() -> bool:
        replies = fake.replies_to(message)
        return bool(replies) and (final is None or replies[0].text == final)

    await fake.wait_for(arrived)
    return fake.replies_to(message)[0]


class GatedEngine:
    """Answers each chat with ``first`` at once and the rest of ``text`` once ``release`` is set.

    Used to hold a reply in the middle: the first message is on Discord, the end is not.
    """

    def __init__(self, redis: aioredis.Redis, settings: RedisSettings, text: str, first: str):
        self.consumer = RequestConsumer(redis, settings, "gated")
        self.text, self.first = text, first
        self.release = asyncio.Event()
        self.answered: list[str] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> GatedEngine:
        await self.consumer.ensure_groups()
        self._tasks.append(asyncio.create_task(self._run()))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await cancel_and_wait(self._tasks)

    async def _run(self) -> None:
        while True:
            try:
                for delivery in await self.consumer.read(count=16, block_ms=20):
                    self._tasks.append(asyncio.create_task(self._answer(delivery)))
            except QueueError:
                await asyncio.sleep(0.05)

    async def _answer(self, delivery: Delivery) -> None:
        request = delivery.request
        if not isinstance(request, ChatRequest):
            done = Done(request_id=request.id, seq=0, text="")
            await self.consumer.write([Outgoing([done], request.reply_to, ack=delivery)])
            return
        head = Delta(request_id=request.id, seq=0, text=self.first)
        await self.consumer.write([Outgoing([head], request.reply_to)])
        await self.release.wait()
        rest = Delta(request_id=request.id, seq=1, text=self.text[len(self.first) :])
        done = Done(request_id=request.id, seq=2, text=self.text)
        await self.consumer.write([Outgoing([rest, done], request.reply_to, ack=delivery)])
        self.answered.append(request.id)


@contextlib.asynccontextmanager
async def scripted(
    echo_engine_cls: Any,
    redis: aioredis.Redis,
    redis_settings: RedisSettings,
    answer: Callable[[Request], str],
) -> AsyncIterator[Any]:
    async with echo_engine_cls(redis, redis_settings, answer=answer) as engine:
        yield engine


# -- when it answers ---------------------------------------------------------------------------


async def test_answers_a_mention_and_ignores_unaddressed_chatter(
    fake, world, redis, redis_settings, tmp_path, echo_engine
) -> None:
    settings = settings_for(world, redis_settings, tmp_path)
    async with running_adapter(settings, redis):
        chatter = await fake.say(world.bob, world.general, "just talking among ourselves")
        asked = await fake.say(world.alice, world.general, "what's up?", mention_bot=True)
        reply = await reply_to(fake, asked)
    assert reply.text == "echo: what's up?"
    assert reply.reference == asked.id and reply.channel is world.general
    assert reply.allowed_mentions == {"parse": []}
    assert fake.replies_to(chatter) == []
    assert world.general.id in fake.typing
    request = echo_engine.served[-1].request
    assert request.id == f"discord-m-{asked.id}"
    assert request.conversation == f"discord:{world.general.id}:{world.alice.id}"
    assert (request.platform, request.user) == ("discord", str(world.alice.id))


async def test_dm_and_answer_channel_and_other_bots(
    fake, world, redis, redis_settings, tmp_path, echo_engine
) -> None:
    other_bot = fake.add_user("otherbot")
    other_bot.bot = True
    world.guild.members[other_bot.id] = []
    settings = settings_for(world, redis_settings, tmp_path)
    async with running_adapter(settings, redis):
        from_bot = await fake.say(other_bot, world.chatty, "beep boop")
        dm = await fake.dm(world.bob, "hello in private")
        in_chatty = await fake.say(world.bob, world.chatty, "anyone here?")
        attachment_only = await fake.dm(world.bob, "", attachments=[_attachment(fake.ids())])
        assert (await reply_to(fake, dm)).text == "echo: hello in private"
        assert (await reply_to(fake, in_chatty)).text == "echo: anyone here?"
        assert (await reply_to(fake, attachment_only)).text == "I can only read text messages."
    assert fake.replies_to(from_bot) == []
    assert [m.channel.type for m in fake.replies_to(dm)] == [1]


async def test_random_replies_answer_unaddressed_messages(
    fake, world, redis, redis_settings, tmp_path, echo_engine
) -> None:
    settings = settings_for(world, redis_settings, tmp_path, random_reply_probability=1.0)
    async with running_adapter(settings, redis):
        chatter = await fake.say(world.bob, world.general, "nice weather today")
        reply = await reply_to(fake, chatter)
    assert reply.text == "echo: nice weather today"
    assert metric("parley_discord_messages_total", settings, reason="random") == 1


async def test_dms_off(fake, world, redis, redis_settings, tmp_path, echo_engine) -> None:
    # No guild_ids: commands are synced globally, so they work in DMs too.
    settings = settings_for(world, redis_settings, tmp_path, allow_dms=False, guild_ids=[])
    async with running_adapter(settings, redis):
        dm = await fake.dm(world.bob, "hello?")
        chat = await run_slash(fake, world.bob, fake.dm_channel(world.bob), "chat", message="hi")
        later = await fake.say(world.bob, world.general, "and here?", mention_bot=True)
        await reply_to(fake, later)
    assert fake.replies_to(dm) == []
    assert chat == "I only chat in servers here, not in direct messages."
    assert None in fake.commands and world.guild.id not in fake.commands


async def test_reply_chain_is_one_conversation(
    fake, world, redis, redis_settings, tmp_path, echo_engine
) -> None:
    settings = settings_for(world, redis_settings, tmp_path, context="reply-chain")
    async with running_adapter(settings, redis):
        start = await fake.say(world.alice, world.general, "tell me a story", mention_bot=True)
        first = await reply_to(fake, start)
        follow = await fake.say(world.alice, world.general, "and then?", reply_to=first.id)
        second = await reply_to(fake, follow)
        again = await fake.say(world.bob, world.general, "go on", reply_to=second.id)
        await reply_to(fake, again)
        fresh = await fake.say(world.alice, world.general, "new topic", mention_bot=True)
        await reply_to(fake, fresh)
    by_text = {d.request.text: d.request.conversation for d in echo_engine.served}
    chain = f"discord:{world.general.id}:chain:{start.id}"
    assert by_text["tell me a story"] == by_text["and then?"] == by_text["go on"] == chain
    assert by_text["new topic"] == f"discord:{world.general.id}:chain:{fresh.id}"
    assert second.reference == follow.id


async def test_thread_answers_in_the_thread_and_stays(
    fake, world, redis, redis_settings, tmp_path, echo_engine
) -> None:
    settings = settings_for(world, redis_settings, tmp_path)
    async with running_adapter(settings, redis):
        thread = await fake.add_thread(world.general, "ideas", owner=world.alice)
        other = await fake.add_thread(world.general, "elsewhere", owner=world.bob)
        quiet = await fake.say(world.bob, other, "no bot here")
        asked = await fake.say(world.alice, thread, "join us", mention_bot=True)
        assert (await reply_to(fake, asked)).channel is thread
        unmentioned = await fake.say(world.bob, thread, "and what do you think?")
        reply = await reply_to(fake, unmentioned)
    assert reply.channel is thread and reply.text == "echo: and what do you think?"
    assert fake.replies_to(quiet) == []
    assert echo_engine.served[-1].request.conversation == f"discord:{thread.id}:{world.bob.id}"


async def test_without_message_content_intent_it_starts_and_says_so_once(
    world, redis, redis_settings, tmp_path, echo_engine, caplog
) -> None:
    world.fake.message_content_allowed = False
    settings = settings_for(world, redis_settings, tmp_path)
    with caplog.at_level(logging.WARNING, logger="adapters.discord"):
        async with running_adapter(settings, redis):
            unseen = await world.fake.say(world.bob, world.chatty, "content hidden from bots")
            asked = await world.fake.say(world.bob, world.general, "still there?", mention_bot=True)
            assert (await reply_to(world.fake, asked)).text == "echo: still there?"
            dm = await world.fake.dm(world.bob, "and here?")
            assert (await reply_to(world.fake, dm)).text == "echo: and here?"
    warnings = [r for r in caplog.records if "message-content intent" in r.getMessage()]
    assert len(warnings) == 1 and "Discord refused it" in warnings[0].getMessage()
    assert world.fake.replies_to(unseen) == []
    assert (world.fake.refused_intents, world.fake.identifies) == (1, 1)


# -- replies -----------------------------------------------------------------------------------


def _words(n_chars: int) -> str:
    words = (f"word{i}" for i in range(10_000))
    text = ""
    for i, word in enumerate(words):
        text += word + ("\n" if i % 12 == 11 else " ")
        if len(text) >= n_chars:
            return text.strip()
    raise AssertionError("unreachable")


async def test_a_5000_character_reply_is_split_on_boundaries(
    fake, world, redis, redis_settings, tmp_path, echo_engine_cls
) -> None:
    long_text = _words(5000)
    settings = settings_for(world, redis_settings, tmp_path)
    async with (
        scripted(echo_engine_cls, redis, redis_settings, lambda r: long_text),
        running_adapter(settings, redis),
    ):
        asked = await fake.say(world.alice, world.general, "talk a lot", mention_bot=True)
        await fake.wait_for(
            lambda: (
                "".join(m.text for m in fake.bot_messages()).count("word") > 0
                and fake.bot_messages()[-1].text.endswith(long_text[-12:])
            )
        )
    parts = fake.bot_messages(world.general)
    assert len(parts) == 3
    assert all(len(p.text) <= 2000 for p in parts)
    assert parts[0].reference == asked.id and parts[1].reference is None
    assert " ".join(" ".join(p.text for p in parts).split()) == " ".join(long_text.split())
    for part in parts:  # every cut falls between words: each part starts and ends a word
        assert part.text.split()[0].startswith("word") and part.text[-1].isdigit()


async def test_a_long_code_block_is_closed_and_reopened(
    fake, world, redis, redis_settings, tmp_path, echo_engine_cls
) -> None:
    code = "\n".join(f"    value_{i} = compute({i})  # step {i}" for i in range(120))
    text = f"Here you go:\n```python\n{code}\n```\nThat's all."
    settings = settings_for(world, redis_settings, tmp_path)
    async with (
        scripted(echo_engine_cls, redis, redis_settings, lambda r: text),
        running_adapter(settings, redis),
    ):
        await fake.say(world.alice, world.general, "some code please", mention_bot=True)
        await fake.wait_for(
            lambda: bool(fake.bot_messages()) and fake.bot_messages()[-1].text.endswith("all.")
        )
    parts = [m.text for m in fake.bot_messages(world.general)]
    assert len(parts) >= 2 and all(len(p) <= 2000 for p in parts)
    for part in parts:
        assert part.count("```") % 2 == 0, part  # every message renders on its own
    assert all(p.startswith("```python") for p in parts[1:-1])
    lines = [line for p in parts for line in p.splitlines() if "value_" in line]
    assert lines == code.splitlines()


async def test_mass_mentions_are_neutralised(
    fake, world, redis, redis_settings, tmp_path, echo_engine_cls
) -> None:
    text = f"@everyone look! @here too, and <@&{world.admins.id}> and <@{world.bob.id}>"
    settings = settings_for(world, redis_settings, tmp_path)
    async with (
        scripted(echo_engine_cls, redis, redis_settings, lambda r: text),
        running_adapter(settings, redis),
    ):
        asked = await fake.say(world.alice, world.general, "ping everyone", mention_bot=True)
        reply = await reply_to(fake, asked)
    assert "@everyone" not in reply.text and "@here" not in reply.text
    assert reply.text.startswith(f"@{ZWSP}everyone look! @{ZWSP}here too")
    assert reply.allowed_mentions == {"parse": []}


async def test_engine_error_becomes_a_short_human_reply(
    fake, world, redis, redis_settings, tmp_path, echo_engine_cls
) -> None:
    class FailingEngine(echo_engine_cls):  # type: ignore[misc, valid-type]
        def reply_events(self, delivery: Delivery) -> list[Any]:
            message = "I'm busy, try again in a moment."
            return [Error(request_id=delivery.request.id, seq=0, code="busy", message=message)]

    settings = settings_for(world, redis_settings, tmp_path)
    async with FailingEngine(redis, redis_settings), running_adapter(settings, redis):
        asked = await fake.say(world.alice, world.general, "hello?", mention_bot=True)
        reply = await reply_to(fake, asked)
    assert reply.text == "I'm busy, try again in a moment."


async def test_a_channel_it_may_not_post_in_costs_one_logged_error(
    fake, world, redis, redis_settings, tmp_path, echo_engine
) -> None:
    fake.read_only.add(world.chatty.id)
    settings = settings_for(world, redis_settings, tmp_path)
    async with running_adapter(settings, redis):
        refused = await fake.say(world.bob, world.chatty, "can you answer here?")
        # Handled in order: the refusal is counted long before this message's reply lands.
        asked = await fake.say(world.bob, world.general, "and here?", mention_bot=True)
        assert (await reply_to(fake, asked)).text == "echo: and here?"
    assert fake.replies_to(refused) == []
    assert metric("parley_discord_errors_total", settings, kind="discord") == 1
    assert metric("parley_discord_errors_total", settings, kind="handler") == 0


async def test_an_over_long_message_gets_a_short_answer(
    fake, world, redis, redis_settings, tmp_path, echo_engine
) -> None:
    settings = settings_for(world, redis_settings, tmp_path, max_message_chars=40)
    async with running_adapter(settings, redis):
        asked = await fake.say(world.alice, world.general, "x " * 50, mention_bot=True)
        reply = await reply_to(fake, asked)
    assert "too long" in reply.text and "40" in reply.text
    assert echo_engine.served == []


async def test_a_full_queue_is_answered_busy_at_once(fake, world, redis, tmp_path) -> None:
    small = RedisSettings(shards=1, max_stream_len=10, claim_idle_ms=200, reply_stream_ttl_s=60)
    for n in range(10):  # a backlog no engine is reading
        await redis.xadd(keys.request_stream(0), {keys.FIELD: f"queued {n}"})
    settings = settings_for(world, small, tmp_path)
    async with running_adapter(settings, redis):
        asked = await fake.say(world.alice, world.general, "anyone?", mention_bot=True)
        reply = await reply_to(fake, asked)
    assert reply.text == BUSY_MESSAGE


# -- exactly one reply -------------------------------------------------------------------------


async def test_gateway_dropped_mid_reply_resumes_and_every_reply_lands_once(
    fake, world, redis, redis_settings, tmp_path
) -> None:
    text = "The first half of the answer, and then the second half of it."
    settings = settings_for(world, redis_settings, tmp_path)
    async with (
        GatedEngine(redis, redis_settings, text, first="The first half") as engine,
        running_adapter(settings, redis),
    ):
        asked = await fake.say(world.alice, world.general, "long one?", mention_bot=True)
        await reply_to(fake, asked, final="The first half")
        await fake.drop_gateway()
        while_down = await fake.say(world.bob, world.general, "are you there?", mention_bot=True)
        await fake.wait_for(lambda: fake.resumes == 1)
        engine.release.set()
        await reply_to(fake, asked, final=text)
        await reply_to(fake, while_down, final=text)
        await fake.deliver(asked)  # Discord delivering the same message again
        await fake.send_reconnect()
        await fake.wait_for(lambda: fake.resumes == 2)
        after = await fake.say(world.alice, world.general, "one more", mention_bot=True)
        await reply_to(fake, after, final=text)
    assert fake.identifies == 1  # resumed both times, never a new session
    assert len(fake.replies_to(asked)) == 1 and len(fake.replies_to(while_down)) == 1
    assert sorted(engine.answered) == sorted(
        f"discord-m-{m.id}" for m in (asked, while_down, after)
    )


async def test_a_reply_whose_message_was_deleted_ends_quietly(
    fake, world, redis, redis_settings, tmp_path
) -> None:
    text = "A reply that nobody will see the end of."
    settings = settings_for(world, redis_settings, tmp_path)
    async with (
        GatedEngine(redis, redis_settings, text, first="A reply") as engine,
        running_adapter(settings, redis),
    ):
        asked = await fake.say(world.alice, world.general, "talk", mention_bot=True)
        shown = await reply_to(fake, asked, final="A reply")
        fake.delete(shown)
        engine.release.set()
        later = await fake.say(world.alice, world.general, "still ok?", mention_bot=True)
        await reply_to(fake, later, final=text)
    assert shown.texts == ["A reply"] and len(fake.replies_to(asked)) == 1
    assert metric("parley_discord_errors_total", settings, kind="handler") == 0


async def test_stopping_lets_the_reply_in_flight_finish(
    fake, world, redis, redis_settings, tmp_path
) -> None:
    text = "Begun before the stop, finished after it."
    settings = settings_for(world, redis_settings, tmp_path)
    async with (
        GatedEngine(redis, redis_settings, text, first="Begun") as engine,
        running_adapter(settings, redis) as adapter,
    ):
        asked = await fake.say(world.alice, world.general, "quick!", mention_bot=True)
        await reply_to(fake, asked, final="Begun")
        adapter.stop.set()  # SIGTERM, as parley handles it
        engine.release.set()
        await asyncio.wait_for(adapter.task, 30)  # serve returns once the reply is out
        assert fake.replies_to(asked)[0].text == text


# -- limits ------------------------------------------------------------------------------------


async def test_a_rate_limited_user_gets_one_notice_per_window(
    fake, world, redis, redis_settings, tmp_path, echo_engine
) -> None:
    settings = settings_for(world, redis_settings, tmp_path, rate_limit="2/minute")
    async with running_adapter(settings, redis):
        for text in ("one", "two"):
            asked = await fake.say(world.alice, world.general, text, mention_bot=True)
            await reply_to(fake, asked)
        third = await fake.say(world.alice, world.general, "three", mention_bot=True)
        notice = await reply_to(fake, third)
        fourth = await fake.say(world.alice, world.general, "four", mention_bot=True)
        other = await fake.say(world.bob, world.general, "my turn", mention_bot=True)
        await reply_to(fake, other)  # handled after "four", whose refusal is quick
    assert metric("parley_discord_throttled_total", settings) == 2
    assert notice.text.startswith("You're sending messages faster than I can answer.")
    assert fake.replies_to(fourth) == []
    assert [d.request.text for d in echo_engine.served] == ["one", "two", "my turn"]


async def test_a_429_from_rest_is_retried_by_the_library_and_counted(
    fake, world, redis, redis_settings, tmp_path, echo_engine
) -> None:
    settings = settings_for(world, redis_settings, tmp_path)
    async with running_adapter(settings, redis):
        fake.fail_next("POST", r"/channels/\d+/messages", retry_after_s=0.2)
        asked = await fake.say(world.alice, world.general, "hi", mention_bot=True)
        reply = await reply_to(fake, asked)
        fake.fail_next("POST", r"/webhooks/\d+/[^/]+", retry_after_s=0.2)  # a follow-up
        status = await run_slash(fake, world.bob, world.general, "status")
    assert reply.text == "echo: hi" and len(fake.replies_to(asked)) == 1
    assert status.startswith("No engine")  # the echo engine sends no heartbeats
    assert len(fake.rate_limited) == 2
    assert metric("parley_discord_http_429_total", settings) == 2


# -- slash commands ----------------------------------------------------------------------------


async def run_slash(
    fake: FakeDiscord, user: Any, channel: Any, name: str, *, until: str = "", **opts: str
) -> str:
    """Run ``/name``; check it was deferred and answered by a follow-up; the follow-up text
    (once it starts with ``until``: a streamed ``/chat`` follow-up is edited as it grows)."""
    interaction = await fake.slash(user, channel, name, **opts)

    def answered() -> bool:
        followups = fake.followups(interaction)
        return bool(followups) and followups[0].text.startswith(until)

    await fake.wait_for(answered)
    assert [c["type"] for c in interaction.callbacks] == [5]  # deferred, "thinking"
    return "\n".join(m.text for m in fake.followups(interaction))


@contextlib.asynccontextmanager
async def trainer_running(redis: aioredis.Redis, settings: Settings) -> AsyncIterator[None]:
    """The real trainer service, which answers /retrain and the consent part of /forget."""
    service = TrainerService(settings, redis, registry=ModelRegistry(settings.models_dir))
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(service.run(stop, ready=ready))
    await asyncio.wait({task, asyncio.create_task(ready.wait())}, return_when="FIRST_COMPLETED")
    if task.done():
        task.result()
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_every_slash_command(
    fake, world, redis, redis_settings, tmp_path, echo_engine
) -> None:
    settings = settings_for(world, redis_settings, tmp_path).model_copy(
        update={"learning": LearningSettings(corpora=[])}  # nothing to train on: no real run
    )
    async with trainer_running(redis, settings), running_adapter(settings, redis):
        synced = {c["name"] for c in fake.commands[world.guild.id]}
        chat = await run_slash(
            fake, world.bob, world.general, "chat", until="echo:", message="hi via slash"
        )
        blank = await run_slash(fake, world.bob, world.general, "chat", message="  ")
        help_text = await run_slash(fake, world.bob, world.general, "help")
        reset = await run_slash(fake, world.bob, world.general, "reset")
        forget = await run_slash(fake, world.bob, world.general, "forget")
        optout = await run_slash(fake, world.bob, world.general, "optout")
        optin = await run_slash(fake, world.bob, world.general, "optin")
        status = await run_slash(fake, world.bob, world.general, "status")
        model = await run_slash(fake, world.alice, world.general, "model")
        rollback = await run_slash(fake, world.carol, world.general, "rollback", version="v9")
        retrain = await run_slash(fake, world.alice, world.general, "retrain")
    assert synced == {"chat"} | {spec.name for spec in COMMANDS}
    assert chat == "echo: hi via slash"
    assert blank == "Say something after /chat, and I'll answer."
    assert "/reset" in help_text and "/retrain" not in help_text  # bob is no admin
    assert reset.startswith("Done") and forget.startswith("Done — I deleted")
    assert "no longer archived" in optout and "archived" in optin
    assert "engine" in status
    assert model.startswith("Model versions") or model.startswith("No model versions")
    assert rollback.startswith("/rollback failed")  # carol is an admin by role; no v9 exists
    assert "could not start" in retrain and "no conversations" in retrain  # alice: by id
    controls = [d.request for d in echo_engine.served if not isinstance(d.request, ChatRequest)]
    assert [c.command for c in controls] == ["reset", "forget"]
    assert controls[0].conversation == f"discord:{world.general.id}:{world.bob.id}"


async def test_a_non_admin_cannot_retrain(
    fake, world, redis, redis_settings, tmp_path, echo_engine
) -> None:
    settings = settings_for(world, redis_settings, tmp_path)
    async with running_adapter(settings, redis):
        refused = await run_slash(fake, world.bob, world.general, "retrain")
        refused_model = await run_slash(fake, world.bob, world.general, "model")
        first = next(iter(fake.interactions.values()))
        await fake.redeliver(first)  # the same interaction again: no second answer
        await run_slash(fake, world.bob, world.general, "help")
    assert refused == "Only this bot's admins can use /retrain."
    assert refused_model == "Only this bot's admins can use /model."
    assert first.attempts == 1 and len(fake.followups(first)) == 1  # not even tried again
    assert await redis.exists(keys.TRAINER_REQUESTS) == 0  # nothing was asked of the trainer


def _attachment(attachment_id: int) -> dict[str, Any]:
    return {
        "id": str(attachment_id),
        "filename": "cat.png",
        "size": 1024,
        "url": "http://127.0.0.1/cat.png",
        "proxy_url": "http://127.0.0.1/cat.png",
    }
