"""What every HTTP provider shares: client, timeouts, retries, error mapping, redaction.

A provider module (OpenAI, Anthropic, Gemini...) subclasses :class:`HTTPProvider`, says how
to authenticate (:meth:`HTTPProvider._auth_headers`) and keeps its wire format to itself; it
sends requests with :meth:`HTTPProvider._post_json` (whole JSON answer) or
:meth:`HTTPProvider._post_events` (server-sent events), which handle:

* the HTTP client: one long-lived ``httpx.AsyncClient`` per provider over
  :class:`~promptkit_async.providers._transport.AiohttpTransport`, or the caller's client
  (never closed by us). With our own client, requests go straight to the transport's
  :meth:`~promptkit_async.providers._transport.AiohttpTransport.send` (no httpx request,
  response or headers objects per call: a fraction of the client CPU of a streamed turn);
  a body with a ``Content-Encoding`` is still decoded by httpx;
* timeouts: httpx's connect / read / write / pool per attempt, a total ``deadline`` per call
  (attempts, waits and reading the answer), and a ``stream_idle_timeout`` (no bytes for that
  long while streaming → :class:`~promptkit_async.errors.StreamIdleTimeoutError`);
* retries: 408 / 409 / 429 / 5xx and connection errors, waiting as the failed response asks
  (``retry-after-ms``, ``Retry-After``) or with jittered exponential backoff, each failed
  response closed before the wait, never once a streamed event has reached the provider;
  each retry is a ``TraceEvent("retry", ...)`` and a log record on ``promptkit_async.providers``;
* errors: HTTP statuses and transport failures become :mod:`promptkit_async.errors` classes
  carrying status, request id, the provider's message and body, with the API key redacted
  (from bodies, messages, request ids and the base URL shown);
* size caps: an error body is read up to 64 KiB, a 2xx body up to :data:`MAX_BODY_SIZE`
  and one SSE line or event up to ``MAX_EVENT_SIZE`` (32 MiB each, beyond which
  :class:`~promptkit_async.errors.APIResponseError`), so a broken or endless answer
  cannot exhaust memory.

Cancellation: cancelling the task that awaits a call, or closing a stream, closes the HTTP
response at once; a cancelled retry wait simply ends. ``CancelledError`` is never caught
and swallowed (only ``Exception`` is).

Writing a provider on top (Anthropic, Gemini...)::

    class MyProvider(HTTPProvider):
        default_base_url = "https://api.example.com/v1"
        default_api_key_env = "EXAMPLE_API_KEY"
        request_id_headers = ("request-id",)

        def _auth_headers(self, api_key):            # vendor auth (+ version headers)
            return {"x-api-key": api_key}

        async def complete(self, request):
            payload, call, request_id = await self._post_json(url, body)
            ...                                      # parse; call.trace, call.started

        async def stream(self, request):
            events = self._post_events(url, body)   # an SSEStream
            try:
                while batch := await events.next_batch():
                    for event in batch:             # event.event / event.data
                        payload = json_loads(event.data)   # except ValueError:
                        #   raise self._event_error(event.data, events.request_id, events.ended)
                        # vendor error event -> raise self._payload_error(payload, ...)
                        # final event -> events.expect_end(self.end_grace)
                        yield StreamChunk(delta=...)
            finally:
                await events.aclose()
            yield StreamChunk(response=ProviderResponse(..., trace=tuple(events.trace)))
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, ClassVar, NoReturn, Protocol

import aiohttp
import httpx
from typing_extensions import TypedDict

from .._version import __version__
from ..errors import (
    APIConnectionError,
    APIResponseError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    ContextLengthExceededError,
    IncompleteStreamError,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    ProviderError,
    RateLimitError,
    StreamIdleTimeoutError,
    UnprocessableEntityError,
)
from ..pricing import ModelPricing
from ..types import TraceEvent
from ._retry import RetryPolicy, parse_retry_after, should_retry_status
from ._sse import MAX_EVENT_SIZE, ServerSentEvent, SSEDecoder
from ._transport import AiohttpTransport, RawResponse
from .base import BaseProvider, GenerationConfig

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_BODY_SIZE",
    "HTTPProvider",
    "SSEStream",
    "json_dumps",
    "json_loads",
    "error_class_for_status",
    "is_context_length_message",
    "redact",
]

logger = logging.getLogger("promptkit_async.providers")


def _stdlib_dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


#: Parses JSON text or bytes: orjson when installed (several times faster on the many small
#: payloads of a stream), else the standard library. Both raise ValueError subclasses.
json_loads: Callable[[str | bytes], Any]
#: Compact JSON bytes, via orjson when installed; raises TypeError or ValueError.
json_dumps: Callable[[Any], bytes]
try:
    import orjson

    json_loads = orjson.loads
    json_dumps = orjson.dumps
except ImportError:  # pragma: no cover - depends on the environment
    json_loads = json.loads
    json_dumps = _stdlib_dumps

#: Per-attempt timeouts when none are given: 5 s to connect, 10 minutes for the rest (a
#: long non-streamed answer can take minutes).
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=5.0)

_ERROR_BODY_LIMIT = 64 * 1024
#: The largest non-streamed 2xx body read (decoded); streamed events are capped by the
#: SSE decoder (:data:`~promptkit_async.providers._sse.MAX_EVENT_SIZE`).
MAX_BODY_SIZE = MAX_EVENT_SIZE
_REDACTED = "[REDACTED]"
_STATUS_CLASSES: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}
_CONTEXT_LENGTH = re.compile(
    r"context[ _-]?(length|window)|too many tokens|prompt is too long|input is too long|"
    r"maximum (number of )?tokens|reduce the length|token count .*exceeds|"
    r"exceeds? the (model'?s? )?(max|maximum|context)",
    re.IGNORECASE,
)
_CONTEXT_LENGTH_CODES = frozenset({"context_length_exceeded", "string_above_max_length"})


def redact(value: Any, secret: str | None) -> Any:
    """``value`` with every occurrence of ``secret`` replaced, through dicts and lists."""
    if not secret:
        return value
    if isinstance(value, str):
        return value.replace(secret, _REDACTED) if secret in value else value
    if isinstance(value, Mapping):
        return {k: redact(v, secret) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v, secret) for v in value]
    return value


def error_class_for_status(status: int) -> type[APIStatusError]:
    """The :class:`APIStatusError` subclass for an HTTP status (400 → BadRequestError...)."""
    found = _STATUS_CLASSES.get(status)
    if found is not None:
        return found
    if status >= 500:
        return InternalServerError
    return APIStatusError


def is_context_length_message(message: str, code: object = None) -> bool:
    """Whether a 400's error code or message says the prompt exceeds the context window."""
    if isinstance(code, str) and code in _CONTEXT_LENGTH_CODES:
        return True
    return bool(_CONTEXT_LENGTH.search(message))


