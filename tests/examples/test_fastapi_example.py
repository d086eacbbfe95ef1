"""examples/fastapi_app.py driven in-process with httpx.ASGITransport, many sessions at once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from examples.fastapi_app import create_app
from promptkit_async import (
    DemoProvider,
    InMemoryStateStore,
    Message,
    MockProvider,
    ProviderRequest,
    RateLimitError,
)


@pytest.fixture
def store() -> InMemoryStateStore:
    return InMemoryStateStore()


@pytest.fixture
async def served(store: InMemoryStateStore) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(provider=DemoProvider(model="gpt-4o-mini"), store=store)
    # ASGITransport does not run the lifespan: enter it as a server would.
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield app, client


def events(body: str) -> list[tuple[str, dict[str, object]]]:
    """Parse a server-sent events body into (event, data) pairs."""
    out = []
    for block in body.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((fields["event"], json.loads(fields["data"])))
    return out


async def test_post_message_returns_reply_usage_and_cost(
    served: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    _, client = served
    r = await client.post("/sessions/alice/messages", json={"content": "My name is Alice"})
    assert r.status_code == 200
    body = r.json()
    assert body["content"] == "Hello Alice! It's nice to meet you."
    assert body["session_id"] == "alice"
    assert body["usage"]["total_tokens"] == (
        body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )
    assert body["usage"]["total_tokens"] > 0
    assert body["cost"]["total_cost"] > 0
    assert body["cost"]["priced"] is True
    r = await client.post("/sessions/alice/messages", json={"content": "What's my name?"})
    assert r.json()["content"] == "Your name is Alice."


async def test_many_sessions_concurrently_keep_their_own_memory(
    served: tuple[FastAPI, httpx.AsyncClient], store: InMemoryStateStore
) -> None:
    _, client = served

    async def user(i: int) -> list[str]:
        said = [f"My name is User{i}", f"I love dish{i}", "What's my name?", "What do I love?"]
        replies = []
        for text in said:
            r = await client.post(f"/sessions/user-{i}/messages", json={"content": text})
            assert r.status_code == 200, r.text
            replies.append(r.json()["content"])
        return replies

    results = await asyncio.gather(*(user(i) for i in range(60)))
    for i, replies in enumerate(results):
        assert replies[2] == f"Your name is User{i}."
        assert replies[3] == f"You mentioned that you love dish{i}!"
        assert len(await store.load(f"user-{i}")) == 8


async def test_turns_on_one_session_are_serialised(
    served: tuple[FastAPI, httpx.AsyncClient], store: InMemoryStateStore
) -> None:
    _, client = served
    texts = [f"I live in Town{i}" for i in range(20)]
    await asyncio.gather(
        *(client.post("/sessions/shared/messages", json={"content": t}) for t in texts)
    )
    stored = await store.load("shared")
    # Every turn is stored whole: user message immediately followed by its reply.
    assert len(stored) == 40
    for user, bot in zip(stored[::2], stored[1::2], strict=True):
        town = user.content.removeprefix("I live in ")
        assert bot.content == f"{town} sounds like a lovely place to live."


async def test_stream_sends_deltas_then_done(
    served: tuple[FastAPI, httpx.AsyncClient], store: InMemoryStateStore
) -> None:
    _, client = served
    await client.post("/sessions/s/messages", json={"content": "My name is Alice"})
    r = await client.post("/sessions/s/messages/stream", json={"content": "What's my name?"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    parsed = events(r.text)
    kinds = [kind for kind, _ in parsed]
    assert kinds[-1] == "done"
    assert set(kinds[:-1]) == {"delta"}
    assert len(kinds) > 2
    text = "".join(str(data["delta"]) for kind, data in parsed if kind == "delta")
    assert text == "Your name is Alice."
    done = parsed[-1][1]
    assert done["content"] == text
    assert done["usage"]["total_tokens"] > 0  # type: ignore[index]
    assert len(await store.load("s")) == 4


async def test_concurrent_streams_on_many_sessions(
    served: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    _, client = served

    async def user(i: int) -> str:
        await client.post(f"/sessions/u{i}/messages/stream", json={"content": f"My name is N{i}"})
        r = await client.post(f"/sessions/u{i}/messages/stream", json={"content": "Who am I?"})
        return "".join(str(d["delta"]) for k, d in events(r.text) if k == "delta")

    answers = await asyncio.gather(*(user(i) for i in range(40)))
    assert answers == [f"Your name is N{i}." for i in range(40)]


async def test_delete_forgets_the_session(
    served: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    _, client = served
    await client.post("/sessions/bob/messages", json={"content": "My name is Bob"})
    r = await client.get("/sessions/bob/messages")
    assert [m["role"] for m in r.json()] == ["user", "assistant"]
    r = await client.delete("/sessions/bob")
    assert r.json() == {"deleted": True}
    assert (await client.get("/sessions/bob/messages")).json() == []
    assert (await client.delete("/sessions/bob")).json() == {"deleted": False}
    r = await client.post("/sessions/bob/messages", json={"content": "What's my name?"})
    assert r.json()["content"].startswith("I don't know your name")


async def test_bad_input_is_422(served: tuple[FastAPI, httpx.AsyncClient]) -> None:
    _, client = served
    r = await client.post("/sessions/s/messages", json={"content": ""})
    assert r.status_code == 422
    r = await client.post("/sessions/s/messages", json={"content": "   "})
    assert r.status_code == 422
    assert r.json()["error"] == "InvalidMessageError"
    r = await client.post("/sessions/%20/messages/stream", json={"content": "hi"})
    assert r.status_code == 422
    assert r.json()["error"] == "InvalidSessionIdError"


async def test_provider_failure_is_502_or_error_event_and_nothing_stored() -> None:
    store = InMemoryStateStore()
    failing = MockProvider(
        [
            RateLimitError("slow down", status_code=429, provider="mock"),
            RateLimitError("slow down", status_code=429, provider="mock"),
        ]
    )
    app = create_app(provider=failing, store=store)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            r = await client.post("/sessions/x/messages", json={"content": "hi"})
            assert r.status_code == 502
            assert r.json()["error"] == "RateLimitError"
            r = await client.post("/sessions/x/messages/stream", json={"content": "hi"})
            assert events(r.text) == [
                ("error", {"error": "RateLimitError", "detail": "mock HTTP 429: slow down"})
            ]
    assert await store.load("x") == []


async def test_one_pipeline_for_the_app_lifetime(store: InMemoryStateStore) -> None:
    provider = DemoProvider()
    app = create_app(provider=provider, store=store)
    async with app.router.lifespan_context(app):
        pipeline = app.state.pipeline
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for i in range(3):
                await client.post(f"/sessions/s{i}/messages", json={"content": "hi"})
        assert app.state.pipeline is pipeline
        assert not pipeline.closed
    # Leaving the lifespan shuts the pipeline down; a provider we passed in is ours to close.
    assert pipeline.closed
    reply = await provider.complete(ProviderRequest([Message("user", "hi")]))
    assert reply.content


async def test_client_disconnect_mid_stream_cancels_the_turn() -> None:
    # The second word would come an hour later: the reply is unfinished at disconnect.
    store = InMemoryStateStore()
    app = create_app(provider=DemoProvider(chunk_delay=3600), store=store)
    first_chunk = asyncio.Event()
    sent: list[dict[str, object]] = []
    body = json.dumps({"content": "My name is Alice"}).encode()
    requests = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, object]:
        if requests:
            return requests.pop()
        await first_chunk.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and b"delta" in message.get("body", b""):  # type: ignore[operator]
            first_chunk.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/sessions/gone/messages/stream",
        "raw_path": b"/sessions/gone/messages/stream",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
        "app": app,
    }
    async with app.router.lifespan_context(app):
        scope["state"] = {}
        await asyncio.wait_for(app(scope, receive, send), 30)
        assert app.state.pipeline.in_flight == 0
    bodies = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")  # type: ignore[misc]
    assert b'"delta":"Hello "' in bodies
    assert b"done" not in bodies
    assert await store.load("gone") == []


async def test_metrics_endpoint_serves_prometheus_text(
    served: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    _, client = served
    await client.post("/sessions/m1/messages", json={"content": "My name is Max"})
    async with client.stream(
        "POST", "/sessions/m1/messages/stream", json={"content": "What is my name?"}
    ) as r:
        await r.aread()
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    samples = {}
    for line in r.text.splitlines():
        if line.startswith(("gen_ai_", "promptkit_")):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)

    def value(prefix: str, *labels: str) -> float:
        [found] = [v for k, v in samples.items() if k.startswith(prefix + "{") and all(
            label in k for label in labels
        )]  # fmt: skip
        return found

    # The two turns, by the names the docs' Grafana dashboard queries.
    assert value("gen_ai_client_operation_duration_seconds_count") == 2
    assert value("gen_ai_client_operation_time_to_first_chunk_seconds_count") == 2
    assert value("gen_ai_client_token_usage_count", 'gen_ai_token_type="input"') == 2
    assert value("gen_ai_client_token_usage_sum", 'gen_ai_token_type="output"') > 0
    assert value("promptkit_client_cost_total") > 0
    assert value("promptkit_turns_active") == 0
    assert value("promptkit_turn_duration_seconds_count", 'outcome="completed"') == 2
    assert value("promptkit_store_operation_duration_seconds_count", 'operation="append"') == 2
    assert 'gen_ai_provider_name="demo"' in r.text
    assert "m1" not in r.text  # no session ids in metrics
