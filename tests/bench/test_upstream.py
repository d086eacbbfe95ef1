"""The mock upstream speaks the OpenAI wire format the benchmark relies on."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from bench.upstream import PROFILES, Upstream


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Upstream, str]]:
    server_state = Upstream(PROFILES["instant"])
    server = await asyncio.start_server(server_state.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield server_state, f"http://127.0.0.1:{port}"
        server.close()


def _body(n: int, **extra: object) -> dict[str, object]:
    messages = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"} for i in range(n)
    ]
    return {"model": "gpt-4o-mini", "messages": messages, **extra}


async def test_stream_is_openai_chunks_with_usage_and_done(upstream: tuple[Upstream, str]) -> None:
    state, url = upstream
    async with (
        httpx.AsyncClient(base_url=url) as client,
        client.stream(
            "POST",
            "/v1/chat/completions",
            json=_body(3, stream=True, stream_options={"include_usage": True}),
        ) as resp,
    ):
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        data = [line[6:] async for line in resp.aiter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(json.loads(d)) for d in data[:-1]]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == state.reply_text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage
    assert usage is not None
    assert not chunks[-1].choices
    assert usage.completion_tokens == PROFILES["instant"].chunks
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert state.requests == 1
    assert state.messages == 3


async def test_usage_chunk_only_when_asked(upstream: tuple[Upstream, str]) -> None:
    _, url = upstream
    async with httpx.AsyncClient(base_url=url) as client:
        resp = await client.post("/v1/chat/completions", json=_body(1, stream=True))
    events = [json.loads(x[6:]) for x in resp.text.split("\n") if x.startswith("data: {")]
    assert events
    assert all("usage" not in e for e in events)


async def test_non_streaming_is_a_chat_completion(upstream: tuple[Upstream, str]) -> None:
    state, url = upstream
    async with httpx.AsyncClient(base_url=url) as client:
        resp = await client.post("/v1/chat/completions", json=_body(5))
    completion = ChatCompletion.model_validate(resp.json())
    assert completion.choices[0].message.content == state.reply_text
    assert completion.usage is not None
    assert state.messages == 5


async def test_keep_alive_and_stats(upstream: tuple[Upstream, str]) -> None:
    state, url = upstream
    async with httpx.AsyncClient(base_url=url) as client:
        for n in (1, 3, 5):
            resp = await client.post("/v1/chat/completions", json=_body(n, stream=True))
            assert resp.status_code == 200
        stats = (await client.get("/__stats")).json()
        assert (await client.post("/__reset")).json() == {"ok": True}
    assert stats["requests"] == 3
    assert stats["messages"] == 9
    assert stats["connections"] == 1  # one keep-alive connection served everything
    assert state.requests == 0


@pytest.mark.parametrize(
    "payload",
    [b"not json", b'{"model": "m"}', b'{"model": "m", "messages": []}', b'{"messages": [{}]}'],
)
async def test_malformed_request_gets_openai_error(
    upstream: tuple[Upstream, str], payload: bytes
) -> None:
    state, url = upstream
    async with httpx.AsyncClient(base_url=url) as client:
        resp = await client.post("/v1/chat/completions", content=payload)
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "invalid_request_error"
    assert state.bad_requests == 1
    assert state.requests == 0


async def test_unknown_route_is_404(upstream: tuple[Upstream, str]) -> None:
    _, url = upstream
    async with httpx.AsyncClient(base_url=url) as client:
        resp = await client.get("/v1/models")
    assert resp.status_code == 404


def test_profiles_match_the_issue() -> None:
    fast, realistic, instant = PROFILES["fast"], PROFILES["realistic"], PROFILES["instant"]
    assert (fast.chunks, fast.first_delay, fast.gap) == (10, 0.010, 0.010)
    assert (realistic.chunks, realistic.first_delay, realistic.gap) == (30, 0.200, 0.030)
    assert instant.duration == 0.0
