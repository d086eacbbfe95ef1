"""Spans printed to a terminal through the OpenTelemetry SDK's console exporter."""

from __future__ import annotations

from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider

__all__ = ["console_tracing", "format_span"]

# Attributes worth a glance in a terminal, in this order.
_SHOWN = (
    "gen_ai.request.model",
    "gen_ai.response.model",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "gen_ai.response.finish_reasons",
    "promptkit.cost",
    "promptkit.time_to_first_chunk",
    "promptkit.attempts",
    "http.request.resend_count",
    "http.response.status_code",
    "promptkit.store.messages",
    "promptkit.tool.status",
    "promptkit.cancelled",
    "error.type",
)


def format_span(span: ReadableSpan) -> str:
    """One line per span: indented name, duration and the notable attributes."""
    start, end = span.start_time or 0, span.end_time or 0
    attributes = span.attributes or {}
    # Indented by role: the turn, its operations, an operation's HTTP attempts.
    if attributes.get("gen_ai.operation.name") == "invoke_agent":
        depth = 0
    elif "http.request.method" in attributes:
        depth = 2
    else:
        depth = 1
    shown = " ".join(
        f"{key.rsplit('.', 1)[-1] if key.startswith('gen_ai.usage') else key}="
        f"{_short(attributes[key])}"
        for key in _SHOWN
        if key in attributes
    )
    return f"[trace] {'  ' * depth}{span.name}  {(end - start) / 1e6:.1f} ms  {shown}\n"


def _short(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def console_tracing(out: TextIO | None = None, *, compact: bool = True) -> TracerProvider:
    """A tracer provider that prints every span to ``out`` (default ``sys.stderr``).

    Uses the SDK's ``ConsoleSpanExporter`` with a ``SimpleSpanProcessor`` (spans print as
    they end: fine for a terminal, too slow for production). ``compact`` prints one line
    per span (:func:`format_span`) instead of the exporter's JSON. Pass the result to
    ``OpenTelemetryListener(tracer_provider=...)``; call its ``shutdown()`` at exit.

    Raises:
        ImportError: without ``opentelemetry-sdk`` (the ``otel`` extra).
    """
    import sys

    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
    except ImportError as exc:
        raise ImportError(
            "tracing to the console needs the OpenTelemetry SDK: "
            "pip install 'promptkit-async[otel]'"
        ) from exc
    stream = out if out is not None else sys.stderr
    if compact:
        exporter = ConsoleSpanExporter(out=stream, formatter=format_span)
    else:
        exporter = ConsoleSpanExporter(out=stream)
    provider = TracerProvider(resource=Resource.create({"service.name": "promptkit-chat"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider
