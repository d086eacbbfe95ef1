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
    ├── PipelineError
    │   ├── PipelineClosedError                     shutdown() was called
    │   └── PipelineTimeoutError                    a turn or a drain exceeded its deadline
    ├── ProviderError                               anything a model provider did wrong
    │   ├── APIConnectionError                      could not reach / lost the connection
    │   │   └── APITimeoutError                     connect / read / pool / total deadline
    │   │       └── StreamIdleTimeoutError          no bytes for ``stream_idle_timeout`` s
    │   ├── APIResponseError                        2xx but unusable: bad JSON, broken SSE
    │   │   └── IncompleteStreamError               the stream ended before it finished
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
    │   └── StoreDataError                          a stored record cannot be decoded
    ├── ContextWindowExceededError                  the newest turn cannot fit the budget
    └── ToolError                                   a tool registry / tool loop problem

Errors never carry API keys: providers redact their key from every message and body
before an error is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "APIConnectionError",
    "APIResponseError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "ContextLengthExceededError",
    "ContextWindowExceededError",
    "IncompleteStreamError",
    "InternalServerError",
    "InvalidMessageError",
    "InvalidRequestError",
    "InvalidRoleError",
    "InvalidSessionIdError",
    "NotFoundError",
    "PermissionDeniedError",
    "PipelineClosedError",
    "PipelineError",
    "PipelineTimeoutError",
    "PromptKitError",
    "ProviderError",
    "RateLimitError",
    "StoreDataError",
    "StoreError",
    "StoreUnavailableError",
    "StreamIdleTimeoutError",
    "ToolError",
    "UnprocessableEntityError",
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


# --- pipeline ----------------------------------------------------------------------------


class PipelineError(PromptKitError):
    """A pipeline could not run a turn."""


class PipelineClosedError(PipelineError):
    """The pipeline is shutting down or shut down and refuses new turns."""


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
    """The store's server is down, unreachable or too slow; nothing was written."""


class StoreDataError(StoreError):
    """A stored record could not be decoded (corrupt, or written by a newer version)."""


# --- context windows & tools -------------------------------------------------------------


class ContextWindowExceededError(PromptKitError):
    """The pinned system prompt plus the newest user message do not fit the token budget.

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
