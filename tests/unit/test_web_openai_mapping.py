"""The OpenAI API's pure parts: auth by peer address and key, request mapping, response shapes.

No network: requests are aiohttp's mocked requests with a fake transport whose peer address
is whatever the test says (this is how a remote client is simulated here; the integration
tests also connect from a real non-loopback interface when the machine has one).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any
from unittest import mock

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from pydantic import SecretStr

from adapters.web.clients import ClientAddresses
from adapters.web.http import ApiError, decode_json
from adapters.web.openai_api import (
    Completion,
    CompletionBody,
    authenticate,
    key_scope,
    to_chat_request,
)
from bot.wire import Done

KEYS = [SecretStr("key-one"), SecretStr("key-two")]


def request_from(remote: str | None, headers: dict[str, str] | None = None) -> web.Request:
    transport = mock.Mock()
    peer = (remote, 50000) if remote is not None else None
    transport.get_extra_info.side_effect = lambda name, default=None: (
        peer if name == "peername" else default
    )
    return make_mocked_request("GET", "/v1/models", headers=headers or {}, transport=transport)


@pytest.mark.parametrize("remote", ["127.0.0.1", "127.0.0.53", "::1", "::ffff:127.0.0.1"])
def test_without_keys_loopback_is_served(remote: str) -> None:
    assert authenticate(request_from(remote), []) == "loopback"


@pytest.mark.parametrize(
    "remote", ["10.0.0.5", "192.168.1.20", "192.0.2.2", "2001:db8::1", "fe80::1%eth0", None]
)
def test_without_keys_everyone_else_is_refused(remote: str | None) -> None:
    with pytest.raises(ApiError) as caught:
        authenticate(request_from(remote), [])
    assert caught.value.status == 401
    assert "PARLEY_WEB__API_KEYS" in caught.value.message


@pytest.mark.parametrize("remote", ["127.0.0.1", "10.0.0.5"])
def test_with_keys_a_valid_key_is_needed_from_anywhere(remote: str) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": "key-one"},
        {"Authorization": "Basic key-one"},
        {"Authorization": "Bearer "},
    ):
        with pytest.raises(ApiError) as caught:
            authenticate(request_from(remote, headers), KEYS)
        assert caught.value.status == 401 and caught.value.code == "invalid_api_key"
    scope = authenticate(request_from(remote, {"Authorization": "Bearer key-two"}), KEYS)
    assert scope == hashlib.sha256(b"key-two").hexdigest()[:16] == key_scope("key-two")
    assert authenticate(request_from(remote, {"Authorization": "bearer  key-one"}), KEYS) == (
        key_scope("key-one")
    )


def test_names_and_garbage_are_not_local() -> None:
    for remote in ("localhost", "", "not an address"):
        assert not ClientAddresses().is_local(request_from(remote))


def body(**fields: Any) -> CompletionBody:
    return decode_json(json.dumps(fields).encode(), CompletionBody)


def test_messages_map_onto_text_and_history() -> None:
    chat = to_chat_request(
        body(
            messages=[
                {"role": "developer", "content": "rules"},
                {
                    "role": "system",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": None},
                {"role": "user", "content": "and now?"},
            ],
            user="bob",
            max_completion_tokens=7,
            max_tokens=99,
        ),
        scope="abc",
        reply_to="web-1",
        max_message_chars=100,
    )
    assert chat.text == "and now?"
    assert chat.history is not None
    assert [(t.role, t.text) for t in chat.history] == [
        ("system", "rules"),
        ("system", "ab"),
        ("user", "hi"),
        ("bot", ""),
    ]
    assert chat.conversation == "api:abc:bob" and chat.reply_to == "web-1"
    assert chat.sampling.max_new_tokens == 7  # the newer field wins
    assert chat.sampling.temperature is None  # the engine's default


def test_a_lone_user_message_has_empty_history_not_none() -> None:
    chat = to_chat_request(
        body(messages=[{"role": "user", "content": "x"}]),
        scope="s",
        reply_to="r",
        max_message_chars=10,
    )
    assert chat.history == ()  # "no history", not "use the stored history"
    assert chat.conversation == "api:s:default"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": "12345678901"}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "messages[0].content",
        ),
    ],
)
def test_unservable_messages_are_400(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(ApiError) as caught:
        to_chat_request(body(**fields), scope="s", reply_to="r", max_message_chars=10)
    assert caught.value.status == 400 and caught.value.param == param


@pytest.mark.parametrize(
    ("data", "param"),
    [
        (b'{"messages": [], "top_p": 1.5}', "top_p"),
        (b'{"messages": [], "stop": ["a", "b", "c", "d", "e"]}', "stop"),
        (b'{"messages": [], "user": 7}', "user"),
        (b'{"messages": [], "seed": true}', "seed"),
        (
            b'{"messages": [{"role": "user"}], "stream_options": {"include_usage": 1}}',
            "stream_options.include_usage",
        ),
    ],
)
def test_wrong_types_name_the_field(data: bytes, param: str) -> None:
    with pytest.raises(ApiError) as caught:
        decode_json(data, CompletionBody)
    assert caught.value.status == 400 and caught.value.param == param


def test_unknown_fields_are_ignored() -> None:
    parsed = body(messages=[], frequency_penalty=0.5, logit_bias={}, tools=[])
    assert parsed.model == "parley" and parsed.stream is False


def test_whole_completion_shape() -> None:
    done = Done(
        request_id="r",
        seq=3,
        text="hey",
        finish_reason="length",
        prompt_tokens=4,
        completion_tokens=2,
        model_version="v3",
    )
    completion = Completion("parley")
    whole = completion.whole(done)
    assert whole["id"].startswith("chatcmpl-") and whole["object"] == "chat.completion"
    assert whole["model"] == "parley" and isinstance(whole["created"], int)
    assert whole["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hey", "refusal": None},
            "logprobs": None,
            "finish_reason": "length",
        }
    ]
    assert whole["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    done_stop = msgspec.structs.replace(done, finish_reason="done")
    assert completion.whole(done_stop)["choices"][0]["finish_reason"] == "stop"


def test_chunks_are_sse_data_lines() -> None:
    completion = Completion("v1")
    raw = completion.chunk({"content": "é"}, None)
    assert raw.startswith(b"data: ") and raw.endswith(b"\n\n")
    chunk = json.loads(raw[6:])
    assert chunk["object"] == "chat.completion.chunk" and chunk["id"] == completion.id
    assert chunk["choices"][0]["delta"] == {"content": "é"}
    usage = json.loads(
        completion.usage_chunk(Done(request_id="r", seq=0, text="", prompt_tokens=1))[6:]
    )
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 1