def _error_message(body: Any) -> tuple[str | None, object]:
    """The provider's message and error code from an error body of any common shape.

    OpenAI / compatible servers: ``{"error": {"message", "type", "code"}}``; Anthropic:
    ``{"type": "error", "error": {"type", "message"}}``; Gemini: ``{"error": {"code",
    "message", "status"}}``; some servers: ``{"error": "text"}`` or ``{"message": ...}``
    or ``{"detail": ...}``.
    """
    if not isinstance(body, Mapping):
        return None, None
    error = body.get("error")
    if isinstance(error, Mapping):
        message = error.get("message")
        code = error.get("code") or error.get("type") or error.get("status")
        return (str(message) if message is not None else None), code
    if isinstance(error, str):
        return error, body.get("code")
    for key in ("message", "detail"):
        if body.get(key) is not None:
            return str(body[key]), body.get("code")
    return None, None


class _Watchdog:
    """The total deadline and stream idle timeout of one call, with no timer per read.

    The call ``arm``s it around each of its own awaits (sending, reading, waiting to
    retry) and ``disarm``s it after. When a limit passes while armed, the awaiting task
    is cancelled and the call turns that cancellation into a timeout error
    (:meth:`absorb`). While disarmed (the caller holds a chunk) nothing is cancelled; a
    passed deadline is reported at the next ``arm``. The idle timer is moved only when
    it fires (at most once per idle period), so arming costs a clock read, not a timer.
    """

    __slots__ = (
        "_deadline_handle",
        "_idle_handle",
        "_loop",
        "_since",
        "_task",
        "_watch_idle",
        "active",
        "armed",
        "cancelled",
        "deadline",
        "fired",
        "idle",
        "timeout",
    )

    def __init__(self, timeout: float | None, idle: float | None) -> None:
        self._loop = asyncio.get_running_loop()
        self.timeout = timeout
        self.idle = idle
        self.active = timeout is not None or idle is not None
        self.deadline = self._loop.time() + timeout if timeout is not None else None
        self._deadline_handle = (
            self._loop.call_at(self.deadline, self._on_deadline)
            if self.deadline is not None
            else None
        )
        self._idle_handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[Any] | None = None
        self._since = 0.0
        self._watch_idle = False
        self.armed = False
        self.cancelled = False
        self.fired: str | None = None  # "deadline" or "idle"

    def arm(self, idle: bool = False) -> None:
        if not self.active:
            return  # no limits, no timers: nothing could cancel
        self._task = asyncio.current_task()
        self.armed = True
        if idle and self.idle is not None:
            self._watch_idle = True
            self._since = self._loop.time()
            if self._idle_handle is None:
                self._idle_handle = self._loop.call_at(self._since + self.idle, self._on_idle)
        else:
            self._watch_idle = False

    def disarm(self) -> None:
        self.armed = False

    def set_idle(self, idle: float) -> None:
        """Change the idle limit (takes effect from the next :meth:`arm`)."""
        self.idle = idle
        self.active = True
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None

    def remaining(self) -> float | None:
        if self.deadline is None:
            return None
        return self.deadline - self._loop.time()

    def _cancel_task(self, reason: str) -> None:
        self.fired = reason
        if self.armed and self._task is not None and not self.cancelled:
            self.cancelled = True
            self._task.cancel()

    def _on_deadline(self) -> None:
        self._deadline_handle = None
        if self.fired is None:
            self._cancel_task("deadline")

    def _on_idle(self) -> None:
        self._idle_handle = None
        if not (self.armed and self._watch_idle) or self.fired is not None:
            return  # not waiting for bytes now; the next arm() restarts the clock
        due = self._since + self.idle  # type: ignore[operator]
        if self._loop.time() + 0.001 >= due:
            self._cancel_task("idle")
        else:
            self._idle_handle = self._loop.call_at(due, self._on_idle)

    def absorb(self) -> bool:
        """Called on ``CancelledError``: True if the cancellation was ours (now undone)."""
        if not self.cancelled:
            return False
        self.cancelled = False
        task = self._task
        if sys.version_info >= (3, 11) and task is not None and task.uncancel() > 0:
            return False  # someone else cancelled the task as well
        return True

    def close(self) -> None:
        if self._deadline_handle is not None:
            self._deadline_handle.cancel()
            self._deadline_handle = None
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None


