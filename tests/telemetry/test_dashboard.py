"""docs/grafana/promptkit-dashboard.json queries metrics that exist, by the names the
Prometheus exporter gives them (a real PrometheusMetricReader, fed by real turns that
retry, call tools and fail)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
import respx
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from promptkit_async import (
    InMemoryStateStore,
    MockProvider,
    Pipeline,
    ProviderMiddleware,
    ProviderMiddlewareConfig,
    ProviderResponse,
    StateMiddleware,
    ToolCall,
)
from promptkit_async.providers import OpenAIProvider
from promptkit_async.telemetry.otel import OpenTelemetryListener
from tests._otel import CHAT_URL, completion

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "promptkit-dashboard.json"
NAME = re.compile(r"\b(?:gen_ai|promptkit)_[a-z_]+\b")


async def exposition(router: respx.MockRouter, openai: OpenAIProvider) -> str:
    reader = PrometheusMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    listener = OpenTelemetryListener(meter_provider=meter_provider, traces=False)
    try:
        router.post(CHAT_URL).mock(
            side_effect=[httpx.Response(429, json={}), httpx.Response(200, json=completion())]
        )
        retried = Pipeline(
            StateMiddleware(InMemoryStateStore()),
            ProviderMiddleware(openai, config=ProviderMiddlewareConfig(stream=False)),
            listeners=[listener],
        )
        await retried.execute("a", "user", "Hi")

        def lookup(q: str) -> str:
            """Look up."""
            return q

        tools = MockProvider(
            [ProviderResponse(tool_calls=(ToolCall("c", "lookup", '{"q": "x"}'),)), "done"],
            model="gpt-4o-mini",
        )
        looped = Pipeline(
            StateMiddleware(InMemoryStateStore()),
            ProviderMiddleware(tools, [lookup]),
            listeners=[listener],
        )
        await looped.execute("b", "user", "Hi")
        broken = MockProvider([ValueError("x")])
        failing = Pipeline(ProviderMiddleware(broken), listeners=[listener])
        with pytest.raises(ValueError, match="x"):
            await failing.execute("c", "user", "Hi")
        return generate_latest(REGISTRY).decode()
    finally:
        meter_provider.shutdown()


async def test_every_dashboard_query_reads_exported_metrics(
    router: respx.MockRouter, openai: OpenAIProvider
) -> None:
    text = await exposition(router, openai)
    samples: set[str] = set()
    labels: set[str] = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.add(sample.name)
            labels.update(sample.labels)
    dashboard = json.loads(DASHBOARD.read_text())
    targets = [t for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(targets) >= 10
    for target in targets:
        names = set(NAME.findall(target["expr"]))
        assert names & samples, f"{target['expr']} reads no exported metric"
        unknown = names - samples - labels
        assert not unknown, f"{target['expr']}: {unknown} is neither a metric nor a label"
    # The GenAI names are there, as the conventions spell them (dots become underscores).
    assert {
        "gen_ai_client_token_usage_sum",
        "gen_ai_client_operation_duration_seconds_bucket",
        "gen_ai_client_operation_time_to_first_chunk_seconds_bucket",
        "gen_ai_execute_tool_duration_seconds_bucket",
        "promptkit_client_retries_total",
    } <= samples
