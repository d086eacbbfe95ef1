"""Hostile answers: 2xx payloads of the wrong shape, for each wire format, streamed and not.

Every one must end the call with ``APIResponseError`` (never ``TypeError``,
``AttributeError``, ``KeyError``...), carry the offending payload with the API key redacted,
and reach the caller before any delta of that payload does. The hypothesis tests feed
random JSON shapes built from each format's own vocabulary and allow nothing but the
library's typed errors out.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import respx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from promptkit_async.errors import APIResponseError, APIStatusError, ProviderError
from promptkit_async.providers import (
    AnthropicProvider,
    GeminiProvider,
    OpenAIProvider,
    ProviderRequest,
)
from promptkit_async.providers._http import HTTPProvider
from promptkit_async.types import Message

from .conftest import (
    ANTHROPIC_KEY,
    ANTHROPIC_MODEL,
    ANTHROPIC_URL,
    API_KEY,
    CHAT_URL,
    FAST_RETRY,
    GEMINI_KEY,
    GEMINI_MODEL,
    GEMINI_STREAM_URL,
    GEMINI_URL,
)

HELLO = ProviderRequest([Message("user", "Hi")])


def _note(key: str) -> str:
    # Every hostile payload carries the key, to prove the error's body is redacted.
    return f"echo of {key}"


# --- OpenAI ----------------------------------------------------------------------------------

_OK_DELTA = {"choices": [{"index": 0, "delta": {"content": "ok"}}]}


def _o_chunk(**choice: Any) -> dict[str, Any]:
    return {"id": "c1", "choices": [{"index": 0, **choice}]}


#: (case id, a streamed chunk of the wrong shape)
OPENAI_CHUNKS: list[tuple[str, dict[str, Any]]] = [
    ("usage values are strings", {"choices": [], "usage": {"prompt_tokens": "12"}}),
    ("usage is a list", {"choices": [], "usage": [12, 5]}),
    ("negative token count", {"choices": [], "usage": {"prompt_tokens": -5}}),
    ("1e308 tokens", {"choices": [], "usage": {"completion_tokens": 1e308}}),
    ("token count is a bool", {"choices": [], "usage": {"prompt_tokens": True}}),
    ("cached tokens a string", {"usage": {"prompt_tokens_details": {"cached_tokens": "9"}}}),
    ("choices is a string", {"choices": "abc"}),
    ("choices is an object", {"choices": {"0": {"delta": {"content": "x"}}}}),
    ("a choice is a string", {"choices": ["x"]}),
    ("delta is a string", _o_chunk(delta="hello")),
    ("finish_reason is a list", _o_chunk(delta={}, finish_reason=["stop"])),
    ("tool_calls is a string", _o_chunk(delta={"tool_calls": "call"})),
    ("a tool call is a string", _o_chunk(delta={"tool_calls": ["call"]})),
    ("tool call index is a string", _o_chunk(delta={"tool_calls": [{"index": "0"}]})),
    ("function is a list", _o_chunk(delta={"tool_calls": [{"index": 0, "function": [1]}]})),
    ("arguments are an object", _o_chunk(delta={"tool_calls": [{"function": {"arguments": {}}}]})),
    ("tool call id is a number", _o_chunk(delta={"tool_calls": [{"id": 7}]})),
    ("content is a number", _o_chunk(delta={"content": 42})),
    ("content is a list", _o_chunk(delta={"content": [{"type": "text", "text": "x"}]})),
    ("refusal is an object", _o_chunk(delta={"refusal": {"text": "no"}})),
    ("id is a number", {"id": 5, "choices": []}),
    ("model is a list", {"id": "c1", "model": ["gpt"], "choices": []}),
]

_COMPLETION = {
    "id": "c1",
    "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


def _o_completion(**changes: Any) -> dict[str, Any]:
    body = json.loads(json.dumps(_COMPLETION))
    body.update(changes)
    return body


def _o_message(**message: Any) -> dict[str, Any]:
    return _o_completion(choices=[{"index": 0, "message": message, "finish_reason": "stop"}])


OPENAI_BODIES: list[tuple[str, dict[str, Any]]] = [
    ("usage values are strings", _o_completion(usage={"prompt_tokens": "3"})),
    ("usage is a list", _o_completion(usage=[3, 1])),
    ("negative token count", _o_completion(usage={"prompt_tokens": -3})),
    ("1e308 tokens", _o_completion(usage={"prompt_tokens": 1e308})),
    ("choices is a string", _o_completion(choices="abc")),
    ("choices is an object", _o_completion(choices={"0": {}})),
    ("no choices", _o_completion(choices=[])),
    ("message is a string", _o_completion(choices=[{"message": "Hi"}])),
    ("finish_reason is a list", _o_completion(choices=[{"message": {}, "finish_reason": [1]}])),
    ("content is a number", _o_message(content=42)),
    ("content is a list", _o_message(content=["Hi"])),
    ("tool_calls is a string", _o_message(tool_calls="call")),
    ("tool call without a name", _o_message(tool_calls=[{"id": "x", "function": {}}])),
    ("tool call name is a number", _o_message(tool_calls=[{"function": {"name": 1}}])),
]


# --- Anthropic -------------------------------------------------------------------------------

_A_START = {
    "type": "message_start",
    "message": {"id": "msg_1", "model": ANTHROPIC_MODEL, "usage": {"input_tokens": 3}},
}


def _a_delta(delta: Any) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": 0, "delta": delta}


ANTHROPIC_EVENTS: list[tuple[str, dict[str, Any]]] = [
    ("message is a string", {"type": "message_start", "message": "msg"}),
    (
        "usage values are strings",
        {"type": "message_start", "message": {"usage": {"input_tokens": "3"}}},
    ),
    ("usage is a list", {"type": "message_start", "message": {"usage": [3]}}),
    (
        "negative token count",
        {"type": "message_delta", "delta": {}, "usage": {"output_tokens": -1}},
    ),
    ("1e308 tokens", {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 1e308}}),
    ("message id is a number", {"type": "message_start", "message": {"id": 1}}),
    ("delta is a string", _a_delta("text")),
    ("text is a number", _a_delta({"type": "text_delta", "text": 42})),
    ("text is a list", _a_delta({"type": "text_delta", "text": ["x"]})),
    ("partial_json is an object", _a_delta({"type": "input_json_delta", "partial_json": {}})),
    (
        "content_block is a string",
        {"type": "content_block_start", "index": 0, "content_block": "x"},
    ),
    (
        "tool name is a number",
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "tool_use", "name": 5},
        },
    ),
    (
        "tool input is a list",
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": [1]},
        },
    ),
    (
        "block index is a list",
        {"type": "content_block_start", "index": [0], "content_block": {"type": "tool_use"}},
    ),
    (
        "text block text is a number",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": 1}},
    ),
    ("message_delta delta is a string", {"type": "message_delta", "delta": "end_turn"}),
    ("stop_reason is a list", {"type": "message_delta", "delta": {"stop_reason": ["end_turn"]}}),
]

_MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": ANTHROPIC_MODEL,
    "content": [{"type": "text", "text": "Hi"}],
    "stop_reason": "end_turn",
    "usage": {"input_tokens": 3, "output_tokens": 1},
}


def _a_message(**changes: Any) -> dict[str, Any]:
    body = json.loads(json.dumps(_MESSAGE))
    body.update(changes)
    return body


ANTHROPIC_BODIES: list[tuple[str, dict[str, Any]]] = [
    ("content is a string", _a_message(content="Hi")),
    ("a block is a string", _a_message(content=["Hi"])),
    ("text is a number", _a_message(content=[{"type": "text", "text": 42}])),
    ("tool_use id is a number", _a_message(content=[{"type": "tool_use", "id": 1, "name": "f"}])),
    ("tool_use without a name", _a_message(content=[{"type": "tool_use", "id": "t"}])),
    (
        "tool_use input is a list",
        _a_message(content=[{"type": "tool_use", "id": "t", "name": "f", "input": [1]}]),
    ),
    ("usage values are strings", _a_message(usage={"input_tokens": "3"})),
    ("usage is a list", _a_message(usage=[3, 1])),
    ("negative token count", _a_message(usage={"input_tokens": -3})),
    ("1e308 tokens", _a_message(usage={"output_tokens": 1e308})),
    ("stop_reason is a list", _a_message(stop_reason=["end_turn"])),
    ("model is a number", _a_message(model=4)),
]


# --- Gemini ----------------------------------------------------------------------------------


def _g(candidate: Any = None, **top: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"responseId": "r1", "modelVersion": GEMINI_MODEL}
    if candidate is not None:
        body["candidates"] = [candidate]
    body.update(top)
    return body


def _g_parts(*parts: Any) -> dict[str, Any]:
    return _g({"content": {"role": "model", "parts": list(parts)}})


GEMINI_PAYLOADS: list[tuple[str, dict[str, Any]]] = [
    ("candidates is a string", _g(candidates="abc")),
    ("candidates is an object", _g(candidates={"0": {}})),
    ("a candidate is a string", _g(candidates=["x"])),
    ("content is a string", _g({"content": "Hi"})),
    ("parts is an object", _g({"content": {"parts": {"text": "Hi"}}})),
    ("a part is a string", _g_parts("Hi")),
    ("text is a number", _g_parts({"text": 42})),
    ("text is a list", _g_parts({"text": ["Hi"]})),
    ("functionCall is a string", _g_parts({"functionCall": "f"})),
    ("functionCall name is a number", _g_parts({"functionCall": {"name": 3}})),
    ("functionCall without a name", _g_parts({"functionCall": {"args": {}}})),
    ("functionCall args is a list", _g_parts({"functionCall": {"name": "f", "args": [1]}})),
    (
        "thoughtSignature is a number",
        _g_parts({"functionCall": {"name": "f"}, "thoughtSignature": 1}),
    ),
    ("finishReason is a list", _g({"content": {"parts": []}, "finishReason": ["STOP"]})),
    ("usageMetadata is a string", _g(usageMetadata="lots")),
    ("usage values are strings", _g(usageMetadata={"promptTokenCount": "3"})),
    ("negative token count", _g(usageMetadata={"candidatesTokenCount": -2})),
    ("1e308 tokens", _g(usageMetadata={"totalTokenCount": 1e308})),
    ("promptFeedback is a list", _g(promptFeedback=["SAFETY"])),
    ("responseId is a number", _g(responseId=7)),
]

_G_END = _g({"content": {"role": "model", "parts": [{"text": "ok"}]}, "finishReason": "STOP"})


# --- the checks ------------------------------------------------------------------------------


def _with_key(payload: dict[str, Any], key: str) -> dict[str, Any]:
    return {**payload, "note": _note(key)}


def _check_error(exc: APIResponseError, payload: dict[str, Any], key: str) -> None:
    assert key not in str(exc)
    assert key not in json.dumps(exc.body)
    assert exc.body == {**payload, "note": "echo of [REDACTED]"}
    assert "expected shape" in exc.message


def _sse(payloads: list[dict[str, Any]], tail: bytes = b"") -> bytes:
    return b"".join(b"data: " + json.dumps(p).encode() + b"\n\n" for p in payloads) + tail


async def _drain(provider: HTTPProvider, into: list[Any] | None = None) -> list[Any]:
    chunks = [] if into is None else into
    stream = provider.stream(HELLO)
    try:
        async for chunk in stream:
            chunks.append(chunk)
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    return chunks


async def _stream_fails(
    provider: HTTPProvider, router: respx.MockRouter, url: str, body: bytes, payload: Any, key: str
) -> None:
    router.post(url__startswith=url).mock(
        return_value=httpx.Response(
            200, headers={"content-type": "text/event-stream"}, content=body
        )
    )
    received: list[Any] = []
    with pytest.raises(APIResponseError) as caught:
        await _drain(provider, received)
    assert received == []  # nothing of the bad payload (nor after it) reached the caller
    _check_error(caught.value, payload, key)


@pytest.mark.parametrize(("case", "payload"), OPENAI_CHUNKS, ids=[c for c, _ in OPENAI_CHUNKS])
async def test_openai_stream_rejects(http_client, router, case, payload) -> None:
    hostile = _with_key(payload, API_KEY)
    body = _sse([hostile, _OK_DELTA, _o_chunk(delta={}, finish_reason="stop")], b"data: [DONE]\n\n")
    async with OpenAIProvider("gpt-4o-mini", api_key=API_KEY, http_client=http_client) as p:
        await _stream_fails(p, router, CHAT_URL, body, payload, API_KEY)


@pytest.mark.parametrize(("case", "payload"), OPENAI_BODIES, ids=[c for c, _ in OPENAI_BODIES])
async def test_openai_complete_rejects(http_client, router, case, payload) -> None:
    router.post(CHAT_URL).mock(return_value=httpx.Response(200, json=_with_key(payload, API_KEY)))
    async with OpenAIProvider("gpt-4o-mini", api_key=API_KEY, http_client=http_client) as p:
        with pytest.raises(APIResponseError) as caught:
            await p.complete(HELLO)
    _check_error(caught.value, payload, API_KEY)


@pytest.mark.parametrize(
    ("case", "payload"), ANTHROPIC_EVENTS, ids=[c for c, _ in ANTHROPIC_EVENTS]
)
async def test_anthropic_stream_rejects(http_client, router, case, payload) -> None:
    hostile = _with_key(payload, ANTHROPIC_KEY)
    body = _sse(
        [
            hostile,
            _A_START,
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}},
            _a_delta({"type": "text_delta", "text": "ok"}),
            {"type": "message_stop"},
        ]
    )
    async with AnthropicProvider(
        ANTHROPIC_MODEL, api_key=ANTHROPIC_KEY, http_client=http_client
    ) as p:
        await _stream_fails(p, router, ANTHROPIC_URL, body, payload, ANTHROPIC_KEY)


@pytest.mark.parametrize(
    ("case", "payload"), ANTHROPIC_BODIES, ids=[c for c, _ in ANTHROPIC_BODIES]
)
async def test_anthropic_complete_rejects(http_client, router, case, payload) -> None:
    router.post(ANTHROPIC_URL).mock(
        return_value=httpx.Response(200, json=_with_key(payload, ANTHROPIC_KEY))
    )
    async with AnthropicProvider(
        ANTHROPIC_MODEL, api_key=ANTHROPIC_KEY, http_client=http_client
    ) as p:
        with pytest.raises(APIResponseError) as caught:
            await p.complete(HELLO)
    _check_error(caught.value, payload, ANTHROPIC_KEY)


@pytest.mark.parametrize(("case", "payload"), GEMINI_PAYLOADS, ids=[c for c, _ in GEMINI_PAYLOADS])
async def test_gemini_stream_rejects(http_client, router, case, payload) -> None:
    body = _sse([_with_key(payload, GEMINI_KEY), _G_END])
    async with GeminiProvider(GEMINI_MODEL, api_key=GEMINI_KEY, http_client=http_client) as p:
        await _stream_fails(p, router, GEMINI_STREAM_URL, body, payload, GEMINI_KEY)


@pytest.mark.parametrize(("case", "payload"), GEMINI_PAYLOADS, ids=[c for c, _ in GEMINI_PAYLOADS])
async def test_gemini_complete_rejects(http_client, router, case, payload) -> None:
    router.post(GEMINI_URL).mock(
        return_value=httpx.Response(200, json=_with_key(payload, GEMINI_KEY))
    )
    async with GeminiProvider(GEMINI_MODEL, api_key=GEMINI_KEY, http_client=http_client) as p:
        with pytest.raises(APIResponseError) as caught:
            await p.complete(HELLO)
    _check_error(caught.value, payload, GEMINI_KEY)


async def test_good_prefix_is_delivered_before_the_bad_chunk(http_client, router) -> None:
    # What was valid before the hostile chunk is the caller's; the hostile chunk is not.
    body = _sse([_OK_DELTA, _o_chunk(delta={"content": 42})], b"data: [DONE]\n\n")
    router.post(CHAT_URL).mock(
        return_value=httpx.Response(
            200, headers={"content-type": "text/event-stream"}, content=body
        )
    )
    received: list[Any] = []
    async with OpenAIProvider("gpt-4o-mini", api_key=API_KEY, http_client=http_client) as p:
        with pytest.raises(APIResponseError, match="content is int"):
            await _drain(p, received)
    assert [c.delta for c in received] == ["ok"]


# --- random shapes (hypothesis) ----------------------------------------------------------------

_WORDS = {
    "openai": [
        "id", "model", "choices", "index", "delta", "message", "content", "refusal",
        "tool_calls", "function", "name", "arguments", "finish_reason", "usage",
        "prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details",
        "cached_tokens",
    ],
    "anthropic": [
        "type", "message", "id", "model", "usage", "input_tokens", "output_tokens",
        "cache_read_input_tokens", "index", "delta", "text", "partial_json", "content",
        "content_block", "input", "name", "stop_reason", "message_start", "message_delta",
        "content_block_start", "content_block_delta", "content_block_stop", "text_delta",
        "input_json_delta", "tool_use",
    ],
    "gemini": [
        "responseId", "modelVersion", "candidates", "content", "parts", "text", "thought",
        "functionCall", "name", "args", "id", "thoughtSignature", "finishReason",
        "usageMetadata", "promptTokenCount", "candidatesTokenCount", "totalTokenCount",
        "promptFeedback", "blockReason", "STOP",
    ],
}  # fmt: skip


def _json(words: list[str]) -> st.SearchStrategy[Any]:
    keys = st.sampled_from(words) | st.text(max_size=4)
    leaves = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**63), max_value=2**63)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.sampled_from(words)
        | st.text(max_size=8)
    )
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=5),
        max_leaves=25,
    )


def _payloads(kind: str) -> st.SearchStrategy[Any]:
    words = _WORDS[kind]
    return st.dictionaries(st.sampled_from(words), _json(words), max_size=6) | _json(words)


def _allowed(exc: BaseException, payloads: list[Any]) -> bool:
    if isinstance(exc, APIResponseError):
        return True
    # An error object inside a 2xx answer is reported as the status error it stands for.
    return isinstance(exc, APIStatusError) and any(
        isinstance(p, dict) and ("error" in p or p.get("type") == "error") for p in payloads
    )


_FORMATS: dict[str, tuple[Callable[[httpx.AsyncClient], HTTPProvider], str, str]] = {
    "openai": (
        lambda c: OpenAIProvider("gpt-4o-mini", api_key=API_KEY, http_client=c),
        CHAT_URL,
        CHAT_URL,
    ),
    "anthropic": (
        lambda c: AnthropicProvider(ANTHROPIC_MODEL, api_key=ANTHROPIC_KEY, http_client=c),
        ANTHROPIC_URL,
        ANTHROPIC_URL,
    ),
    "gemini": (
        lambda c: GeminiProvider(GEMINI_MODEL, api_key=GEMINI_KEY, http_client=c),
        GEMINI_STREAM_URL,
        GEMINI_URL,
    ),
}


@pytest.mark.parametrize("kind", sorted(_FORMATS))
def test_random_shapes_raise_only_typed_errors(kind: str) -> None:
    make, stream_url, url = _FORMATS[kind]
    router = respx.MockRouter(assert_all_called=False)
    body: dict[str, Any] = {}

    def answer(request: httpx.Request) -> httpx.Response:
        if body["stream"]:
            return httpx.Response(
                200, headers={"content-type": "text/event-stream"}, content=body["content"]
            )
        return httpx.Response(200, content=body["content"])

    router.post(url__startswith=stream_url).mock(side_effect=answer)
    router.post(url__startswith=url).mock(side_effect=answer)

    async def one(client: httpx.AsyncClient, payloads: list[Any], stream: bool) -> None:
        body["stream"] = stream
        body["content"] = (
            _sse(payloads) if stream else json.dumps(payloads[0]).encode()  # type: ignore[arg-type]
        )
        provider = make(client)
        provider.max_retries = 0
        provider.retry_policy = FAST_RETRY
        error: ProviderError | None = None
        try:
            if stream:
                for chunk in await _drain(provider):
                    assert isinstance(chunk.delta, str)
                    assert all(isinstance(d.arguments, str) for d in chunk.tool_call_deltas)
            else:
                response = await provider.complete(HELLO)
                assert isinstance(response.content, str)
                assert response.usage.total_tokens >= 0
        except ProviderError as exc:
            error = exc
        finally:
            await provider.aclose()
        # Anything but a ProviderError has escaped above and fails the example.
        assert error is None or _allowed(error, payloads), repr(error)

    loop = asyncio.new_event_loop()
    try:

        async def new_client() -> httpx.AsyncClient:
            return httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler))

        client = loop.run_until_complete(new_client())

        @settings(
            max_examples=100,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(payloads=st.lists(_payloads(kind), min_size=1, max_size=4), stream=st.booleans())
        def check(payloads: list[Any], stream: bool) -> None:
            loop.run_until_complete(one(client, payloads, stream))

        try:
            check()
        finally:
            loop.run_until_complete(client.aclose())
    finally:
        loop.close()
