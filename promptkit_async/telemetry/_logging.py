"""Turn events as structured log records, one logger per layer."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from ..events import (
    Event,
    FirstChunk,
    HistoryLoaded,
    ProviderCallFinished,
    ProviderCallStarted,
    ProviderRequestSent,
    ProviderRetried,
    ToolCallFinished,
    ToolCallStarted,
    TurnCancelled,
    TurnCompleted,
    TurnFailed,
    TurnStarted,
    TurnStored,
    WindowTrimmed,
)

__all__ = ["JSONFormatter", "LoggingListener", "redact_secrets"]

_PIPELINE = logging.getLogger("promptkit_async.pipeline")
_STORE = logging.getLogger("promptkit_async.statestore")
_WINDOW = logging.getLogger("promptkit_async.prompt")
_PROVIDERS = logging.getLogger("promptkit_async.providers")
_TOOLS = logging.getLogger("promptkit_async.tools")

# Shapes of common credentials: OpenAI/Anthropic ``sk-...``, Google ``AIza...``, bearer
# tokens. Our own records never contain keys; this guards what other code logs.
_SECRET = re.compile(
    r"(sk-(?:ant-)?[A-Za-z0-9_\-]{8,}|AIza[0-9A-Za-z_\-]{20,}|(?i:bearer)\s+[A-Za-z0-9._\-]{8,})"
)


def redact_secrets(text: str) -> str:
    """``text`` with anything shaped like an API key or bearer token replaced."""
    return _SECRET.sub("[REDACTED]", text)


class LoggingListener:
    """Logs each event with structured fields, on the logger of its layer.

    ============================  ==================================
    events                        logger
    ============================  ==================================
    turn started/completed/...    ``promptkit_async.pipeline``
    history loaded, turn stored   ``promptkit_async.statestore``
    window trimmed                ``promptkit_async.prompt``
    provider call, retry, chunk   ``promptkit_async.providers``
    tool call started/finished    ``promptkit_async.tools``
    ============================  ==================================

    Every record has the fields ``event`` (e.g. ``"turn_completed"``), ``session_id``,
    ``turn_id``, and where known ``model``, ``request_id``, ``duration``; see
    :class:`JSONFormatter` to print them. Normal operation logs at ``DEBUG`` only, so
    INFO stays quiet; a failed turn is a ``WARNING``. No message content is logged
    (only counts), and events never carry API keys.

    Args:
        level: the level of routine records (default ``DEBUG``).
    """

    def __init__(self, level: int = logging.DEBUG) -> None:
        self.level = level

    def __repr__(self) -> str:
        return f"LoggingListener(level={logging.getLevelName(self.level)})"

    def __call__(self, event: Event) -> None:
        """Log ``event``."""
        # Decide first, so a disabled level costs a dict lookup and a level check.
        level = logging.WARNING if isinstance(event, TurnFailed) else self.level
        if not _LOGGERS.get(type(event), _PIPELINE).isEnabledFor(level):
            return
        logger, level, message, fields = self._describe(event)
        extra = {"event": _snake(type(event).__name__), "session_id": event.session_id}
        extra["turn_id"] = event.turn_id
        extra.update(fields)
        logger.log(level, message, *fields.get("args", ()), extra=_without_args(extra))

    def _describe(self, event: Event) -> tuple[logging.Logger, int, str, dict[str, Any]]:
        level = self.level
        fields: dict[str, Any]
        if isinstance(event, TurnStarted):
            return _PIPELINE, level, "turn started", {}
        if isinstance(event, TurnCompleted):
            fields = {
                "duration": event.duration,
                "model": event.model,
                "input_tokens": event.usage.prompt_tokens,
                "output_tokens": event.usage.completion_tokens,
                "cost": event.cost.total_cost,
                "finish_reason": event.finish_reason,
                "args": (event.duration, event.usage.total_tokens, event.cost.total_cost),
            }
            return _PIPELINE, level, "turn completed in %.3fs (%d tokens, $%.6f)", fields
        if isinstance(event, TurnFailed):
            name = type(event.error).__name__
            fields = {
                "duration": event.duration,
                "error_type": name,
                "args": (event.duration, name, redact_secrets(str(event.error))),
            }
            return _PIPELINE, logging.WARNING, "turn failed after %.3fs: %s: %s", fields
        if isinstance(event, TurnCancelled):
            fields = {"duration": event.duration, "args": (event.duration,)}
            return _PIPELINE, level, "turn cancelled after %.3fs", fields
        if isinstance(event, (HistoryLoaded, TurnStored)):
            fields = {
                "duration": event.duration,
                "messages": event.messages,
                "store": event.store,
                "args": (event.messages, event.duration),
            }
            what = "history loaded" if isinstance(event, HistoryLoaded) else "turn stored"
            return _STORE, level, what + ": %d message(s) in %.4fs", fields
        if isinstance(event, WindowTrimmed):
            fields = {
                "strategy": event.strategy,
                "dropped": event.dropped,
                "tokens": event.tokens,
                "args": (event.dropped, event.sent, event.tokens, event.budget),
            }
            return _WINDOW, level, "window: dropped %d, sent %d (%d/%d tokens)", fields
        if isinstance(event, ProviderCallStarted):
            fields = {
                "provider": event.provider,
                "model": event.model,
                "streaming": event.streaming,
                "args": (event.provider, event.model),
            }
            return _PROVIDERS, level, "calling %s %s", fields
        if isinstance(event, ProviderRequestSent):
            fields = {"provider": event.provider, "attempt": event.attempt}
            fields["args"] = (event.attempt,)
            return _PROVIDERS, level, "request sent (attempt %d)", fields
        if isinstance(event, ProviderRetried):
            fields = {
                "provider": event.provider,
                "attempt": event.attempt,
                "wait": event.wait,
                "reason": event.reason,
                "args": (event.attempt, event.reason, event.wait),
            }
            return _PROVIDERS, level, "attempt %d failed (%s); retrying in %.3fs", fields
        if isinstance(event, FirstChunk):
            fields = {"provider": event.provider, "duration": event.seconds}
            fields["args"] = (event.seconds,)
            return _PROVIDERS, level, "first chunk after %.3fs", fields
        if isinstance(event, ProviderCallFinished):
            return self._call_finished(event)
        if isinstance(event, ToolCallStarted):
            fields = {"tool": event.name, "call_id": event.call_id, "args": (event.name,)}
            return _TOOLS, level, "tool %s started", fields
        if isinstance(event, ToolCallFinished):
            fields = {
                "tool": event.name,
                "call_id": event.call_id,
                "status": event.status,
                "duration": event.duration,
                "args": (event.name, event.status, event.duration),
            }
            return _TOOLS, level, "tool %s: %s in %.3fs", fields
        return _PIPELINE, level, "%s", {"args": (type(event).__name__,)}

    def _call_finished(
        self, event: ProviderCallFinished
    ) -> tuple[logging.Logger, int, str, dict[str, Any]]:
        fields: dict[str, Any] = {
            "provider": event.provider,
            "model": event.model,
            "duration": event.duration,
            "attempts": event.attempts,
        }
        response = event.response
        if response is None:
            name = type(event.error).__name__
            fields["error_type"] = name
            fields["args"] = (event.provider, name, event.duration)
            return _PROVIDERS, self.level, "%s call failed: %s after %.3fs", fields
        fields.update(
            request_id=response.request_id,
            response_model=response.model,
            input_tokens=response.usage.prompt_tokens,
            output_tokens=response.usage.completion_tokens,
            finish_reason=response.finish_reason,
            args=(event.provider, response.finish_reason, event.duration),
        )
        return _PROVIDERS, self.level, "%s call finished (%s) in %.3fs", fields


_LOGGERS: dict[type[Event], logging.Logger] = {
    HistoryLoaded: _STORE,
    TurnStored: _STORE,
    WindowTrimmed: _WINDOW,
    ProviderCallStarted: _PROVIDERS,
    ProviderRequestSent: _PROVIDERS,
    ProviderRetried: _PROVIDERS,
    FirstChunk: _PROVIDERS,
    ProviderCallFinished: _PROVIDERS,
    ToolCallStarted: _TOOLS,
    ToolCallFinished: _TOOLS,
}


def _without_args(extra: dict[str, Any]) -> dict[str, Any]:
    extra.pop("args", None)
    return extra


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
}


class JSONFormatter(logging.Formatter):
    """Formats a record as one JSON object per line: time, level, logger, message, and
    every extra field (``session_id``, ``turn_id``, ``model``, ``request_id``...).

    Anything shaped like an API key or bearer token is replaced (see
    :func:`redact_secrets`), in the message and in the fields.
    """

    def format(self, record: logging.LogRecord) -> str:
        """One JSON line for ``record``."""
        out: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return redact_secrets(json.dumps(out, default=str, ensure_ascii=False))
