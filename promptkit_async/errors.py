"""The exception tree of promptkit_async.

Every error the library raises on purpose derives from :class:`PromptKitError`, so
``except PromptKitError`` catches all of them and nothing else (cancellation is never
swallowed). Lower-layer errors (httpx, aiohttp, redis, sqlite3) are translated in one
place per layer and re-raised ``from`` the original::

    PromptKitError
    ├── InvalidRequestError (also ValueError)      bad caller input, raised before any I/O
    │   ├── InvalidSessionIdError
    │   ├── InvalidRoleError
    │   └── InvalidMessageError
    │       └── UnsupportedContentError             a part this provider cannot take
    ├── ConfigurationError (also ValueError)       a constructor got an unusable setting
    │   └── InvalidArgumentsError (also TypeError)  wrong kind or number of arguments
    │       └── InvalidMiddlewareError              not an async generator (ctx, next)
    ├── PipelineError
    │   ├── PipelineClosedError                     shutdown() was called
    │   ├── PipelineTimeoutError                    a turn or a drain exceeded its deadline
    │   ├── StreamBusyError (also RuntimeError)     one stream read by two tasks at once
    │   ├── SessionBusyError                        another turn holds the session (policy)
    │   └── TurnInterruptedError                    a newer turn interrupted this one
    ├── ProviderError                               anything a model provider did wrong
    │   ├── APIConnectionError                      could not reach / lost the connection
    │   │   └── APITimeoutError                     connect / read / pool / total deadline
    │   │       └── StreamIdleTimeoutError          no bytes for ``stream_idle_timeout`` s
    │   ├── APIResponseError                        2xx but unusable: bad JSON, broken SSE
    │   │   └── IncompleteStreamError               the stream ended before it finished
    │   ├── StructuredOutputError                   the answer does not match response_format
    │   └── APIStatusError                          HTTP 4xx / 5xx, one class per status
    │       ├── BadRequestError                     400
    │       │   └── ContextLengthExceededError      400 saying the prompt is too long
    │       ├── AuthenticationError                 401
    │       ├── PermissionDeniedError               403
    │       ├── NotFoundError                       404
    │       ├── ConflictError                       409
    │       ├── UnprocessableEntityError            422
    │       ├── RateLimitError                      429
    │       └── InternalServerError                 5xx
    ├── StoreError                                  a state store failed
    │   ├── StoreUnavailableError                   server down, unreachable, timed out
    │   │   ├── StoreTimeoutError                   an operation exceeded the store's timeout
    │   │   └── AmbiguousTurnError                  a turn's save may or may not have landed
    │   ├── StoreDataError                          a stored record cannot be decoded
    │   └── LeaseLostError                          fenced: the session passed to another turn
    ├── BudgetExceededError                         a session's ledger reached its budget
    ├── TokenBudgetExceededError                    the newest turn cannot fit our local
    │                                               token budget (a provider's own limit
    │                                               is ContextLengthExceededError)
    └── ToolError                                   a tool registry / tool loop problem
        └── MCPServerError                          an MCP server failed (tools.mcp)
            ├── MCPConnectionError                  could not connect / lost the connection
            └── MCPToolCallError                    the server answered a call with an error

Errors never carry API keys: providers redact their key from every message and body
before an error is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "APIConnectionError",
    "AmbiguousTurnError",
    "APIResponseError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BudgetExceededError",
    "ConfigurationError",
    "ConflictError",
    "ContextLengthExceededError",
    "IncompleteStreamError",
    "InternalServerError",
    "InvalidArgumentsError",
    "InvalidMessageError",
    "InvalidMiddlewareError",
    "InvalidRequestError",
    "InvalidRoleError",
    "InvalidSessionIdError",
    "LeaseLostError",
    "MCPConnectionError",
    "MCPServerError",
    "MCPToolCallError",
    "NotFoundError",
    "PermissionDeniedError",
    "PipelineClosedError",
    "PipelineError",
    "PipelineTimeoutError",
    "PromptKitError",
    "ProviderError",
    "RateLimitError",
    "SessionBusyError",
    "StoreDataError",
    "StoreError",
    "StoreTimeoutError",
    "StoreUnavailableError",
    "StreamBusyError",
    "StreamIdleTimeoutError",
    "StructuredOutputError",
    "TokenBudgetExceededError",
    "ToolError",
    "TurnInterruptedError",
    "UnprocessableEntityError",
    "UnsupportedContentError",
]


class PromptKitError(Exception):
    """Root of every error raised by promptkit_async."""


# --- caller input ------------------------------------------------------------------------


class InvalidRequestError(PromptKitError, ValueError):
    """The caller passed something unusable; raised before any I/O, nothing is stored."""


class InvalidSessionIdError(InvalidRequestError):
    """A session id is empty, blank, too long or contains a forbidden character."""


class InvalidRoleError(InvalidRequestError):
    """A message role is not one of the roles this library knows."""


class InvalidMessageError(InvalidRequestError):
    """A message is malformed (empty content, wrong types, tool result without id...)."""


class UnsupportedContentError(InvalidMessageError):
    """A content part the destination cannot take: raised before any request is sent.

    For example audio for Anthropic, a document by URL for OpenAI chat, an image in an
    OpenAI tool result, or an audio format a provider does not know. The message names
    the part, the provider and what to do instead; nothing was sent or stored.
    """


# --- configuration -----------------------------------------------------------------------


class ConfigurationError(PromptKitError, ValueError):
    """A constructor got a setting it cannot work with; fix the argument it names."""


class InvalidArgumentsError(ConfigurationError, TypeError):
    """A constructor got arguments of the wrong kind or number (as ``TypeError`` says)."""


class InvalidMiddlewareError(InvalidArgumentsError):
    """Something passed as middleware is not an async generator function ``(ctx, next)``."""


# --- pipeline ----------------------------------------------------------------------------


class PipelineError(PromptKitError):
    """A pipeline could not run a turn."""


class PipelineClosedError(PipelineError):
    """The pipeline is shutting down or shut down and refuses new turns."""


class StreamBusyError(PipelineError, RuntimeError):
    """A result stream was read (or closed) by a task while another task was reading it."""


class SessionBusyError(PipelineError):
    """Another turn holds the session, and this turn's policy is not to wait (longer).

    Raised at once under the ``reject`` policy, and under ``queue`` when the wait
    exceeded its bound. Nothing of the turn was sent or stored; retry later.

    Attributes:
        session_id: the busy session.
        waited: seconds this turn waited before giving up (0 under ``reject``).
    """

    def __init__(self, message: str, *, session_id: str, waited: float) -> None:
        super().__init__(message)
        self.session_id = session_id
        self.waited = waited


class TurnInterruptedError(PipelineError):
    """A newer turn on the same session interrupted this one (the ``interrupt`` policy).

    Nothing of the interrupted turn is stored, even when it runs in another process:
    its lease was taken, so its save would be refused.

    Attributes:
        session_id: the session.
    """

    def __init__(self, message: str, *, session_id: str) -> None:
        super().__init__(message)
        self.session_id = session_id


class PipelineTimeoutError(PipelineError):
    """A turn, or waiting for in-flight turns during shutdown, took longer than allowed."""


# --- providers ---------------------------------------------------------------------------


class ProviderError(PromptKitError):
    """A model provider failed.

    Attributes:
        provider: the provider id (``"openai"``...), when known.
        request_id: the provider's request id header, when it sent one.
    """

    def __init__(
        self, message: str, *, provider: str | None = None, request_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.request_id = request_id


class APIConnectionError(ProviderError):
    """The provider could not be reached, or the connection broke mid-request/stream."""


class APITimeoutError(APIConnectionError):
    """A connect, read, pool or total deadline passed before the provider answered."""


class StreamIdleTimeoutError(APITimeoutError):
    """A stream sent no bytes for longer than the provider's ``stream_idle_timeout``."""


