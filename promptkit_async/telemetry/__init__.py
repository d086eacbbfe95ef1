"""Observability for turns: OpenTelemetry traces and metrics, and structured logs.

Everything here is a listener for :mod:`promptkit_async.events`; register it on a
pipeline (``Pipeline(..., listeners=[...])``).

* :class:`LoggingListener` (no dependency): one log record per event on the logger of
  the layer it comes from, with structured fields.
* :class:`~promptkit_async.telemetry.otel.OpenTelemetryListener` (the ``otel`` extra):
  spans and metrics following the GenAI semantic conventions. It lives in
  :mod:`promptkit_async.telemetry.otel`, imported only when asked for, so without
  OpenTelemetry installed nothing of it is loaded.
* :func:`console_tracing` (the OpenTelemetry SDK): print spans to a terminal, as
  ``promptkit-chat --trace`` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._logging import JSONFormatter, LoggingListener, redact_secrets

if TYPE_CHECKING:
    from ._console import console_tracing
    from .otel import OpenTelemetryListener

__all__ = [
    "JSONFormatter",
    "LoggingListener",
    "OpenTelemetryListener",
    "console_tracing",
    "redact_secrets",
]


def __getattr__(name: str) -> Any:
    # Imported on first use: importing this package never imports OpenTelemetry.
    if name == "OpenTelemetryListener":
        from .otel import OpenTelemetryListener

        return OpenTelemetryListener
    if name == "console_tracing":
        from ._console import console_tracing

        return console_tracing
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