class _Response(Protocol):
    """An open response as the retry loop and :class:`SSEStream` read it: our transport's
    :class:`~promptkit_async.providers._transport.RawResponse`, or :class:`_HttpxResponse`.
    ``headers`` is case-insensitive; ``read`` returns the next piece of the (decoded) body,
    ``b""`` at its end."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    async def read(self) -> bytes: ...

    async def aclose(self) -> None: ...


class _HttpxResponse:
    """An ``httpx.Response`` (a caller's client, or a compressed body) read as a
    :class:`_Response`; httpx decodes the body."""

    __slots__ = ("_chunks", "_response", "headers", "status")

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.headers = response.headers
        self._chunks: AsyncIterator[bytes] = response.aiter_bytes()

    async def read(self) -> bytes:
        return await anext(self._chunks, b"")

    async def aclose(self) -> None:
        try:
            await self._chunks.aclose()  # type: ignore[attr-defined]
        finally:
            await self._response.aclose()


class _Call:
    """The state of one provider call across its attempts.

    With our own transport the request is ``url`` + ``headers`` + ``content``; with a
    caller's client it is the built ``httpx.Request``.
    """

    __slots__ = ("content", "headers", "request", "retries", "started", "trace", "url", "watchdog")

    def __init__(
        self,
        url: httpx.URL | str,
        content: bytes,
        headers: list[tuple[str, str]],
        request: httpx.Request | None,
        watchdog: _Watchdog,
    ) -> None:
        self.url = url
        self.content = content
        self.headers = headers
        self.request = request
        self.watchdog = watchdog
        self.trace: tuple[TraceEvent, ...] = ()  # retries (rare: no list per call)
        self.retries = 0
        self.started = time.perf_counter()


class HTTPOptions(TypedDict, total=False):
    """The keyword options every HTTP provider takes (documented on :class:`HTTPProvider`).

    Provider constructors accept them as ``**options: Unpack[HTTPOptions]``, so the list
    and its checks live here once.
    """

    base_url: str | None
    http_client: httpx.AsyncClient | None
    timeout: float | httpx.Timeout | None
    max_retries: int
    stream_idle_timeout: float | None
    deadline: float | None
    retry_policy: RetryPolicy | None
    default_headers: Mapping[str, str] | None
    api_key_env: str | None


class HTTPProvider(BaseProvider):
    """Base class of providers that speak HTTP; see the module docstring.

    Args:
        name: the provider's label for logs and errors.
        model: the model to call.
        api_key: the API key; ``None`` reads the environment variable ``api_key_env``.
            Never shown in ``repr``, logs or errors.
        generation: defaults for every request's unset generation settings.
        pricing: overrides the built-in price of ``model``.
        include_raw_output: put the provider's raw payload(s) in ``response.raw``.
        base_url: the API root; ``None`` reads ``base_url_env`` (unless ``api_key_env``
            was given, as presets do), else the vendor's default.
        http_client: an ``httpx.AsyncClient`` to use (not closed by :meth:`aclose`); by
            default the provider creates one over aiohttp and closes it in :meth:`aclose`
            (and sends straight through its transport).
        timeout: per-attempt timeouts: seconds or an ``httpx.Timeout``. ``None`` keeps an
            injected client's own timeouts, else :data:`DEFAULT_TIMEOUT`.
        max_retries: retries after the first attempt (0 disables retrying).
        stream_idle_timeout: seconds a stream may go without a byte, once its response
            headers arrived, before :class:`~promptkit_async.errors.StreamIdleTimeoutError`.
        deadline: seconds for a whole call: every attempt, the waits between them and
            reading the answer to its end (:class:`~promptkit_async.errors.APITimeoutError`).
        retry_policy: backoff timing (see :class:`RetryPolicy`).
        default_headers: extra headers sent with every request.
        api_key_env: the environment variable read when ``api_key`` is ``None``.

    Concurrency: share one instance between any number of tasks on one event loop; calls
    are independent. Use ``async with`` or :meth:`aclose` to release the client.
    """

    #: The API root used when ``base_url`` is not given.
    default_base_url: ClassVar[str] = ""
    #: The environment variable holding the API key when none is passed.
    default_api_key_env: ClassVar[str | None] = None
    #: The environment variable that may hold the API root when ``base_url`` is not given.
    base_url_env: ClassVar[str | None] = None
    #: Response headers that carry the provider's request id, in order of preference.
    request_id_headers: ClassVar[tuple[str, ...]] = ("x-request-id", "request-id")

    def __init__(
        self,
        name: str,
        model: str,
        *,
        api_key: str | None = None,
        generation: GenerationConfig | None = None,
        pricing: ModelPricing | None = None,
        include_raw_output: bool = False,
        base_url: str | None = None,
        http_client: httpx.AsyncClient | None = None,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int = 2,
        stream_idle_timeout: float | None = None,
        deadline: float | None = None,
        retry_policy: RetryPolicy | None = None,
        default_headers: Mapping[str, str] | None = None,
        api_key_env: str | None = None,
    ) -> None:
        super().__init__(name, model, generation=generation, pricing=pricing)
        if not model or not isinstance(model, str):
            raise InvalidRequestError("model must be a non-empty string, e.g. 'gpt-4o-mini'")
        if max_retries < 0:
            raise InvalidRequestError("max_retries must be >= 0")
        for name, value in (("stream_idle_timeout", stream_idle_timeout), ("deadline", deadline)):
            if value is not None and value <= 0:
                raise InvalidRequestError(f"{name} must be a positive number of seconds, or None")
        if base_url is None and api_key_env is None and self.base_url_env:
            base_url = os.environ.get(self.base_url_env) or None
        url = (base_url or self.default_base_url).rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise InvalidRequestError(
                f"base_url must start with http:// or https://, got {url!r} "
                "(e.g. 'http://localhost:11434/v1')"
            )
        env = api_key_env if api_key_env is not None else self.default_api_key_env
        if api_key is None and env:
            api_key = os.environ.get(env)
        self._api_key = api_key or None
        self._api_key_env = env
        self.base_url = url
        self.include_raw_output = include_raw_output
        self.max_retries = max_retries
        self.stream_idle_timeout = stream_idle_timeout
        self.deadline = deadline
        self.retry_policy = retry_policy or RetryPolicy()
        #: Seconds a stream may stay silent after the answer is complete (OpenAI's
        #: ``[DONE]``) before we stop waiting for the body's end and close it.
        self.end_grace = 5.0
        self._timeout: httpx.Timeout | None = None if timeout is None else httpx.Timeout(timeout)
        # With our own client we send straight through its transport (see _open).
        self._transport: AiohttpTransport | None = None
        if http_client is None:
            self._transport = AiohttpTransport()
            http_client = httpx.AsyncClient(
                transport=self._transport,
                timeout=self._timeout or DEFAULT_TIMEOUT,
                trust_env=False,  # the transport reads proxy variables itself
            )
            self._owns_client = True
        else:
            self._owns_client = False
        self._client = http_client
        self._closed = False
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": f"promptkit-async/{__version__}",
        }
        if default_headers:
            headers.update(default_headers)
        if self._api_key:
            headers.update(self._auth_headers(self._api_key))
        self._json_headers = headers
        self._sse_headers = {**headers, "Accept": "text/event-stream"}
        # For our own transport: the client's default headers merged with ours, once (what
        # httpx would send, less Host and Content-Length, which aiohttp adds).
        self._direct_headers = {
            stream: _merged(http_client.headers, self._sse_headers if stream else headers)
            for stream in (False, True)
        }
        self._timeouts = (self._timeout or DEFAULT_TIMEOUT).as_dict()

    def __repr__(self) -> str:
        # Identity only: never the key (nor headers that carry it).
        return (
            f"{type(self).__name__}(name={self.id!r}, model={self.model!r}, "
            f"base_url={redact(self.base_url, self._api_key)!r})"
        )

    @property
    def http_client(self) -> httpx.AsyncClient:
        """The ``httpx.AsyncClient`` of this provider (the caller's, or its own, whose
        transport it sends through directly); it can be shared with other providers."""
        return self._client

    def _auth_headers(self, api_key: str) -> dict[str, str]:
        """The headers that authenticate a request (subclasses: their vendor's scheme)."""
        return {"Authorization": f"Bearer {api_key}"}

    async def aclose(self) -> None:
        """Close the HTTP client if this provider created it. Safe to call twice."""
        self._closed = True
        if self._owns_client:
            await self._client.aclose()

    # --- building and sending -----------------------------------------------------------

    def _encode(self, body: Mapping[str, Any]) -> bytes:
        try:
            return json_dumps(body)
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(
                f"the request body is not JSON-serialisable ({exc}); check extra_body and "
                "tool parameter schemas"
            ) from None

    def _start(self, url: httpx.URL | str, content: bytes, *, stream: bool) -> _Call:
        if self._closed:
            raise ProviderError(
                f"the {self.id} provider is closed; create a new one", provider=self.id
            )
        request = None
        if self._transport is None:
            request = self._client.build_request(
                "POST",
                url,
                content=content,
                headers=self._sse_headers if stream else self._json_headers,
                timeout=httpx.USE_CLIENT_DEFAULT if self._timeout is None else self._timeout,
            )
        watchdog = _Watchdog(self.deadline, self.stream_idle_timeout if stream else None)
        return _Call(url, content, self._direct_headers[stream], request, watchdog)

    async def _open(self, call: _Call) -> _Response:
        """One attempt: send the call's request; the response comes back unread."""
        transport = self._transport
        if transport is None:
            assert call.request is not None
            return _HttpxResponse(await self._client.send(call.request, stream=True))
        # Our own client has no cookies, auth, hooks or mounts to apply, so skip httpx's
        # per-request machinery and objects (tens of us of CPU per call).
        response = await transport.send(
            "POST", call.url, call.headers, call.content, self._timeouts
        )
        if "content-encoding" in response.headers:
            return _HttpxResponse(response.to_httpx())  # httpx decodes, as for any client
        return response

    def _request_id(self, headers: Mapping[str, str]) -> str | None:
        for name in self.request_id_headers:
            value: str | None = headers.get(name)
            if value:
                # Shown in every error: redacted like bodies (a proxy may echo headers).
                return redact(value, self._api_key)  # type: ignore[no-any-return]
        return None

    def _timeout_error(self, call: _Call, request_id: str | None = None) -> APITimeoutError:
        watchdog = call.watchdog
        if watchdog.fired == "idle":
            return StreamIdleTimeoutError(
                f"the stream sent nothing for {watchdog.idle}s (stream_idle_timeout); "
                "the response was closed",
                provider=self.id,
                request_id=request_id,
            )
        return APITimeoutError(
            f"the call did not finish within its {watchdog.timeout}s deadline",
            provider=self.id,
            request_id=request_id,
        )

    def _connection_error(
        self, exc: BaseException, request_id: str | None = None
    ) -> ProviderError | None:
        """The library error for a transport failure, or ``None`` if ``exc`` is not one."""
        detail = redact(
            f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, self._api_key
        )
        url = redact(self.base_url, self._api_key)  # a gateway URL may carry the key
        if isinstance(exc, (httpx.TimeoutException, asyncio.TimeoutError, TimeoutError)):
            return APITimeoutError(
                f"timed out talking to {url} ({detail})",
                provider=self.id,
                request_id=request_id,
            )
        if isinstance(exc, httpx.DecodingError):
            return APIResponseError(
                f"could not decode the response body ({detail})",
                provider=self.id,
                request_id=request_id,
            )
        if isinstance(exc, (httpx.TransportError, aiohttp.ClientError, OSError)):
            return APIConnectionError(
                f"could not talk to {url} ({detail}); check base_url and the network",
                provider=self.id,
                request_id=request_id,
            )
        return None

    def _status_error(
        self, status: int, headers: Mapping[str, str], content: bytes
    ) -> APIStatusError:
        """The typed error for an HTTP error response (its body already read)."""
        text = content.decode("utf-8", "replace")
        body: Any
        try:
            body = json.loads(text) if text else None
        except ValueError:
            body = text
        body = redact(body, self._api_key)
        message, code = _error_message(body)
        if message is None:
            message = (
                body[:500] if isinstance(body, str) and body else f"HTTP {status} with no message"
            )
        message = redact(message, self._api_key)
        return self._make_status_error(
            status, message, code, body, self._request_id(headers), parse_retry_after(headers)
        )

    def _make_status_error(
        self,
        status: int,
        message: str,
        code: object,
        body: Any,
        request_id: str | None,
        retry_after: float | None = None,
    ) -> APIStatusError:
        cls = error_class_for_status(status)
        if cls is BadRequestError and is_context_length_message(message, code):
            cls = ContextLengthExceededError
        if cls is AuthenticationError and not self._api_key and self._api_key_env:
            message += f" (no API key was configured: pass api_key= or set {self._api_key_env})"
        return cls(
            message,
            status_code=status,
            provider=self.id,
            request_id=request_id,
            body=body,
            retry_after=retry_after,
        )

    def _payload_error(self, payload: Mapping[str, Any], request_id: str | None) -> ProviderError:
        """The typed error for an error payload sent inside a 2xx stream or body.

        The status comes from a numeric ``code``/``status`` in the payload, else from its
        error type (``rate_limit`` → 429, ``invalid_request`` → 400, ...), else 500.
        """
        body = redact(payload, self._api_key)
        message, code = _error_message(body)
        error = body.get("error") if isinstance(body, Mapping) else None
        kind = ""
        status: int | None = None
        if isinstance(error, Mapping):
            kind = str(error.get("type") or error.get("status") or "")
            for key in ("status_code", "code", "status"):
                value = error.get(key)
                if isinstance(value, int) and 400 <= value < 600:
                    status = value
                    break
                if isinstance(value, str) and value.isdigit() and 400 <= int(value) < 600:
                    status = int(value)
                    break
        if status is None:
            status = _status_for_kind(f"{kind} {code or ''}".lower())
        return self._make_status_error(
            status, message or "the provider reported an error", code, body, request_id
        )

    def _event_error(self, data: str, request_id: str | None, at_end: bool) -> APIResponseError:
        """The error for an event whose data cannot be parsed.

        ``at_end``: the event was flushed at the end of the body (``SSEStream.ended``),
        i.e. cut off mid-event: :class:`~promptkit_async.errors.IncompleteStreamError`.
        """
        snippet = redact(data[:200], self._api_key)
        if at_end:
            return IncompleteStreamError(
                f"the stream ended inside an event: {snippet!r}",
                provider=self.id,
                request_id=request_id,
            )
        return APIResponseError(
            f"the event stream carried invalid JSON: {snippet!r}",
            provider=self.id,
            request_id=request_id,
        )

    async def _read_error_body(self, response: _Response) -> bytes:
        """Up to 64 KiB of an error response's body; always closes the response."""
        parts: list[bytes] = []
        size = 0
        try:
            while size < _ERROR_BODY_LIMIT and (part := await response.read()):
                parts.append(part)
                size += len(part)
        except Exception:  # a half-read error body still tells us the status
            pass
        finally:
            await _close(response)
        return b"".join(parts)[:_ERROR_BODY_LIMIT]

    async def _read_body(self, response: _Response) -> bytes:
        """A 2xx body, refused past :data:`MAX_BODY_SIZE` (a broken or endless body)."""
        parts: list[bytes] = []
        size = 0
        while part := await response.read():
            size += len(part)
            if size > MAX_BODY_SIZE:
                raise APIResponseError(
                    f"the response body is larger than {MAX_BODY_SIZE} bytes; the server's "
                    "answer is broken or never ends",
                    provider=self.id,
                    request_id=self._request_id(response.headers),
                )
            parts.append(part)
        return b"".join(parts)

    async def _send(self, call: _Call, *, read_body: bool) -> tuple[_Response, bytes]:
        """Send the call's request with retries until a 2xx arrives.

        With ``read_body`` the whole body is read (and the response closed) inside the
        retry loop; otherwise the response is returned open, its body unread.
        """
        watchdog = call.watchdog
        while True:
            if watchdog.fired is not None:
                raise self._timeout_error(call)
            response: _Response | None = None
            retry_after: float | None = None
            status: int | None = None
            watchdog.arm()
            try:
                response = await self._open(call)
                if response.status < 300:
                    if not read_body:
                        return response, b""
                    try:
                        return response, await self._read_body(response)
                    finally:
                        await _close(response)
                status = response.status
                content = await self._read_error_body(response)
            except asyncio.CancelledError:
                if response is not None:
                    await _close(response)
                if watchdog.absorb():
                    raise self._timeout_error(call) from None
                raise
            except Exception as exc:
                if response is not None:
                    await _close(response)
                mapped = self._connection_error(exc)
                if mapped is None:
                    raise
                error: ProviderError = mapped
                retryable = isinstance(mapped, APIConnectionError)
                cause: BaseException | None = exc
            else:
                assert response is not None
                error = self._status_error(status, response.headers, content)
                retry_after = parse_retry_after(response.headers)
                retryable = should_retry_status(status, response.headers)
                cause = None
            finally:
                watchdog.disarm()
            if not retryable or call.retries >= self.max_retries:
                raise error from cause
            await self._wait_to_retry(call, error, status, retry_after, cause)

    async def _wait_to_retry(
        self,
        call: _Call,
        error: ProviderError,
        status: int | None,
        retry_after: float | None,
        cause: BaseException | None,
    ) -> None:
        """Record and log a retry, then sleep before it (or raise if the deadline forbids)."""
        delay = self.retry_policy.delay(call.retries, retry_after)
        watchdog = call.watchdog
        remaining = watchdog.remaining()
        if remaining is not None and delay >= remaining:
            # Waiting would pass the deadline: report the real failure now.
            raise error from cause
        call.retries += 1
        reason = f"HTTP {status}" if status is not None else type(error).__name__
        detail = {
            "attempt": call.retries + 1,
            "max_retries": self.max_retries,
            "wait": delay,
            "reason": reason,
            "status": status,
            "retry_after": retry_after,
            "error": error.message,
        }
        call.trace += (TraceEvent("retry", detail),)
        logger.info(
            "%s: %s; retry %d/%d in %.3fs%s",
            self.id,
            reason,
            call.retries,
            self.max_retries,
            delay,
            "" if retry_after is None else f" (server asked {retry_after:.3f}s)",
            extra={"provider": self.id, "retry": detail},
        )
        watchdog.arm()
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            if watchdog.absorb():
                raise error from cause
            raise
        finally:
            watchdog.disarm()

    async def _post_json(
        self, url: httpx.URL | str, body: Mapping[str, Any]
    ) -> tuple[Any, _Call, str | None]:
        """POST ``body`` and return the decoded JSON answer, the call and its request id.

        Raises the typed errors described in the module docstring; a 2xx whose body is
        not JSON raises :class:`~promptkit_async.errors.APIResponseError`.
        """
        call = self._start(url, self._encode(body), stream=False)
        try:
            response, content = await self._send(call, read_body=True)
        finally:
            call.watchdog.close()
        request_id = self._request_id(response.headers)
        try:
            payload = json_loads(content)
        except ValueError:
            snippet = redact(content[:200].decode("utf-8", "replace"), self._api_key)
            raise APIResponseError(
                f"the response is not valid JSON: {snippet!r}",
                provider=self.id,
                request_id=request_id,
            ) from None
        return payload, call, request_id

    def _post_events(self, url: httpx.URL | str, body: Mapping[str, Any]) -> SSEStream:
        """POST ``body`` and stream the answer's server-sent events (see :class:`SSEStream`).

        Nothing is sent until the first ``__anext__``. Close the stream (``aclose``) when
        done; that closes the HTTP response.
        """
        return SSEStream(self, self._start(url, self._encode(body), stream=True))


def _status_for_kind(kind: str) -> int:
    # Error "type"/"code"/"status" words used by OpenAI, Anthropic and Gemini.
    if "rate" in kind or "quota" in kind or "exhausted" in kind:
        return 429
    if "auth" in kind or "api_key" in kind:
        return 401
    if "permission" in kind:
        return 403
    if "not_found" in kind:
        return 404
    if "context_length" in kind or "invalid" in kind or "bad_request" in kind:
        return 400
    if "overloaded" in kind:
        return 529
    return 500


def _merged(defaults: httpx.Headers, headers: Mapping[str, str]) -> list[tuple[str, str]]:
    merged = defaults.copy()
    merged.update(headers)
    return merged.multi_items()


async def _close(response: _Response) -> None:
    try:
        await response.aclose()
    except Exception:  # closing must not hide the error being reported
        logger.debug("error while closing a response", exc_info=True)


class SSEStream:
    """The server-sent events of one streamed call, as an async iterator.

    The request is sent on the first ``__anext__``; connection failures and retryable
    statuses are retried until the first event has been returned, never after. Idle and
    deadline limits raise :class:`~promptkit_async.errors.StreamIdleTimeoutError` /
    :class:`~promptkit_async.errors.APITimeoutError`; a connection lost mid-stream raises
    :class:`~promptkit_async.errors.IncompleteStreamError` (the server closed it early)
    or :class:`~promptkit_async.errors.APIConnectionError`. The normal end of the body
    ends the iteration (whether the answer was complete is the provider's call).
    :meth:`aclose` closes the response at once; so does cancellation of the reading
    task. One stream belongs to one consumer task.

    Attributes:
        headers: the 2xx response's headers, a case-insensitive mapping (``None`` before
            connecting).
        request_id: the provider's request id header.
        trace: retries that happened (``TraceEvent("retry", ...)``).
        started: ``time.perf_counter()`` when the call started.
    """

    __slots__ = (
        "_call",
        "_decoder",
        "_delivered",
        "_done",
        "_ending",
        "_events",
        "_provider",
        "_response",
        "ended",
        "headers",
        "request_id",
    )

    def __init__(self, provider: HTTPProvider, call: _Call) -> None:
        self._provider = provider
        self._call = call
        self._decoder = SSEDecoder()
        self._events: deque[ServerSentEvent] = deque()
        self._delivered = False
        self._done = False
        self._ending = False
        self._response: _Response | None = None
        self.headers: Mapping[str, str] | None = None
        self.request_id: str | None = None
        #: True once the body has ended: events returned after that were flushed at EOF
        #: (possibly cut off, as the server never closed them with a blank line).
        self.ended = False

    @property
    def trace(self) -> tuple[TraceEvent, ...]:
        """Retries of this call so far."""
        return self._call.trace

    @property
    def started(self) -> float:
        """``time.perf_counter()`` at the start of the call."""
        return self._call.started

    def expect_end(self, grace: float = 5.0) -> None:
        """The provider has its whole answer (e.g. OpenAI's ``[DONE]``): keep reading only
        to the end of the body, so the connection goes back to the pool, but for at most
        ``grace`` idle seconds; then, or on any error, just end quietly."""
        self._ending = True
        if isinstance(self._response, RawResponse):
            # Its read timeout is timed by the transport's clock: no timer of our own.
            self._response.limit_read_timeout(grace)
            return
        watchdog = self._call.watchdog
        if watchdog.idle is None or watchdog.idle > grace:
            watchdog.set_idle(grace)

    def __aiter__(self) -> SSEStream:
        return self

    async def __anext__(self) -> ServerSentEvent:
        events = self._events
        if not events:
            batch = await self.next_batch()
            if not batch:
                raise StopAsyncIteration
            events.extend(batch)
        return events.popleft()

    async def next_batch(self) -> list[ServerSentEvent]:
        """The events completed by the next network read (``[]`` once the stream ended).

        Cheaper than iterating one event at a time when reads carry several events. Do
        not mix with ``async for`` on the same stream.
        """
        if self._done:
            return []
        call = self._call
        watchdog = call.watchdog
        provider = self._provider
        while True:
            if self._response is None:
                await self._connect()
            if watchdog.fired is not None:
                await self.aclose()
                if self._ending:
                    return []
                raise provider._timeout_error(call, self.request_id)
            if watchdog.active:
                watchdog.arm(idle=True)
            try:
                chunk = await self._response.read()  # type: ignore[union-attr]
            except asyncio.CancelledError:
                await self.aclose()
                if watchdog.absorb():
                    if self._ending:
                        return []
                    raise provider._timeout_error(call, self.request_id) from None
                raise
            except Exception as exc:
                await self._drop_response()
                if self._ending:  # the answer is complete; a broken tail does not matter
                    await self.aclose()
                    return []
                error = provider._connection_error(exc, self.request_id)
                if error is None:
                    await self.aclose()
                    raise
                if (
                    not self._delivered
                    and isinstance(error, APIConnectionError)
                    and call.retries < provider.max_retries
                ):
                    await provider._wait_to_retry(call, error, None, None, exc)
                    self._decoder = SSEDecoder()
                    continue
                await self.aclose()
                if self._delivered and isinstance(exc, httpx.RemoteProtocolError):
                    raise IncompleteStreamError(
                        f"the server closed the stream before it finished ({error.message})",
                        provider=provider.id,
                        request_id=self.request_id,
                    ) from exc
                raise error from exc
            finally:
                watchdog.armed = False
            try:
                if chunk:
                    events = self._decoder.feed(chunk)
                else:
                    events = self._decoder.flush()
                    self._done = self.ended = True
                    await self.aclose()
            except APIResponseError as exc:  # the decoder's size cap
                await self.aclose()
                if self._ending:
                    return []
                raise APIResponseError(
                    exc.message, provider=provider.id, request_id=self.request_id
                ) from None
            if events:
                self._delivered = True
                return events
            if self._done:
                return events

    async def _connect(self) -> None:
        response, _ = await self._provider._send(self._call, read_body=False)
        self._response = response
        self.headers = response.headers
        self.request_id = self._provider._request_id(response.headers)
        if response.headers.get("content-type", "").startswith("application/json"):
            await self._json_instead_of_events(response)

    async def _json_instead_of_events(self, response: _Response) -> NoReturn:
        # Some servers answer a streaming request with a plain JSON error (or body).
        provider = self._provider
        content = await provider._read_error_body(response)
        self._done = True
        try:
            payload = json.loads(content)
        except ValueError:
            payload = None
        if isinstance(payload, Mapping) and "error" in payload:
            raise provider._payload_error(payload, self.request_id)
        raise APIResponseError(
            "expected a server-sent event stream but got a JSON body",
            provider=provider.id,
            request_id=self.request_id,
        )

    async def _drop_response(self) -> None:
        response, self._response = self._response, None
        if response is not None:
            await _close(response)

    async def aclose(self) -> None:
        """Close the HTTP response now and stop the call's timers. Safe to call twice."""
        self._done = True
        self._events.clear()
        self._call.watchdog.close()
        await self._drop_response()
