"""No API key, and by default no message content, reaches any span, metric or log."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import httpx
import pytest
import respx

from promptkit_async import (
    InMemoryStateStore,
    Pipeline,
    ProviderMiddleware,
    StateMiddleware,
)
from promptkit_async.errors import AuthenticationError
from promptkit_async.providers import OpenAIProvider
from promptkit_async.telemetry import JSONFormatter, LoggingListener, redact_secrets
from tests._otel import API_KEY, CHAT_URL, Otel, sse_response

USER_TEXT = "my PRIVATE-USER-CONTENT-123"
MODEL_TEXT = "PRIVATE-MODEL-REPLY-456"


def everything(otel: Otel, logs: str) -> str:
    """Every exported string: span names, attributes, events, statuses, metrics, logs."""
    parts: list[str] = [logs, otel.metrics_json()]
    for span in otel.finished():
        parts.append(span.to_json())
    return "\n".join(parts)


class RawFormatter(logging.Formatter):
    """Everything a record holds, unredacted (JSONFormatter would hide a leak)."""

    def format(self, record: logging.LogRecord) -> str:
        fields = {k: v for k, v in vars(record).items() if k not in ("args", "msg")}
        fields["message"] = record.getMessage()
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        return json.dumps(fields, default=str)


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(RawFormatter())
    root = logging.getLogger("promptkit_async")
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield out
    root.removeHandler(handler)
    root.setLevel(old)


async def run_turns(
    otel: Otel, router: respx.MockRouter, openai: OpenAIProvider, **kw: object
) -> None:
    echo_key = {"error": {"message": f"Incorrect API key provided: {API_KEY}", "code": "x"}}
    router.post(CHAT_URL).mock(
        side_effect=[
            httpx.Response(429, json={"error": {"message": f"slow down {API_KEY}"}}),
            sse_response(MODEL_TEXT),
            httpx.Response(401, json=echo_key),
        ]
    )
    pipe = Pipeline(
        StateMiddleware(InMemoryStateStore()),
        ProviderMiddleware(openai),
        listeners=[otel.listener(**kw), LoggingListener()],
    )
    result = await pipe.execute("s", "user", USER_TEXT)
    assert result.response.content == MODEL_TEXT
    with pytest.raises(AuthenticationError):
        await pipe.execute("s", "user", USER_TEXT)


async def test_no_key_or_content_anywhere_by_default(
    otel: Otel, router: respx.MockRouter, openai: OpenAIProvider, log_output: io.StringIO
) -> None:
    await run_turns(otel, router, openai)
    logs = log_output.getvalue()
    assert "turn_completed" in logs  # the logs were captured
    assert "RateLimitError" in everything(otel, logs)  # and the retry reached telemetry
    exported = everything(otel, logs)
    assert API_KEY not in exported
    assert API_KEY[8:] not in exported  # not even a fragment of the secret part
    assert "PRIVATE-USER-CONTENT" not in exported
    assert "PRIVATE-MODEL-REPLY" not in exported
    # Structured fields are there.
    records = [json.loads(line) for line in logs.splitlines()]
    completed = next(r for r in records if r.get("event") == "turn_completed")
    assert completed["session_id"] == "s"
    assert completed["turn_id"]
    assert completed["model"] == "gpt-4o-mini-2024-07-18"
    finished = next(r for r in records if r.get("event") == "provider_call_finished")
    assert "request_id" in finished


async def test_content_appears_only_when_asked(
    otel: Otel, router: respx.MockRouter, openai: OpenAIProvider, log_output: io.StringIO
) -> None:
    # The same search finds content once it is opted in: the test above can fail.
    await run_turns(otel, router, openai, capture_content=True)
    exported = everything(otel, log_output.getvalue())
    assert "PRIVATE-USER-CONTENT" in exported
    assert "PRIVATE-MODEL-REPLY" in exported
    assert API_KEY not in exported  # keys never, even then


def test_redaction_of_other_code_logs() -> None:
    assert "sk-" not in redact_secrets("key sk-abcdefghijklmnop used")
    assert redact_secrets("Authorization: Bearer abc.def-ghi_jkl") == "Authorization: [REDACTED]"
    record = logging.LogRecord(
        "promptkit_async.x", logging.INFO, __file__, 1, "using %s", (API_KEY,), None
    )
    record.token = "AIzaSyA-0123456789abcdefghijklmnop"
    line = JSONFormatter().format(record)
    assert API_KEY not in line
    assert "AIza" not in line


async def test_logs_are_quiet_at_info(
    otel: Otel, router: respx.MockRouter, openai: OpenAIProvider, caplog: pytest.LogCaptureFixture
) -> None:
    router.post(CHAT_URL).mock(return_value=sse_response("fine"))
    pipe = Pipeline(
        StateMiddleware(InMemoryStateStore()),
        ProviderMiddleware(openai),
        listeners=[LoggingListener()],
    )
    with caplog.at_level(logging.INFO, logger="promptkit_async"):
        await pipe.execute("s", "user", "Hi")
    assert [r for r in caplog.records if r.name.startswith("promptkit_async")] == []
    with caplog.at_level(logging.DEBUG, logger="promptkit_async"):
        await pipe.execute("s", "user", "Hi")
    layers = {r.name for r in caplog.records}
    assert {
        "promptkit_async.pipeline",
        "promptkit_async.statestore",
        "promptkit_async.providers",
    } <= layers
