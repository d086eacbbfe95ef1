"""A FastAPI chat backend on promptkit_async: one pipeline for the app's whole lifetime.

Run it::

    pip install -e ".[examples]"
    uvicorn examples.fastapi_app:app

then::

    curl -X POST localhost:8000/sessions/alice/messages \\
         -H 'content-type: application/json' -d '{"content": "My name is Alice"}'
    curl -N -X POST localhost:8000/sessions/alice/messages/stream \\
         -H 'content-type: application/json' -d '{"content": "What is my name?"}'
    curl localhost:8000/sessions/alice/messages
    curl -X DELETE localhost:8000/sessions/alice

Endpoints:

* ``POST /sessions/{id}/messages`` runs one turn and answers JSON with the reply, token
  usage and cost.
* ``POST /sessions/{id}/messages/stream`` streams the reply as server-sent events:
  ``delta`` events with text, then one ``done`` event with usage and cost (or ``error``).
  If the client disconnects mid-reply, the turn is cancelled and nothing of it is stored.
* ``GET /sessions/{id}/messages`` returns the stored history.
* ``DELETE /sessions/{id}`` forgets the session.
* ``GET /metrics`` serves the turn metrics (tokens, durations, time to first chunk, cost,
  retries, turns in flight, store latency) for Prometheus, when the ``otel`` extra,
  ``opentelemetry-sdk`` and ``opentelemetry-exporter-prometheus`` are installed.

With OpenTelemetry installed every turn is also traced (one span per turn, children for
model calls, tools and the store) through the global tracer provider: run the app under
``opentelemetry-instrument`` (or configure the SDK yourself) and a request's span becomes
the parent of its turn's spans. See docs/how-to/observability.md.

The provider is OpenAI when ``OPENAI_API_KEY`` is set, else the offline demo model. The
store is PostgreSQL when ``DATABASE_URL`` is set (``pip install -e ".[postgres]"``; the
tables are created on first use), else Redis when ``REDIS_URL`` is set, else an SQLite
file (``CHAT_DB``, default ``chat.db``), else memory. Both are created once, in the
lifespan, and closed on shutdown; the pipeline is shared by every request (it is safe to
share: turns on different sessions run concurrently, turns on one session one at a time).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from promptkit_async import (
    DemoProvider,
    ExecutionResult,
    GenerationConfig,
    InMemoryStateStore,
    InvalidRequestError,
    Pipeline,
    PipelineClosedError,
    Provider,
    ProviderError,
    ProviderMiddleware,
    ProviderMiddlewareConfig,
    StateMiddleware,
    StateStore,
    StoreError,
    StoreUnavailableError,
)
from promptkit_async.events import Listener


class MessageIn(BaseModel):
    """A user's message."""

    content: str = Field(min_length=1, max_length=32_000)


class UsageOut(BaseModel):
    """Tokens the turn used."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CostOut(BaseModel):
    """What the turn cost, in US dollars."""

    input_cost: float
    output_cost: float
    total_cost: float
    priced: bool


class Reply(BaseModel):
    """The bot's answer to one message."""

    session_id: str
    content: str
    finish_reason: str | None
    usage: UsageOut
    cost: CostOut
    latency: float


class HistoryMessage(BaseModel):
    """One stored message."""

    role: str
    content: str


def reply_of(result: ExecutionResult) -> Reply:
    """The JSON shape of a turn's result."""
    u, c = result.usage, result.cost
    return Reply(
        session_id=result.session_id,
        content=result.response.content,
        finish_reason=result.response.finish_reason,
        usage=UsageOut(
            prompt_tokens=u.prompt_tokens,
            completion_tokens=u.completion_tokens,
            total_tokens=u.total_tokens,
        ),
        cost=CostOut(
            input_cost=c.input_cost + c.cached_cost + c.cache_write_cost,
            output_cost=c.output_cost,
            total_cost=c.total_cost,
            priced=c.priced,
        ),
        latency=result.latency,
    )


def default_provider() -> Provider:
    """OpenAI when ``OPENAI_API_KEY`` is set, else the offline demo model."""
    if os.environ.get("OPENAI_API_KEY"):
        from promptkit_async.providers.openai import OpenAIProvider

        return OpenAIProvider("openai", os.environ.get("CHAT_MODEL", "gpt-4o-mini"))
    return DemoProvider()


async def default_store() -> StateStore:
    """PostgreSQL when ``DATABASE_URL`` is set, else Redis when ``REDIS_URL`` is set, else
    SQLite (``CHAT_DB``), else memory."""
    import promptkit_async.statestore as stores

    if os.environ.get("DATABASE_URL"):
        # One pool for the app's lifetime, owned (and closed) by the store.
        postgres: StateStore = await stores.PostgresStateStore.connect(
            os.environ["DATABASE_URL"], max_size=20
        )
        return postgres
    if os.environ.get("REDIS_URL") and hasattr(stores, "RedisStateStore"):
        store: StateStore = await stores.RedisStateStore.connect(os.environ["REDIS_URL"])
        return store
    if hasattr(stores, "SQLiteStateStore"):
        sqlite_store: StateStore = stores.SQLiteStateStore(os.environ.get("CHAT_DB", "chat.db"))
        return sqlite_store
    return InMemoryStateStore()