class APIResponseError(ProviderError):
    """The provider answered 2xx but the body could not be understood.

    Attributes:
        body: the offending payload (a decoded event or body, API keys redacted), when
            it was valid JSON of the wrong shape; ``None`` otherwise.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        request_id: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message, provider=provider, request_id=request_id)
        self.body = body


class IncompleteStreamError(APIResponseError):
    """A stream ended (the server closed it) before its final event arrived."""


class StructuredOutputError(ProviderError):
    """The model's answer is not JSON, or does not match the turn's ``response_format``.

    The provider answered faithfully (this is not an :class:`APIResponseError`): the
    model's text is what failed. Raised before the turn is stored, so nothing of it is
    kept; retrying the turn may succeed, and a ``finish_reason`` of ``"length"`` means the
    answer was cut off (raise ``max_tokens``).

    Attributes:
        raw_text: the model's answer, as it came.
        errors: what is wrong, one line per problem (``"age: Input should be a valid
            integer"``), at most 10.
        finish_reason: why the model stopped (``"stop"``, ``"length"``...), when known.
        response: the provider's response (usage, cost, ids) with ``parsed`` unset, when
            the answer came from a provider call.
    """

    def __init__(
        self,
        message: str,
        *,
        raw_text: str,
        errors: tuple[str, ...] = (),
        finish_reason: str | None = None,
        provider: str | None = None,
        request_id: str | None = None,
        response: Any = None,
    ) -> None:
        super().__init__(message, provider=provider, request_id=request_id)
        self.raw_text = raw_text
        self.errors = errors
        self.finish_reason = finish_reason
        self.response = response


class APIStatusError(ProviderError):
    """The provider answered with an HTTP error status.

    Attributes:
        status_code: the HTTP status.
        body: the decoded error body (API keys redacted), or ``None``.
        retry_after: seconds the provider asked us to wait, when it said so.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        provider: str | None = None,
        request_id: str | None = None,
        body: Mapping[str, Any] | str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, provider=provider, request_id=request_id)
        self.status_code = status_code
        self.body = body
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f"{self.provider} " if self.provider else ""
        rid = f" (request id {self.request_id})" if self.request_id else ""
        return f"{where}HTTP {self.status_code}: {self.message}{rid}"


