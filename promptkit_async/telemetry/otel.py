"""OpenTelemetry traces and metrics for turns, following the GenAI semantic conventions.

Needs the ``otel`` extra (``pip install 'promptkit-async[otel]'``: ``opentelemetry-api``);
nothing here is imported by the rest of the library. Register the listener on a
pipeline::

    from promptkit_async.telemetry.otel import OpenTelemetryListener

    pipe = Pipeline(..., listeners=[OpenTelemetryListener()])

It uses the global tracer and meter providers unless given others (with only the API
installed those are no-ops). Each turn becomes one span, ``invoke_agent {agent_name}``,
whose parent is the caller's current span (a web framework's request span, say), with
children::

    invoke_agent promptkit                   (INTERNAL) gen_ai.conversation.id, session.id
      promptkit.store.load                   (INTERNAL) the history load
      chat gpt-4o-mini                       (CLIENT)   one model call, retries included
        POST                                 (CLIENT)   one per HTTP attempt; a retried one
        POST                                            has error.type and the wait
      execute_tool get_weather               (INTERNAL) one per tool call
      chat gpt-4o-mini                                  the model's answer to the tools
      promptkit.store.append                 (INTERNAL) the turn's save

Attributes use the GenAI names: ``gen_ai.operation.name``, ``gen_ai.provider.name``,
``gen_ai.request.model`` (and the request's ``max_tokens``, ``temperature``, ``top_p``,
``seed``, ``stop_sequences``), ``gen_ai.response.model``, ``gen_ai.response.id``,
``gen_ai.response.finish_reasons``, ``gen_ai.usage.input_tokens`` /
``output_tokens``, ``gen_ai.conversation.id`` and ``session.id`` (both carry the session
id), ``gen_ai.tool.name`` / ``gen_ai.tool.call.id``; plus ``promptkit.cost`` (US
dollars), ``promptkit.turn.id``, ``promptkit.attempts``. Errors set ``error.type`` (the
exception's class name, or the tool status) and the span status, and are recorded as
exception events. A cancelled turn or call ends with ``promptkit.cancelled = true`` and
no error status.

Message content (``gen_ai.input.messages``, ``gen_ai.output.messages``, tool arguments
and results) is recorded only with ``capture_content=True`` (or the environment variable
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``). API keys never reach
events, so never reach spans or metrics.

Metrics: ``gen_ai.client.token.usage``, ``gen_ai.client.operation.duration``,
``gen_ai.client.operation.time_to_first_chunk``, ``gen_ai.execute_tool.duration``, and
``promptkit.client.cost`` (counter, USD), ``promptkit.client.retries`` (counter),
``promptkit.turns.active`` (up-down counter), ``promptkit.turn.duration`` and
``promptkit.store.operation.duration`` (histograms, seconds). Their attributes never
hold session ids (bounded cardinality).

Spans are created and ended inside the listener call, in the task that runs the turn;
the listener never makes a span "current" (no context is attached), so nothing leaks
into the code that reads a stream between chunks. Child spans other than the turn's
are recorded when their operation ends, with its real start time.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics, trace
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError(
        "promptkit_async.telemetry.otel needs OpenTelemetry: "
        "pip install 'promptkit-async[otel]' (opentelemetry-api)"
    ) from exc

from .._version import __version__
from ..events import (
    Event,
    HistoryLoaded,
    ProviderCallFinished,
    ProviderCallStarted,
    ProviderRequestSent,
    ProviderRetried,
    ToolCallFinished,
    TurnCancelled,
    TurnCompleted,
    TurnFailed,
    TurnStarted,
    TurnStored,
    WindowTrimmed,
)
from ..types import Message, ProviderResponse

__all__ = ["OpenTelemetryListener", "provider_name"]

_SCOPE = "promptkit_async"

# The GenAI conventions' well-known provider names, by our provider ids.
_PROVIDER_NAMES = {
    "openai": "openai",
    "azure": "azure.ai.openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
    "vertex": "gcp.vertex_ai",
    "groq": "groq",
    "mistral": "mistral_ai",
    "deepseek": "deepseek",
    "xai": "x_ai",
    "perplexity": "perplexity",
}

# Bucket boundaries the GenAI metric conventions ask for.
_TOKEN_BUCKETS = (
    1,
    4,
    16,
    64,
    256,
    1024,
    4096,
    16384,
    65536,
    262144,
    1048576,
    4194304,
    16777216,
    67108864,
)
_SECONDS_BUCKETS = (
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)
_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def provider_name(provider_id: str) -> str:
    """The ``gen_ai.provider.name`` for one of our provider ids (else the id itself)."""
    return _PROVIDER_NAMES.get(provider_id, provider_id)


def _env_capture() -> bool:
    value = os.environ.get("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "")
    return value.strip().lower() in ("1", "true", "yes")


def _messages_json(messages: Sequence[Message]) -> str:
    # The conventions' message shape: role + parts.
    out: list[dict[str, Any]] = []
    for m in messages:
        parts: list[dict[str, Any]] = []
        if m.content:
            kind = "tool_call_response" if m.role == "tool" else "text"
            if kind == "text":
                parts.append({"type": "text", "content": m.content})
            else:
                parts.append({"type": kind, "id": m.tool_call_id, "result": m.content})
        for call in m.tool_calls:
            parts.append(
                {"type": "tool_call", "id": call.id, "name": call.name, "arguments": call.arguments}
            )
        out.append({"role": m.role, "parts": parts})
    return json.dumps(out, ensure_ascii=False)


def _output_json(response: ProviderResponse) -> str:
    parts: list[dict[str, Any]] = []
    if response.content:
        parts.append({"type": "text", "content": response.content})
    for call in response.tool_calls:
        parts.append(
            {"type": "tool_call", "id": call.id, "name": call.name, "arguments": call.arguments}
        )
    message = {"role": "assistant", "parts": parts, "finish_reason": response.finish_reason}
    return json.dumps([message], ensure_ascii=False)


class _Attempt:
    __slots__ = ("end", "error", "number", "start", "status", "wait")

    def __init__(self, number: int, start: int) -> None:
        self.number = number
        self.start = start
        self.end: int | None = None
        self.error: str | None = None
        self.status: int | None = None
        self.wait: float | None = None


class _TurnState:
    __slots__ = ("attempts", "call_request", "context", "span")

    def __init__(self, span: Span, context: otel_context.Context) -> None:
        self.span = span
        self.context = context
        self.attempts: list[_Attempt] = []
        self.call_request: ProviderCallStarted | None = None


class OpenTelemetryListener:
    """Turns events into OpenTelemetry spans and metrics (see the module docstring).

    Args:
        tracer_provider: where spans go (default: the global one).
        meter_provider: where metrics go (default: the global one).
        capture_content: record message content on spans (default: the environment
            variable ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``, else off).
        agent_name: names the turn span ``invoke_agent {agent_name}``
            (``gen_ai.agent.name``).
        traces / metrics: turn either signal off.

    A sync listener: it runs inline, in the turn's task, and does only in-memory work
    (export is the SDK's span processor's business: use a ``BatchSpanProcessor`` in
    production). One listener may serve any number of pipelines and tasks of one
    event loop; per-turn state lives in a dict keyed by turn id and is dropped when the
    turn ends.
    """

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        capture_content: bool | None = None,
        agent_name: str = "promptkit",
        traces: bool = True,
        metrics: bool = True,
    ) -> None:
        self.capture_content = _env_capture() if capture_content is None else capture_content
        self.agent_name = agent_name
        self._tracer = (
            trace.get_tracer(_SCOPE, __version__, tracer_provider=tracer_provider)
            if traces
            else None
        )
        self._turns: dict[str, _TurnState] = {}
        self._handlers: dict[type[Event], Callable[[Any], None]] = {}
        if self._tracer is not None:
            self._handlers.update(
                {
                    TurnStarted: self._turn_started,
                    HistoryLoaded: self._history_loaded,
                    WindowTrimmed: self._window_trimmed,
                    ProviderCallStarted: self._call_started,
                    ProviderRequestSent: self._request_sent,
                    ProviderRetried: self._retried,
                    ProviderCallFinished: self._call_finished,
                    ToolCallFinished: self._tool_finished,
                    TurnStored: self._turn_stored,
                    TurnCompleted: self._turn_completed,
                    TurnFailed: self._turn_failed,
                    TurnCancelled: self._turn_cancelled,
                }
            )
        self._metrics: _Metrics | None = None
        if metrics:
            meter = (
                meter_provider.get_meter(_SCOPE, __version__)
                if meter_provider is not None
                else _global_meter()
            )
            self._metrics = _Metrics(meter)

    def __repr__(self) -> str:
        return (
            f"OpenTelemetryListener(agent_name={self.agent_name!r}, "
            f"capture_content={self.capture_content}, turns={len(self._turns)})"
        )

    def __call__(self, event: Event) -> None:
        """Record ``event``."""
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event)
        if self._metrics is not None:
            self._metrics.record(event)

    # --- spans ------------------------------------------------------------------------

    def _turn_started(self, event: TurnStarted) -> None:
        assert self._tracer is not None
        span = self._tracer.start_span(
            f"invoke_agent {self.agent_name}",
            kind=SpanKind.INTERNAL,
            attributes={
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.agent.name": self.agent_name,
                "gen_ai.conversation.id": event.session_id,
                "session.id": event.session_id,
                "promptkit.turn.id": event.turn_id,
            },
        )
        # Children get the turn span as their parent explicitly: nothing is attached.
        self._turns[event.turn_id] = _TurnState(span, trace.set_span_in_context(span))

    def _child(
        self,
        state: _TurnState,
        name: str,
        kind: SpanKind,
        duration: float,
        attributes: Mapping[str, Any],
        parent: otel_context.Context | None = None,
    ) -> tuple[Span, int]:
        assert self._tracer is not None
        end = time.time_ns()
        span = self._tracer.start_span(
            name,
            context=parent or state.context,
            kind=kind,
            attributes=attributes,
            start_time=end - int(duration * 1e9),
        )
        return span, end

    def _history_loaded(self, event: HistoryLoaded) -> None:
        self._store_span(event, "promptkit.store.load")

    def _turn_stored(self, event: TurnStored) -> None:
        self._store_span(event, "promptkit.store.append")

    def _store_span(self, event: HistoryLoaded | TurnStored, name: str) -> None:
        state = self._turns.get(event.turn_id)
        if state is None:
            return
        span, end = self._child(
            state,
            name,
            SpanKind.INTERNAL,
            event.duration,
            {
                "promptkit.store.type": event.store,
                "promptkit.store.messages": event.messages,
                "session.id": event.session_id,
            },
        )
        span.end(end)

    def _window_trimmed(self, event: WindowTrimmed) -> None:
        state = self._turns.get(event.turn_id)
        if state is None:
            return
        attributes: dict[str, Any] = {
            "promptkit.window.strategy": event.strategy,
            "promptkit.window.budget": event.budget,
            "promptkit.window.tokens": event.tokens,
            "promptkit.window.messages": event.messages,
            "promptkit.window.sent": event.sent,
            "promptkit.window.dropped": event.dropped,
        }
        if event.summarised is not None:
            attributes["promptkit.window.summary"] = event.summarised
        state.span.add_event("promptkit.context_window", attributes)

    def _call_started(self, event: ProviderCallStarted) -> None:
        state = self._turns.get(event.turn_id)
        if state is None:
            return
        state.call_request = event
        state.attempts = []

    def _request_sent(self, event: ProviderRequestSent) -> None:
        state = self._turns.get(event.turn_id)
        if state is None:
            return
        now = time.time_ns()
        if state.attempts and state.attempts[-1].end is None:
            state.attempts[-1].end = now
        state.attempts.append(_Attempt(event.attempt, now))

    def _retried(self, event: ProviderRetried) -> None:
        state = self._turns.get(event.turn_id)
        if state is None or not state.attempts:
            return
        attempt = state.attempts[-1]
        attempt.end = time.time_ns()
        attempt.error = event.error_type
        attempt.status = event.status
        attempt.wait = event.wait
        state.span.add_event(
            "promptkit.retry",
            {
                "promptkit.attempt": event.attempt,
                "promptkit.retry.wait": event.wait,
                "promptkit.retry.reason": event.reason,
                "error.type": event.error_type,
            },
        )

    def _call_finished(self, event: ProviderCallFinished) -> None:
        state = self._turns.get(event.turn_id)
        if state is None:
            return
        started = state.call_request
        state.call_request = None
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": provider_name(event.provider),
            "gen_ai.request.model": event.model,
            "gen_ai.conversation.id": event.session_id,
            "session.id": event.session_id,
            "promptkit.streaming": event.streaming,
            "promptkit.attempts": event.attempts,
        }
        if started is not None:
            request = started.request
            settings = request.generation
            for key, value in (
                ("gen_ai.request.max_tokens", settings.max_tokens),
                ("gen_ai.request.temperature", settings.temperature),
                ("gen_ai.request.top_p", settings.top_p),
                ("gen_ai.request.seed", settings.seed),
            ):
                if value is not None:
                    attributes[key] = value
            if settings.stop:
                attributes["gen_ai.request.stop_sequences"] = list(settings.stop)
            if self.capture_content:
                attributes["gen_ai.input.messages"] = _messages_json(request.messages)
        response = event.response
        if response is not None:
            if response.model:
                attributes["gen_ai.response.model"] = response.model
            if response.response_id:
                attributes["gen_ai.response.id"] = response.response_id
            if response.finish_reason:
                attributes["gen_ai.response.finish_reasons"] = [response.finish_reason]
            attributes["gen_ai.usage.input_tokens"] = response.usage.prompt_tokens
            attributes["gen_ai.usage.output_tokens"] = response.usage.completion_tokens
            attributes["promptkit.cost"] = response.cost.total_cost
            if self.capture_content:
                attributes["gen_ai.output.messages"] = _output_json(response)
        if event.time_to_first_chunk is not None:
            attributes["promptkit.time_to_first_chunk"] = event.time_to_first_chunk
        span, end = self._child(
            state, f"chat {event.model}", SpanKind.CLIENT, event.duration, attributes
        )
        if state.attempts:
            parent = trace.set_span_in_context(span)
            for attempt in state.attempts:
                self._attempt_span(state, attempt, parent, end)
            state.attempts = []
        _end_with(span, event.error, end)

    def _attempt_span(
        self, state: _TurnState, attempt: _Attempt, parent: otel_context.Context, end: int
    ) -> None:
        assert self._tracer is not None
        attributes: dict[str, Any] = {
            "http.request.method": "POST",
            "promptkit.attempt": attempt.number,
        }
        if attempt.number > 1:
            attributes["http.request.resend_count"] = attempt.number - 1
        if attempt.status is not None:
            attributes["http.response.status_code"] = attempt.status
        if attempt.wait is not None:
            attributes["promptkit.retry.wait"] = attempt.wait
        span = self._tracer.start_span(
            "POST", context=parent, kind=SpanKind.CLIENT, attributes=attributes,
            start_time=attempt.start,
        )  # fmt: skip
        if attempt.error is not None:
            span.set_attribute("error.type", attempt.error)
            span.set_status(Status(StatusCode.ERROR, attempt.error))
        span.end(attempt.end if attempt.end is not None else end)

    def _tool_finished(self, event: ToolCallFinished) -> None:
        state = self._turns.get(event.turn_id)
        if state is None:
            return
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": event.name,
            "gen_ai.tool.call.id": event.call_id,
            "gen_ai.tool.type": "function",
            "gen_ai.conversation.id": event.session_id,
            "promptkit.tool.status": event.status,
        }
        if self.capture_content:
            attributes["gen_ai.tool.call.result"] = event.result
        span, end = self._child(
            state, f"execute_tool {event.name}", SpanKind.INTERNAL, event.duration, attributes
        )
        if event.status != "ok":
            span.set_attribute("error.type", event.status)
            span.set_status(Status(StatusCode.ERROR, f"tool {event.status}"))
        span.end(end)

    def _turn_completed(self, event: TurnCompleted) -> None:
        state = self._turns.pop(event.turn_id, None)
        if state is None:
            return
        span = state.span
        attributes: dict[str, Any] = {
            "gen_ai.usage.input_tokens": event.usage.prompt_tokens,
            "gen_ai.usage.output_tokens": event.usage.completion_tokens,
            "promptkit.cost": event.cost.total_cost,
            "promptkit.turn.messages": event.messages,
        }
        if event.finish_reason:
            attributes["gen_ai.response.finish_reasons"] = [event.finish_reason]
        if event.model:
            attributes["gen_ai.response.model"] = event.model
        span.set_attributes(attributes)  # one lock, not one per attribute
        span.end()

    def _turn_failed(self, event: TurnFailed) -> None:
        state = self._turns.pop(event.turn_id, None)
        if state is not None:
            _end_with(state.span, event.error, None)

    def _turn_cancelled(self, event: TurnCancelled) -> None:
        state = self._turns.pop(event.turn_id, None)
        if state is not None:
            state.span.set_attribute("promptkit.cancelled", True)
            state.span.end()


def _end_with(span: Span, error: BaseException | None, end: int | None) -> None:
    if error is not None:
        if isinstance(error, (GeneratorExit,)) or type(error).__name__ == "CancelledError":
            span.set_attribute("promptkit.cancelled", True)
        else:
            name = type(error).__name__
            span.set_attribute("error.type", name)
            span.record_exception(error, timestamp=end)
            span.set_status(Status(StatusCode.ERROR, f"{name}: {error}"))
    span.end(end)


def _global_meter() -> metrics.Meter:
    return metrics.get_meter(_SCOPE, __version__)


class _Metrics:
    """The instruments, and which event feeds which."""

    def __init__(self, meter: metrics.Meter) -> None:
        self.tokens = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Number of input and output tokens used",
            explicit_bucket_boundaries_advisory=list(_TOKEN_BUCKETS),
        )

        def seconds(
            name: str, description: str, buckets: Iterable[float] = _SECONDS_BUCKETS
        ) -> metrics.Histogram:
            return meter.create_histogram(
                name,
                unit="s",
                description=description,
                explicit_bucket_boundaries_advisory=list(buckets),
            )

        self.duration = seconds("gen_ai.client.operation.duration", "GenAI operation duration")
        self.first_chunk = seconds(
            "gen_ai.client.operation.time_to_first_chunk",
            "Time to receive the first chunk of a streamed response",
        )
        self.tool_duration = seconds("gen_ai.execute_tool.duration", "Tool execution duration")
        self.cost = meter.create_counter(
            "promptkit.client.cost", unit="{USD}", description="What model calls cost"
        )
        self.retries = meter.create_counter(
            "promptkit.client.retries", unit="{retry}", description="Provider calls retried"
        )
        # Observed at collection time: no measurement per turn.
        self.in_flight = 0
        meter.create_observable_up_down_counter(
            "promptkit.turns.active",
            callbacks=[self._observe_in_flight],
            unit="{turn}",
            description="Turns in flight",
        )
        self.turn_duration = seconds("promptkit.turn.duration", "Whole turns, storage included")
        self.store_duration = seconds(
            "promptkit.store.operation.duration", "State store loads and appends", _FAST_BUCKETS
        )

    def _observe_in_flight(self, options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        return (metrics.Observation(self.in_flight),)

    def record(self, event: Event) -> None:
        if isinstance(event, ProviderCallFinished):
            self._call(event)
        elif isinstance(event, TurnStarted):
            self.in_flight += 1
        elif isinstance(event, TurnCompleted):
            self.in_flight -= 1
            self.turn_duration.record(event.duration, {"promptkit.turn.outcome": "completed"})
        elif isinstance(event, TurnFailed):
            self.in_flight -= 1
            outcome = {"promptkit.turn.outcome": "failed", "error.type": type(event.error).__name__}
            self.turn_duration.record(event.duration, outcome)
        elif isinstance(event, TurnCancelled):
            self.in_flight -= 1
            self.turn_duration.record(event.duration, {"promptkit.turn.outcome": "cancelled"})
        elif isinstance(event, ProviderRetried):
            provider = provider_name(event.provider)
            self.retries.add(1, {"gen_ai.provider.name": provider, "error.type": event.error_type})
        elif isinstance(event, ToolCallFinished):
            attributes = {"gen_ai.tool.name": event.name}
            if event.status != "ok":
                attributes["error.type"] = event.status
            self.tool_duration.record(event.duration, attributes)
        elif isinstance(event, (HistoryLoaded, TurnStored)):
            operation = "load" if isinstance(event, HistoryLoaded) else "append"
            self.store_duration.record(
                event.duration,
                {"promptkit.store.operation": operation, "promptkit.store.type": event.store},
            )

    def _call(self, event: ProviderCallFinished) -> None:
        error = event.error
        if error is not None and (
            isinstance(error, GeneratorExit) or type(error).__name__ == "CancelledError"
        ):
            return  # a cancelled call says nothing about the model's speed
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": provider_name(event.provider),
            "gen_ai.request.model": event.model,
        }
        response = event.response
        if response is not None and response.model:
            attributes["gen_ai.response.model"] = response.model
        if error is not None:
            attributes["error.type"] = type(error).__name__
        self.duration.record(event.duration, attributes)
        if event.time_to_first_chunk is not None:
            self.first_chunk.record(event.time_to_first_chunk, attributes)
        if response is None:
            return
        usage = response.usage
        self.tokens.record(usage.prompt_tokens, {**attributes, "gen_ai.token.type": "input"})
        self.tokens.record(usage.completion_tokens, {**attributes, "gen_ai.token.type": "output"})
        if response.cost.total_cost:
            self.cost.add(response.cost.total_cost, attributes)