def telemetry(stack: AsyncExitStack) -> list[Listener]:
    """Listeners for the pipeline: OpenTelemetry spans and metrics, with the metrics
    exported for Prometheus (``/metrics``); none when OpenTelemetry is not installed."""
    try:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider

        from promptkit_async.telemetry import OpenTelemetryListener
    except ImportError:
        return []
    # The reader registers with prometheus_client's default registry, which /metrics
    # serves; shutting the meter provider down unregisters it.
    meter_provider = MeterProvider(metric_readers=[PrometheusMetricReader()])
    stack.callback(meter_provider.shutdown)
    # Spans go to the global tracer provider (a no-op until the application sets one).
    return [OpenTelemetryListener(meter_provider=meter_provider)]


def sse(event: str, data: Any) -> str:
    """One server-sent event."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def create_app(provider: Provider | None = None, store: StateStore | None = None) -> FastAPI:
    """The app. Pass ``provider`` / ``store`` to use your own (the app then leaves
    closing them to you); by default it creates and closes them itself.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            model = provider
            if model is None:
                model = default_provider()
                stack.push_async_callback(model.aclose)
            history = store
            if history is None:
                history = await default_store()
                stack.push_async_callback(history.aclose)
            pipeline = Pipeline(
                StateMiddleware(history),
                ProviderMiddleware(
                    model, config=ProviderMiddlewareConfig(GenerationConfig(max_tokens=1024))
                ),
                listeners=telemetry(stack),
            )
            # Runs first on the way out: finish in-flight turns before closing anything.
            stack.push_async_callback(pipeline.shutdown)
            app.state.pipeline = pipeline
            app.state.store = history
            yield

    app = FastAPI(title="promptkit_async chat", lifespan=lifespan)

    @app.exception_handler(InvalidRequestError)
    async def invalid(request: Request, exc: InvalidRequestError) -> JSONResponse:
        return JSONResponse({"error": type(exc).__name__, "detail": str(exc)}, 422)

    @app.exception_handler(ProviderError)
    async def provider_failed(request: Request, exc: ProviderError) -> JSONResponse:
        return JSONResponse({"error": type(exc).__name__, "detail": str(exc)}, 502)

    @app.exception_handler(StoreError)
    async def store_failed(request: Request, exc: StoreError) -> JSONResponse:
        status = 503 if isinstance(exc, StoreUnavailableError) else 500
        return JSONResponse({"error": type(exc).__name__, "detail": str(exc)}, status)

    @app.exception_handler(PipelineClosedError)
    async def closing(request: Request, exc: PipelineClosedError) -> JSONResponse:
        return JSONResponse({"error": type(exc).__name__, "detail": str(exc)}, 503)

    @app.post("/sessions/{session_id}/messages")
    async def send_message(session_id: str, message: MessageIn, request: Request) -> Reply:
        """Run one turn and return the reply with its usage and cost."""
        pipeline: Pipeline = request.app.state.pipeline
        result = await pipeline.execute(session_id, "user", message.content)
        return reply_of(result)

    @app.post("/sessions/{session_id}/messages/stream")
    async def stream_message(
        session_id: str, message: MessageIn, request: Request
    ) -> StreamingResponse:
        """Stream the reply as server-sent events: ``delta``..., then ``done`` or ``error``."""
        pipeline: Pipeline = request.app.state.pipeline
        # Created here, so bad input is rejected with 422 before the stream starts.
        stream = pipeline.stream(session_id, "user", message.content)

        async def events() -> AsyncIterator[str]:
            # If the client goes away, Starlette cancels this generator; leaving the
            # ``async with`` then cancels the turn, and nothing of it is stored.
            try:
                async with stream:
                    async for chunk in stream:
                        if chunk.delta:
                            yield sse("delta", {"delta": chunk.delta})
                if stream.result is not None:
                    yield sse("done", reply_of(stream.result).model_dump())
            except (ProviderError, StoreError) as exc:
                yield sse("error", {"error": type(exc).__name__, "detail": str(exc)})

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get("/sessions/{session_id}/messages")
    async def history(session_id: str, request: Request) -> list[HistoryMessage]:
        """The session's stored messages, oldest first."""
        messages = await request.app.state.store.load(session_id)
        return [HistoryMessage(role=m.role, content=m.content) for m in messages]

    @app.get("/metrics")
    async def metrics() -> Response:
        try:
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        except ImportError:
            return JSONResponse({"error": "install opentelemetry-exporter-prometheus"}, 404)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.delete("/sessions/{session_id}")
    async def delete_session(session_id: str, request: Request) -> dict[str, bool]:
        """Forget the session; ``deleted`` says whether it existed."""
        return {"deleted": await request.app.state.store.delete(session_id)}

    return app


app = create_app()