class BadRequestError(APIStatusError):
    """HTTP 400: the request was invalid; fix the request, retrying will not help."""


class ContextLengthExceededError(BadRequestError):
    """HTTP 400 because the prompt exceeds the model's context window.

    Trim the history (``ContextWindowMiddleware`` or ``truncate_messages``) and retry.
    """


class AuthenticationError(APIStatusError):
    """HTTP 401: the API key is missing, wrong or revoked."""


class PermissionDeniedError(APIStatusError):
    """HTTP 403: the key is valid but may not use this model or endpoint."""


class NotFoundError(APIStatusError):
    """HTTP 404: unknown model or endpoint; check the model name and ``base_url``."""


class ConflictError(APIStatusError):
    """HTTP 409: a conflicting request; safe to retry."""


class UnprocessableEntityError(APIStatusError):
    """HTTP 422: the request was well-formed but semantically rejected."""


class RateLimitError(APIStatusError):
    """HTTP 429: too many requests or tokens; slow down or raise your limits."""


class InternalServerError(APIStatusError):
    """HTTP 5xx: the provider failed; usually transient and retried automatically."""


# --- stores ------------------------------------------------------------------------------


class StoreError(PromptKitError):
    """A state store operation failed."""


class StoreUnavailableError(StoreError):
    """The store's server is down, unreachable or too slow.

    Nothing was written, except after a timeout (see :class:`StoreTimeoutError`) or a
    connection lost while a write was in flight: ``StateMiddleware`` reports a turn's
    save that failed so as :class:`AmbiguousTurnError`.
    """


class StoreDataError(StoreError):
    """A stored record could not be decoded (corrupt, or written by a newer version)."""


class StoreTimeoutError(StoreUnavailableError):
    """A store operation did not finish within the store's timeout, counted from the call.

    Not a :class:`TimeoutError`: ``except TimeoutError`` around a store call catches the
    caller's own ``asyncio.timeout`` / ``anyio.fail_after``, never the store's.

    Attributes:
        operation: the store method (``"append"``, ``"load"``...).
        timeout: the bound, in seconds, that passed.
        maybe_applied: ``True`` when the operation is a write that had already been sent
            and may or may not have been applied (a write is never applied in part);
            ``False`` when it certainly was not (a read, or a write that never left the
            store's queue).
    """

    def __init__(
        self, message: str, *, operation: str, timeout: float, maybe_applied: bool
    ) -> None:
        super().__init__(message)
        self.operation = operation
        self.timeout = timeout
        self.maybe_applied = maybe_applied


