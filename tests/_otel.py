"""Test helpers: the real OpenTelemetry SDK with in-memory exporters, and an OpenAI provider
whose HTTP is faked by respx (so retries and keys go through the real HTTP layer)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import respx
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from promptkit_async.providers import OpenAIProvider, RetryPolicy
from promptkit_async.telemetry.otel import OpenTelemetryListener

API_KEY = "sk-test-SECRET-0123456789abcdef"
CHAT_URL = "https://api.openai.com/v1/chat/completions"


@dataclass
class Otel:
    """The SDK pieces a test reads from."""

    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def listener(self, **kwargs: Any) -> OpenTelemetryListener:
        return OpenTelemetryListener(
            tracer_provider=self.tracer_provider, meter_provider=self.meter_provider, **kwargs
        )

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def by_name(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.finished() if s.name == name]

    def one(self, name: str) -> ReadableSpan:
        [span] = self.by_name(name)
        return span

    def points(self, metric: str) -> list[Any]:
        """The data points of ``metric`` (empty if it was never recorded)."""
        data = self.metrics.get_metrics_data()
        out: list[Any] = []
        if data is None:
            return out
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for m in scope.metrics:
                    if m.name == metric:
                        out.extend(m.data.data_points)
        return out

    def metrics_json(self) -> str:
        data = self.metrics.get_metrics_data()
        return "" if data is None else data.to_json()


@pytest.fixture
def otel() -> Iterator[Otel]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield Otel(spans, reader, tracer_provider, meter_provider)
    tracer_provider.shutdown()
    meter_provider.shutdown()


def children(parent: ReadableSpan, spans: list[ReadableSpan]) -> list[str]:
    """Names of ``parent``'s direct children, in start order."""
    assert parent.context is not None
    kids = [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]
    return [s.name for s in sorted(kids, key=lambda s: s.start_time or 0)]


# --- OpenAI over respx ------------------------------------------------------------------


def completion(text: str = "Hello!", model: str = "gpt-4o-mini-2024-07-18") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
    }


def sse_response(text: str = "Hello!", model: str = "gpt-4o-mini-2024-07-18") -> httpx.Response:
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": model}
    events = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {
            **base,
            "choices": [],
            "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
        },
    ]
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    body += b"data: [DONE]\n\n"
    return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})


@pytest.fixture
def router() -> respx.MockRouter:
    return respx.MockRouter(assert_all_called=False)


@pytest.fixture
async def openai(router: respx.MockRouter) -> AsyncIterator[OpenAIProvider]:
    transport = httpx.MockTransport(router.async_handler)
    async with httpx.AsyncClient(transport=transport) as client:
        provider = OpenAIProvider(
            "openai",
            "gpt-4o-mini",
            API_KEY,
            http_client=client,
            retry_policy=RetryPolicy(initial_delay=0.001, max_delay=0.002, max_retry_after=0.005),
        )
        async with provider:
            yield provider