class AmbiguousTurnError(StoreUnavailableError):
    """A turn's save failed in a way that leaves its outcome unknown: it may be stored.

    Raised by ``StateMiddleware`` when the store timed out or lost its connection after
    the save was sent. Retrying the turn with the same ``turn_id`` is safe: a stored turn
    is never stored twice, and the retry returns the stored reply without calling the
    model again. ``await store.has_turn(session_id, turn_id)`` answers the question too.

    Attributes:
        session_id: the turn's session.
        turn_id: the id to retry with.
    """

    def __init__(self, message: str, *, session_id: str, turn_id: str) -> None:
        super().__init__(message)
        self.session_id = session_id
        self.turn_id = turn_id


class LeaseLostError(StoreError):
    """A write was refused because the session's lease passed to another turn (fencing).

    The lease of this turn expired (its worker stalled past the lease TTL) or was taken
    by an interrupting turn, and another turn now holds the session: nothing of this
    turn was written. The session's history is exactly what the other turns stored.

    Attributes:
        session_id: the session.
        token: the fencing token this turn held.
    """

    def __init__(self, message: str, *, session_id: str, token: int) -> None:
        super().__init__(message)
        self.session_id = session_id
        self.token = token


# --- context windows & tools -------------------------------------------------------------


class BudgetExceededError(PromptKitError):
    """A session's ledger already reached its budget, so the turn was not sent.

    Checked before any request, against the totals stored with the session (see
    ``StateStore.get_ledger``); nothing of the turn is stored.

    Attributes:
        session_id: the session.
        spent_usd / limit_usd: the session's cost so far and its cost budget (``None``
            when no cost budget is set).
        spent_tokens / limit_tokens: likewise for total tokens.
    """

    def __init__(
        self,
        message: str,
        *,
        session_id: str,
        spent_usd: float,
        limit_usd: float | None,
        spent_tokens: int,
        limit_tokens: int | None,
    ) -> None:
        super().__init__(message)
        self.session_id = session_id
        self.spent_usd = spent_usd
        self.limit_usd = limit_usd
        self.spent_tokens = spent_tokens
        self.limit_tokens = limit_tokens


class TokenBudgetExceededError(PromptKitError):
    """The pinned system prompt plus the newest user message do not fit our token budget.

    A local check, before any request: compare ``ContextLengthExceededError``, the
    provider's own 400 for a prompt longer than the model takes.

    Also raised by ``ContextWindowMiddleware(strategy="fail")`` when the whole
    conversation does not fit. Nothing of the turn is stored.

    Attributes:
        required_tokens: tokens the unavoidable messages need.
        max_tokens: the budget they had to fit in.
    """

    def __init__(self, message: str, *, required_tokens: int, max_tokens: int) -> None:
        super().__init__(message)
        self.required_tokens = required_tokens
        self.max_tokens = max_tokens


class ToolError(PromptKitError):
    """A tool could not be registered or the tool loop could not continue."""


class MCPServerError(ToolError):
    """An MCP server (see :mod:`promptkit_async.tools.mcp`) could not serve a request.

    In the tool loop these never fail a turn: the model gets them as the tool's result.
    """


class MCPConnectionError(MCPServerError):
    """Could not connect to an MCP server, or the connection was lost during a call.

    The next call reconnects (a stdio server is started again).
    """


class MCPToolCallError(MCPServerError):
    """The MCP server answered a tool call with an error (``isError`` or a JSON-RPC error).

    The message is the server's own text, so the model can act on it.
    """


_DEPRECATED = {"ContextWindowExceededError": ("TokenBudgetExceededError", TokenBudgetExceededError)}


def __getattr__(name: str) -> Any:
    # Old names, kept for one release: they warn and give the new class.
    if name in _DEPRECATED:
        import warnings

        new, value = _DEPRECATED[name]
        warnings.warn(
            f"{name} is deprecated; use {new} (the same class)",
            DeprecationWarning,
            stacklevel=2,
        )
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
