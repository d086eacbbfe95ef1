"""What every HTTP provider shares: sending, timeouts, retries, error mapping, redaction.

A provider module (OpenAI, Anthropic, Gemini...) subclasses :class:`HTTPProvider`, says how
to authenticate (:meth:`HTTPProvider._auth_headers`) and keeps its wire format to itself; it
sends requests with :meth:`HTTPProvider._post_json` (whole JSON answer) or
:meth:`HTTPProvider._post_events` (server-sent events), which handle:

* sending: by default straight through the provider's own
  :class:`~promptkit_async.providers._transport.AiohttpTransport` (no httpx client,
  request, response or headers objects per call: a fraction of the client CPU of a
  streamed turn); with ``http_client=`` through the caller's ``httpx.AsyncClient``
  (never closed by us; what ``respx`` mocks in tests). One path either way, one
  translation of transport errors (:meth:`HTTPProvider._connection_error`);
* timeouts: standard scopes, a few per call, none per read. A whole answer: one
  ``asyncio.timeout`` scope per attempt (connecting, the headers, then rescheduled once
  for the body). A stream: a :class:`_StreamTimer` per attempt, kept by one timer per
  provider and loop (:class:`_Clock`), for ``stream_idle_timeout`` (on by default,
  120 s; or the read timeout if shorter): it reschedules the ``asyncio.timeout(None)``
  scope around the wait for the headers if they are late, then closes the response when
  a read of the body overstays (aiohttp's public ``close()``: no task is cancelled).
  The call's total ``deadline``: one ``asyncio.timeout_at`` scope around the attempts
  and waits (and the stream's timer for its body). The caller's own ``asyncio.timeout``
  / ``anyio.fail_after`` around a call or a stream fire as in plain asyncio;
* retries: 408 / 409 / 429 / 5xx and connection errors, waiting as the failed response asks
  (``retry-after-ms``, ``Retry-After``) or with jittered exponential backoff, each failed
  response closed before the wait, never once a streamed event has reached the provider,
  never after an idle timeout (the prompt is not re-sent to a silent server); each retry
  is a ``TraceEvent("retry", ...)`` and a log record on ``promptkit_async.providers``;
* errors: HTTP statuses and transport failures become :mod:`promptkit_async.errors` classes
  carrying status, request id, the provider's message and body. The API key is held as
  a :class:`Secret`, scrubbed from every body and event the server sends, redacted from
  messages, request ids and mapping keys and values; errors show ``base_url``'s origin
  only;
* size caps: an error body is read up to 64 KiB, a 2xx body up to :data:`MAX_BODY_SIZE`
  and one SSE line or event up to ``MAX_EVENT_SIZE`` (32 MiB each, beyond which
  :class:`~promptkit_async.errors.APIResponseError`), all counted on *decoded* bytes: a
  ``gzip`` / ``deflate`` body (the only encodings we ask for) is inflated in 64 KiB steps,
  so a compression bomb stops at the same caps.

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
import hmac
import json
import logging
import math
import os
import re
import sys
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Any, ClassVar, NoReturn, Protocol

import aiohttp
import anyio
import httpx
from typing_extensions import TypedDict

from .. import events
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
from ._transport import AiohttpTransport
from .base import BaseProvider, GenerationConfig

if sys.version_info >= (3, 11):
    from asyncio import timeout as _timeout
    from asyncio import timeout_at as _timeout_at
else:  # pragma: no cover - Python 3.10

    class _Timeout:
        """``asyncio.timeout`` for Python 3.10, on anyio's cancel scope: its deadline may be
        moved from a loop callback (async_timeout's binds to the task current at the move,
        none in a callback). Raises ``asyncio.TimeoutError`` when it expires."""

        def __init__(self, when: float | None) -> None:
            self._scope = anyio.CancelScope(deadline=math.inf if when is None else when)

        async def __aenter__(self) -> _Timeout:
            self._scope.__enter__()
            return self

        async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
            # The scope swallows only the cancellation it caused: then we say timeout.
            self._scope.__exit__(exc_type, exc, tb)
            if self._scope.cancelled_caught:
                raise asyncio.TimeoutError from exc

        def reschedule(self, when: float | None) -> None:
            self._scope.deadline = math.inf if when is None else when

    def _timeout(delay: float | None) -> _Timeout:
        return _Timeout(None if delay is None else asyncio.get_running_loop().time() + delay)

    def _timeout_at(when: float | None) -> _Timeout:
        return _Timeout(when)


def _move(scope: Any, when: float) -> None:
    """Move a timeout scope's deadline (its ``reschedule``; safe from a loop callback)."""
    scope.reschedule(when)


__all__ = [
    "DEFAULT_STREAM_IDLE_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "MAX_BODY_SIZE",
    "HTTPProvider",
    "SSEStream",
    "Secret",
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
#: The default ``stream_idle_timeout``: a streamed call fails with
#: :class:`~promptkit_async.errors.StreamIdleTimeoutError` (not retried) after this many
#: seconds without a byte. Long enough for a reasoning model that thinks before its first
#: token; short enough that a silent upstream costs two minutes, not half an hour.
DEFAULT_STREAM_IDLE_TIMEOUT = 120.0

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


class Secret:
    """A secret string (an API key) that does not show itself.

    ``repr`` and ``str`` give ``[REDACTED]``, so a secret held in a variable or attribute
    stays hidden from logs, tracebacks and error trackers that capture local variables;
    :meth:`reveal` returns the value. Equal to another ``Secret`` with the same value
    (compared in constant time). It cannot be pickled (nor stored by accident).

    Args:
        value: the secret.
    """

    __slots__ = ("_bytes", "_value")

    def __init__(self, value: str | Secret) -> None:
        if isinstance(value, Secret):
            value = value.reveal()
        if not isinstance(value, str):
            raise InvalidRequestError("a Secret holds a string (e.g. an API key)")
        self._value = value
        self._bytes = value.encode()  # for scrubbing bodies without encoding per chunk

    def reveal(self) -> str:
        """The secret value itself (hand it only to what must send it)."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('[REDACTED]')"

    def __str__(self) -> str:
        return _REDACTED

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __reduce__(self) -> Any:
        raise TypeError("a Secret cannot be pickled")


class _SecretHeader(str):
    """A header value that carries a secret: sent as itself, shown redacted by ``repr``
    (so header lists and mappings in a traceback's locals do not show the key)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(_REDACTED)


def redact(value: Any, secret: str | Secret | None) -> Any:
    """``value`` with every occurrence of ``secret`` replaced, through dicts (keys and
    values) and lists."""
    if isinstance(secret, Secret):
        secret = secret.reveal()
    if not secret:
        return value
    if isinstance(value, str):
        return value.replace(secret, _REDACTED) if secret in value else value
    if isinstance(value, Mapping):
        return {redact(k, secret): redact(v, secret) for k, v in value.items()}
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


class _Clock:
    """One timer for every streamed attempt of a provider on one event loop.

    Each attempt's :class:`_StreamTimer` registers here; the clock keeps one
    ``loop.call_at`` handle, due when the earliest timer could next be overdue, and on
    firing asks every timer whether it is overdue (which fires it) or when to look again.
    Waits start and end constantly (every read of every stream) but only move a limit
    later, so the handle is rarely moved: about one check per ``gap`` seconds, instead of
    a timer object (and, on uvloop, a libuv timer) created and cancelled per attempt.
    """

    __slots__ = ("_handle", "_timers", "_when", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._timers: set[_StreamTimer] = set()
        self._handle: asyncio.TimerHandle | None = None
        self._when = math.inf  # when the handle fires (inf: no handle)

    def add(self, timer: _StreamTimer, due: float) -> None:
        self._timers.add(timer)
        self.wake(due)

    def discard(self, timer: _StreamTimer) -> None:
        self._timers.discard(timer)  # (the handle may fire for nothing: harmless)

    def wake(self, due: float) -> None:
        """Look at the timers at ``due`` at the latest."""
        if due < self._when:
            if self._handle is not None:
                self._handle.cancel()
            self._when = due
            self._handle = self.loop.call_at(due, self._check)

    def _check(self) -> None:
        self._handle = None
        self._when = math.inf
        now = self.loop.time() + 0.001  # the loop may run a timer a hair early
        timers = self._timers
        earliest = math.inf
        for timer in list(timers):  # (a timer firing may close a response: copy first)
            due = timer.check(now)
            if due is None:
                timers.discard(timer)
            elif due < earliest:
                earliest = due
        if earliest != math.inf:
            self.wake(earliest)

    def close(self) -> None:
        self._timers.clear()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._when = math.inf


class _StreamTimer:
    """The limits of one streamed attempt over our transport, kept by the provider's
    :class:`_Clock` (no timer object of its own).

    A wait records when it began (``since``; ``None`` while nobody waits). First the wait
    for the headers, connecting included: it runs in an ``asyncio.timeout(None)`` scope
    (:meth:`watch`) that is rescheduled to "now" if the headers are ``gap`` seconds late,
    so the scope itself cancels and raises, as a standard scope does. Then each read of
    the body (:meth:`reading`): an overdue read, or the call's deadline, has the response
    closed (aiohttp's public ``ClientResponse.close()``), which fails the waiting read at
    once, and ``fired`` says why; no task is cancelled there.

    Starting or ending a wait is two attribute writes (a scope with a deadline per read,
    ``asyncio.timeout``, costs a timer each, ~11 per turn).
    """

    __slots__ = ("_clock", "_close", "_scope", "deadline", "fired", "gap", "reason", "since")

    def __init__(self, clock: _Clock, gap: float, reason: str) -> None:
        self._clock = clock
        self.gap = gap  # the longest wait for the headers, then for each piece of the body
        self.reason = reason  # what an overrun is reported as: "idle", "read", "end"
        self.deadline: float | None = None  # the call's, on the loop's clock (body only)
        self.fired: str | None = None
        self.since: float | None = clock.loop.time()  # the headers are awaited from now
        self._scope: Any = None  # the headers' scope, while they are awaited
        self._close: Callable[[], None] | None = None  # the response, once it is there
        clock.add(self, self.since + gap)

    def watch(self, scope: Any) -> None:
        """The scope around the wait for the headers (``None`` once they arrived)."""
        self._scope = scope
        if scope is None:
            self.since = None

    def reading(self, close: Callable[[], None], deadline: float | None) -> None:
        """The headers arrived: from now on time the body's reads, closing with ``close``."""
        self._close = close
        if deadline is not None:
            self.deadline = deadline
            self._clock.wake(deadline)

    def check(self, now: float) -> float | None:
        """The clock's question: fire if a limit has passed (then ``None``), else say
        when this timer could next be overdue."""
        deadline = self.deadline
        if deadline is not None and now >= deadline and self._close is not None:
            self._fire("deadline")
            return None
        since = self.since
        if since is None:
            due = now + self.gap  # nobody waits now; look again a gap later
        else:
            due = since + self.gap
            if now >= due:
                self._fire(self.reason)
                return None
        return due if deadline is None or due < deadline else deadline

    def _fire(self, reason: str) -> None:
        self.fired = reason
        if self._scope is not None:
            _move(self._scope, self._clock.loop.time())  # the scope cancels, and says so
        elif self._close is not None:
            self._close()

    def limit(self, gap: float, reason: str) -> None:
        """From now on wait at most ``gap`` seconds per read, reported as ``reason``."""
        if self.gap <= gap:
            return
        self.gap = gap
        self.reason = reason
        self._clock.wake(self._clock.loop.time() + gap)

    def cancel(self) -> None:
        self._clock.discard(self)


class _Response(Protocol):
    """An open response as the retry loop and :class:`SSEStream` read it: our transport's
    :class:`~promptkit_async.providers._transport.RawResponse`, :class:`_HttpxResponse`
    or either decoded by :class:`_Decoded`. ``headers`` is case-insensitive; ``read``
    returns the next piece of the body, ``b""`` at its end."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    async def read(self) -> bytes: ...

    async def aclose(self) -> None: ...


class _HttpxResponse:
    """An ``httpx.Response`` from a caller's client, read as a :class:`_Response`: its
    raw bytes, decoded (bounded) by :class:`_Decoded` like our transport's. A body that
    is already in memory (a ``respx`` mock's) is read as httpx decoded it (``decoded``)."""

    __slots__ = ("_chunks", "_response", "decoded", "headers", "status")

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.headers = response.headers
        self.decoded = response.is_stream_consumed
        if self.decoded:
            self._chunks: AsyncIterator[bytes] = _once(response.content)
        else:
            self._chunks = response.aiter_raw()

    async def read(self) -> bytes:
        return await anext(self._chunks, b"")

    async def aclose(self) -> None:
        try:
            await self._chunks.aclose()  # type: ignore[attr-defined]
        finally:
            await self._response.aclose()


async def _once(content: bytes) -> AsyncIterator[bytes]:
    if content:
        yield content


class _DecodeError(Exception):
    """A compressed body that cannot be decoded (or an encoding we did not ask for)."""


#: Decoded bytes produced per step at most: a compressed body inflates by this much
#: between two checks of the size caps, whatever its compression ratio.
_DECODE_STEP = 64 * 1024
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
#: What we ask for: both are in the standard library and decoded in bounded steps.
_ACCEPT_ENCODING = "gzip, deflate"


class _Decoded:
    """A ``Content-Encoding: gzip / deflate`` body decoded in steps of at most
    :data:`_DECODE_STEP` bytes, so the callers' size caps (64 KiB of an error body, the
    2xx body cap, the SSE line and event caps) bound the memory a compression bomb can
    take: a step's input that would inflate further stays compressed until the next read.
    Any other encoding raises :class:`_DecodeError` (we only advertise these two)."""

    __slots__ = ("_encoding", "_fresh", "_inner", "_tail", "_zlib", "headers", "status")

    def __init__(self, inner: _Response, encoding: str) -> None:
        self._inner = inner
        self._encoding = encoding
        self.status = inner.status
        self.headers = inner.headers
        wbits = _WBITS.get(encoding)
        self._zlib: Any = None if wbits is None else zlib.decompressobj(wbits)
        self._tail = b""
        self._fresh = True  # nothing decoded yet

    async def read(self) -> bytes:
        if self._zlib is None:
            raise _DecodeError(f"unsupported Content-Encoding {self._encoding[:40]!r}")
        while True:
            data = self._tail
            if not data:
                data = await self._inner.read()
                if not data:
                    try:
                        return self._zlib.flush()  # type: ignore[no-any-return]
                    except zlib.error as exc:
                        raise _DecodeError(f"{self._encoding}: {exc}") from None
            try:
                out = self._zlib.decompress(data, _DECODE_STEP)
            except zlib.error as exc:
                if self._encoding == "deflate" and self._fresh:
                    # Some servers send raw deflate, without the zlib header.
                    self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
                    self._encoding = "raw deflate"
                    self._tail = data
                    continue
                raise _DecodeError(f"{self._encoding}: {exc}") from None
            self._tail = self._zlib.unconsumed_tail
            if out:
                self._fresh = False
                return out  # type: ignore[no-any-return]

    def close(self) -> None:
        self._inner.close()  # type: ignore[attr-defined]  # only over RawResponse

    def at_eof(self) -> bool:
        return False  # (compressed input may still be pending)

    async def aclose(self) -> None:
        await self._inner.aclose()


class _Call:
    """The state of one provider call across its attempts.

    With our own transport the request is ``url`` + ``headers`` + ``content``; with a
    caller's client it is the built ``httpx.Request``. ``deadline`` is the call's end on
    the event loop's clock (``None``: no total deadline).
    """

    __slots__ = (
        "content",
        "deadline",
        "headers",
        "request",
        "retries",
        "started",
        "stream",
        "timer",
        "trace",
        "url",
    )

    def __init__(
        self,
        url: httpx.URL | str,
        content: bytes,
        headers: list[tuple[str, str]],
        request: httpx.Request | None,
        deadline: float | None,
        stream: bool,
    ) -> None:
        self.url = url
        self.content = content
        self.headers = headers
        self.request = request
        self.deadline = deadline
        self.stream = stream
        self.timer: _StreamTimer | None = None  # a streamed 2xx's, for its SSEStream
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
        api_key: the API key (a ``str`` or a :class:`Secret`); ``None`` reads the
            environment variable ``api_key_env``. Held as a :class:`Secret`: never shown
            in ``repr``, logs, errors or the local variables of a traceback.
        generation: defaults for every request's unset generation settings.
        pricing: overrides the built-in price of ``model``.
        include_raw_output: put the provider's raw payload(s) in ``response.raw``.
        base_url: the API root; ``None`` reads ``base_url_env`` (unless ``api_key_env``
            was given, as presets do), else the vendor's default.
        http_client: an ``httpx.AsyncClient`` to send through (not closed by
            :meth:`aclose`), e.g. one that ``respx`` mocks in tests. By default the
            provider sends through its own
            :class:`~promptkit_async.providers.AiohttpTransport` (no httpx client) and
            closes it in :meth:`aclose`.
        timeout: per-attempt timeouts: seconds or an ``httpx.Timeout``. ``connect`` and
            ``pool`` bound getting a connection; ``read`` bounds the wait for the
            response headers and for each piece of the body. ``None`` keeps an injected
            client's own timeouts, else :data:`DEFAULT_TIMEOUT`.
        max_retries: retries after the first attempt (0 disables retrying).
        stream_idle_timeout: the longest a streamed call waits for its response headers
            or for the next piece of the body before
            :class:`~promptkit_async.errors.StreamIdleTimeoutError` (not retried; a
            silent wait for the headers is retried like a read timeout). ``None``:
            :data:`DEFAULT_STREAM_IDLE_TIMEOUT` (120 s); ``math.inf`` turns it off.
        deadline: seconds for a whole call: every attempt, the waits between them and
            reading the answer to its end (:class:`~promptkit_async.errors.APITimeoutError`).
        retry_policy: backoff timing (see :class:`RetryPolicy`).
        default_headers: extra headers sent with every request.
        api_key_env: the environment variable read when ``api_key`` is ``None``.

    Timeouts and cancellation: our limits are ``asyncio.timeout`` scopes (per attempt and
    per call) plus, for streams over our transport, one timer per provider that
    reschedules an attempt's headers' scope or closes the response when a wait overstays; none
    of them cancels anything but its own scope, so the caller's ``asyncio.timeout`` /
    ``anyio.fail_after`` / task-group cancellation around a call or a stream fires
    exactly as in plain asyncio.

    Concurrency: share one instance between any number of tasks on one event loop; calls
    are independent. Use ``async with`` or :meth:`aclose` to release the transport.
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
        # First of all: from here on no frame of ours holds the key as a plain string
        # (error trackers capture the local variables of every frame of a traceback).
        key: Secret | None = Secret(api_key) if api_key else None
        del api_key
        super().__init__(name, model, generation=generation, pricing=pricing)
        if not model or not isinstance(model, str):
            raise InvalidRequestError("model must be a non-empty string, e.g. 'gpt-4o-mini'")
        if max_retries < 0:
            raise InvalidRequestError("max_retries must be >= 0")
        for name, value in (("stream_idle_timeout", stream_idle_timeout), ("deadline", deadline)):
            if value is not None and not value > 0:
                raise InvalidRequestError(f"{name} must be a positive number of seconds, or None")
        if base_url is None and api_key_env is None and self.base_url_env:
            base_url = os.environ.get(self.base_url_env) or None
        url = (base_url or self.default_base_url).rstrip("/")
        if not url.startswith(("http://", "https://")):
            # Never the value itself: a URL may carry a key or a token.
            scheme = url.partition("://")[0] if "://" in url else ""
            shown = f"its scheme is {scheme!r}" if scheme.isalnum() else "it has no scheme"
            raise InvalidRequestError(
                f"base_url must start with http:// or https:// ({shown}); "
                "e.g. 'http://localhost:11434/v1'"
            )
        env = api_key_env if api_key_env is not None else self.default_api_key_env
        if key is None and env:
            key = Secret(os.environ.get(env) or "") or None
        self._api_key = key
        self._api_key_env = env
        self.base_url = url
        self._origin = _origin(url)
        self.include_raw_output = include_raw_output
        self.max_retries = max_retries
        if stream_idle_timeout is None:
            stream_idle_timeout = DEFAULT_STREAM_IDLE_TIMEOUT
        self.stream_idle_timeout: float | None = (
            None if stream_idle_timeout == float("inf") else stream_idle_timeout
        )
        self.deadline = deadline
        self.retry_policy = retry_policy or RetryPolicy()
        #: Seconds a stream may stay silent after the answer is complete (OpenAI's
        #: ``[DONE]``) before we stop waiting for the body's end and close it.
        self.end_grace = 5.0
        self._timeout: httpx.Timeout | None = None if timeout is None else httpx.Timeout(timeout)
        self._timeouts = (self._timeout or DEFAULT_TIMEOUT).as_dict()
        # Our own transport, sent to directly; or the caller's httpx client.
        self._transport: AiohttpTransport | None = None
        if http_client is None:
            self._transport = AiohttpTransport()
        self._client = http_client
        self._closed = False
        self._clock: _Clock | None = None  # the streams' timers, on the loop in use
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Accept-Encoding": _ACCEPT_ENCODING,
            "User-Agent": f"promptkit-async/{__version__}",
        }
        if default_headers:
            headers.update(default_headers)
        if key:
            secret = key.reveal()
            for header, text in self._auth_headers(secret).items():
                headers[header] = _SecretHeader(text) if secret in text else text
        self._json_headers = headers
        self._sse_headers = {**headers, "Accept": "text/event-stream"}
        self._direct_headers = {
            stream: list((self._sse_headers if stream else headers).items())
            for stream in (False, True)
        }

    def __repr__(self) -> str:
        # Identity only: never the key, nor the URL's user info or query.
        return (
            f"{type(self).__name__}(name={self.id!r}, model={self.model!r}, "
            f"base_url={redact(_origin(self.base_url, path=True), self._api_key)!r})"
        )

    @property
    def http_client(self) -> httpx.AsyncClient | None:
        """The caller's ``httpx.AsyncClient``, or ``None`` when the provider sends
        through its own transport."""
        return self._client

    def _auth_headers(self, api_key: str) -> dict[str, str]:
        """The headers that authenticate a request (subclasses: their vendor's scheme)."""
        return {"Authorization": f"Bearer {api_key}"}

    async def aclose(self) -> None:
        """Close the transport if this provider created it. Safe to call twice."""
        self._closed = True
        if self._clock is not None:
            self._clock.close()
        if self._transport is not None:
            await self._transport.aclose()

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
        if self._client is not None:
            request = self._client.build_request(
                "POST",
                url,
                content=content,
                headers=self._sse_headers if stream else self._json_headers,
                timeout=httpx.USE_CLIENT_DEFAULT if self._timeout is None else self._timeout,
            )
        deadline = None
        if self.deadline is not None:
            deadline = asyncio.get_running_loop().time() + self.deadline
        return _Call(url, content, self._direct_headers[stream], request, deadline, stream)

    def _gap(self, stream: bool) -> tuple[float | None, str]:
        """The longest wait for the headers or a piece of the body, and its name."""
        read = self._timeouts.get("read")
        idle = self.stream_idle_timeout if stream else None
        if idle is not None and (read is None or idle <= read):
            return idle, "idle"
        return read, "read"

    def _attempt(
        self, call: _Call, read_body: bool
    ) -> Coroutine[Any, Any, tuple[_Response, bytes]]:
        """One attempt: the response and its body (read whole and closed, unless it is
        a 2xx and not ``read_body``: then returned open, body unread, ``b""``).

        A plain function choosing the coroutine to await (a stream over our transport:
        :meth:`_attempt_stream`), so a streamed turn keeps one frame less alive.
        """
        if call.stream and self._transport is not None:
            gap, reason = self._gap(True)
            if gap is not None:
                return self._attempt_stream(call, gap, reason)
        return self._attempt_whole(call, read_body)

    async def _attempt_whole(self, call: _Call, read_body: bool) -> tuple[_Response, bytes]:
        """One attempt that is not a stream over our transport with a limit (see
        :meth:`_attempt`).

        Over our transport one ``asyncio.timeout`` scope bounds the attempt: ``connect``
        plus the read (streaming: the shorter of read and idle) limit until the headers
        (aiohttp bounds connecting and the pool wait itself; a long pool wait counts
        against the scope), then that limit again for a body read whole. Over a
        caller's client httpx applies its own timeouts.
        """
        response: _Response | None = None
        try:
            if self._transport is None:
                assert self._client is not None
                assert call.request is not None
                sent = _HttpxResponse(await self._client.send(call.request, stream=True))
                response = sent if sent.decoded else _decoded(sent)
                if response.status < 300 and not read_body:
                    return response, b""
                return response, await self._read_whole(response)
            gap, reason = self._gap(call.stream)
            timeouts = self._timeouts
            wait = None  # connecting (and the pool wait), then the wait for the headers
            if gap is not None:
                wait = gap + (timeouts.get("connect") or 0.0)
            waiting_for = "no response headers"
            try:
                async with _timeout(wait) as scope:
                    response = await self._transport.send(
                        "POST", call.url, call.headers, call.content, timeouts
                    )
                    response = _decoded(response)
                    if response.status < 300 and not read_body:
                        return response, b""
                    # The body's turn (a whole answer, or an error body): the same scope,
                    # moved once.
                    waiting_for = "the response body did not end"
                    if gap is not None:
                        _move(scope, asyncio.get_running_loop().time() + gap)
                    return response, await self._read_whole(response)
            except asyncio.TimeoutError as exc:
                raise self._too_slow(exc, True, waiting_for, gap, reason) from None
        except BaseException:
            if response is not None:
                await _close(response)
            raise

    async def _attempt_stream(
        self, call: _Call, gap: float, reason: str
    ) -> tuple[_Response, bytes]:
        """One streamed attempt over our transport: the headers within ``gap`` seconds
        (connecting included), timed by the attempt's :class:`_StreamTimer`, which then
        goes with a 2xx to its :class:`SSEStream` (``call.timer``) to time the body."""
        assert self._transport is not None
        loop = asyncio.get_running_loop()
        clock = self._clock
        if clock is None or clock.loop is not loop:
            clock = self._clock = _Clock(loop)
        timer = _StreamTimer(clock, gap, reason)
        response: _Response | None = None
        try:
            try:
                async with _timeout(None) as scope:
                    timer.watch(scope)
                    response = await self._transport.send(
                        "POST", call.url, call.headers, call.content, self._timeouts
                    )
            finally:
                timer.watch(None)
            response = _decoded(response)
            if response.status < 300:
                call.timer, timer = timer, None  # type: ignore[assignment]
                return response, b""
            timer.reading(response.close, None)  # type: ignore[attr-defined]
            return response, await self._read_whole(response)
        except asyncio.TimeoutError as exc:
            ours = timer is not None and timer.fired is not None
            raise self._too_slow(exc, ours, "no response headers", gap, reason) from None
        except BaseException:
            if response is not None:
                await _close(response)
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _too_slow(
        self, exc: BaseException, ours: bool, waiting_for: str, gap: float | None, reason: str
    ) -> BaseException:
        """The error for an attempt that outlived its own limit (``ours``), else ``exc``
        itself (e.g. aiohttp's connect timeout, translated with the others later)."""
        if not ours or isinstance(exc, aiohttp.ClientError):
            return exc
        return APITimeoutError(
            f"{waiting_for} from {self._origin} within {gap}s ({reason} timeout)",
            provider=self.id,
        )

    async def _read_whole(self, response: _Response) -> bytes:
        """A 2xx body (see :meth:`_read_body`) or an error body (see
        :meth:`_read_error_body`); the response is closed either way."""
        try:
            if response.status < 300:
                return await self._read_body(response)
            return await self._read_error_body(response)
        finally:
            await _close(response)

    def _request_id(self, headers: Mapping[str, str]) -> str | None:
        for name in self.request_id_headers:
            value: str | None = headers.get(name)
            if value:
                # Shown in every error: redacted like bodies (a proxy may echo headers).
                return redact(value, self._api_key)  # type: ignore[no-any-return]
        return None

    def _deadline_error(self, request_id: str | None = None) -> APITimeoutError:
        return APITimeoutError(
            f"the call did not finish within its {self.deadline}s deadline",
            provider=self.id,
            request_id=request_id,
        )

    def _connection_error(
        self, exc: BaseException, request_id: str | None = None
    ) -> ProviderError | None:
        """The library error for a transport failure, or ``None`` if ``exc`` is not one.

        The one translation of transport errors: aiohttp's and the OS's (our transport),
        httpx's (a caller's client), a body we cannot decode.
        """
        if isinstance(exc, ProviderError):
            return exc
        detail = redact(
            f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, self._api_key
        )
        if self.base_url != self._origin:
            detail = detail.replace(self.base_url, self._origin)
        url = self._origin  # never the rest of base_url: it may carry a token
        if isinstance(exc, (httpx.TimeoutException, asyncio.TimeoutError, TimeoutError)):
            return APITimeoutError(
                f"timed out talking to {url} ({detail})",
                provider=self.id,
                request_id=request_id,
            )
        if isinstance(exc, (_DecodeError, httpx.DecodingError)):
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
        """The typed error for an HTTP error response (its body already read, scrubbed)."""
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

    def _scrub(self, data: bytes) -> bytes:
        """``data`` without the API key's bytes (a server may echo the key anywhere)."""
        secret = self._api_key
        key = secret._bytes if secret is not None else b""
        if key and key in data:
            return data.replace(key, _REDACTED.encode())
        return data

    async def _read_error_body(self, response: _Response) -> bytes:
        """Up to 64 KiB of an error response's (decoded) body, without the key; always
        closes the response."""
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
        return self._scrub(b"".join(parts)[:_ERROR_BODY_LIMIT])

    async def _read_body(self, response: _Response) -> bytes:
        """A 2xx body (decoded, without the key), refused past :data:`MAX_BODY_SIZE` (a
        broken or endless body, or a compression bomb)."""
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
        return self._scrub(b"".join(parts))

    def _send(
        self, call: _Call, *, read_body: bool
    ) -> Coroutine[Any, Any, tuple[_Response, bytes]]:
        """Send the call's request with retries until a 2xx arrives, within the call's
        deadline (one ``asyncio.timeout_at`` scope around the attempts and waits).

        With ``read_body`` the whole body is read (and the response closed) inside the
        retry loop; otherwise the response is returned open, its body unread. (A plain
        function returning the coroutine to await: no frame of its own without a deadline.)
        """
        if call.deadline is None:
            return self._attempts(call, read_body)
        return self._attempts_by_deadline(call, read_body)

    async def _attempts_by_deadline(self, call: _Call, read_body: bool) -> tuple[_Response, bytes]:
        try:
            async with _timeout_at(call.deadline):
                return await self._attempts(call, read_body)
        except asyncio.TimeoutError:
            # Only our scope raises it here: inside, every failure is already ours.
            raise self._deadline_error() from None

    async def _attempts(self, call: _Call, read_body: bool) -> tuple[_Response, bytes]:
        while True:
            retry_after: float | None = None
            status: int | None = None
            events.request_sent(call.retries + 1)
            try:
                response, content = await self._attempt(call, read_body)
                if response.status < 300:
                    return response, content
                status = response.status
            except Exception as exc:
                mapped = self._connection_error(exc)
                if mapped is None:
                    raise
                error: ProviderError = mapped
                retryable = isinstance(mapped, APIConnectionError)
                cause: BaseException | None = None if mapped is exc else exc
            else:
                error = self._status_error(status, response.headers, content)
                retry_after = parse_retry_after(response.headers)
                retryable = should_retry_status(status, response.headers)
                cause = None
                del content  # the server's words are in the error; keep no other copy
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
        deadline = call.deadline
        if deadline is not None and delay >= deadline - asyncio.get_running_loop().time():
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
        events.provider_retried(detail, error)
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
        await asyncio.sleep(delay)

    async def _post_json(
        self, url: httpx.URL | str, body: Mapping[str, Any]
    ) -> tuple[Any, _Call, str | None]:
        """POST ``body`` and return the decoded JSON answer, the call and its request id.

        Raises the typed errors described in the module docstring; a 2xx whose body is
        not JSON raises :class:`~promptkit_async.errors.APIResponseError`.
        """
        call = self._start(url, self._encode(body), stream=False)
        response, content = await self._send(call, read_body=True)
        request_id = self._request_id(response.headers)
        try:
            payload = json_loads(content)
        except ValueError:
            snippet = content[:200].decode("utf-8", "replace")
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


def _origin(url: str, *, path: bool = False) -> str:
    """``scheme://host[:port]`` of a URL (``path``: and its path): what errors and
    ``repr`` show of it, never its user info or query (a gateway token may be there)."""
    try:
        parsed = httpx.URL(url)
        port = f":{parsed.port}" if parsed.port is not None else ""
        rest = parsed.path.rstrip("/") if path else ""
        return f"{parsed.scheme}://{parsed.host}{port}{rest}"
    except Exception:  # an unparsable URL: show nothing of it
        return "(base_url)"


def _decoded(response: _Response) -> _Response:
    """``response``, decoded (in bounded steps) if it has a ``Content-Encoding``."""
    encoding = response.headers.get("content-encoding")
    if encoding is None:
        return response
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return response
    return _Decoded(response, encoding)


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


async def _close(response: _Response) -> None:
    try:
        await response.aclose()
    except Exception:  # closing must not hide the error being reported
        logger.debug("error while closing a response", exc_info=True)


class SSEStream:
    """The server-sent events of one streamed call, as an async iterator.

    The request is sent on the first ``__anext__``; connection failures and retryable
    statuses are retried until the first event has been returned, never after. The wait
    for each piece of the body is bounded by the provider's ``stream_idle_timeout``
    (:class:`~promptkit_async.errors.StreamIdleTimeoutError`, not retried) or its read
    timeout, whichever is shorter, and by its ``deadline``
    (:class:`~promptkit_async.errors.APITimeoutError`); a connection lost mid-stream raises
    :class:`~promptkit_async.errors.IncompleteStreamError` (the server closed it early)
    or :class:`~promptkit_async.errors.APIConnectionError`. The normal end of the body
    ends the iteration (whether the answer was complete is the provider's call).
    :meth:`aclose` closes the response at once; so does cancellation of the reading
    task, which always propagates. One stream belongs to one consumer task.

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
        "_gap",
        "_loop",
        "_provider",
        "_reason",
        "_response",
        "_timer",
        "ended",
        "headers",
        "request_id",
    )

    def __init__(self, provider: HTTPProvider, call: _Call) -> None:
        self._provider = provider
        self._call = call
        self._loop = asyncio.get_running_loop()
        self._decoder = SSEDecoder()
        self._events: deque[ServerSentEvent] | None = None  # for __anext__ only
        self._delivered = False
        self._done = False
        self._ending = False
        self._response: _Response | None = None
        self._timer: _StreamTimer | None = None
        if provider._transport is None:  # httpx applies the read timeout itself
            self._gap, self._reason = provider.stream_idle_timeout, "idle"
        else:
            self._gap, self._reason = provider._gap(True)
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
        if self._gap is None or self._gap > grace:
            self._gap, self._reason = grace, "end"
            timer = self._timer
            if timer is not None and not self._response.at_eof():  # type: ignore[union-attr]
                timer.limit(grace, "end")  # (at the end already: no read will wait)

    def __aiter__(self) -> SSEStream:
        return self

    async def __anext__(self) -> ServerSentEvent:
        events = self._events
        if not events:
            batch = await self.next_batch()
            if not batch:
                raise StopAsyncIteration
            if events is None:
                events = self._events = deque()
            events.extend(batch)
        return events.popleft()

    async def next_batch(self) -> list[ServerSentEvent]:
        """The events completed by the next network read (``[]`` once the stream ended).

        Cheaper than iterating one event at a time when reads carry several events. Do
        not mix with ``async for`` on the same stream.
        """
        if self._done:
            return []
        provider = self._provider
        while True:
            if self._response is None:
                await self._connect()
            timer = self._timer
            try:
                if timer is not None:  # our transport: the call's timer bounds the read
                    timer.since = self._loop.time()
                    try:
                        chunk = await self._response.read()  # type: ignore[union-attr]
                    finally:
                        timer.since = None
                else:
                    chunk = await self._read_in_scope()
            except asyncio.CancelledError:
                await self.aclose()
                raise
            except Exception as exc:
                fired = timer.fired if timer is not None else None
                if fired is None and isinstance(exc, _ScopeExpired):
                    fired = exc.reason
                retry = await self._failed(exc, fired)
                if retry:
                    continue
                return []
            secret = provider._api_key
            if secret is not None and secret._bytes in chunk:
                chunk = provider._scrub(chunk)
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

    async def _read_in_scope(self) -> bytes:
        """A read from a caller's httpx client, in an ``asyncio.timeout_at`` scope for
        the idle limit and the deadline (httpx applies its own read timeout)."""
        response = self._response
        assert response is not None
        gap = self._gap
        deadline = self._call.deadline
        if gap is None and deadline is None:
            return await response.read()
        when = None if gap is None else self._loop.time() + gap
        reason = self._reason
        if deadline is not None and (when is None or deadline <= when):
            when, reason = deadline, "deadline"
        try:
            async with _timeout_at(when):
                return await response.read()
        except asyncio.TimeoutError:
            raise _ScopeExpired(reason) from None

    async def _failed(self, exc: Exception, fired: str | None) -> bool:
        """Handle a failed read: True to retry the call, False to end the stream quietly
        (the answer was complete); else raise the error to report."""
        provider = self._provider
        call = self._call
        await self._drop_response()
        if self._ending:  # the answer is complete; a broken or silent tail does not matter
            await self.aclose()
            return False
        if fired == "deadline":
            await self.aclose()
            raise provider._deadline_error(self.request_id) from None
        if fired == "idle":
            await self.aclose()
            raise StreamIdleTimeoutError(
                f"the stream sent nothing for {self._gap}s (stream_idle_timeout); "
                "the response was closed",
                provider=provider.id,
                request_id=self.request_id,
            ) from None
        error: ProviderError | None
        if fired == "read":
            error = APITimeoutError(
                f"read timeout: {provider._origin} sent nothing for {self._gap}s",
                provider=provider.id,
                request_id=self.request_id,
            )
        else:
            error = provider._connection_error(exc, self.request_id)
            if error is None:
                await self.aclose()
                raise exc
        if (
            not self._delivered
            and isinstance(error, APIConnectionError)
            and call.retries < provider.max_retries
        ):
            remaining = None if call.deadline is None else call.deadline - self._loop.time()
            if remaining is not None and remaining <= 0:
                await self.aclose()
                raise provider._deadline_error(self.request_id) from None
            await provider._wait_to_retry(call, error, None, None, exc)
            self._decoder = SSEDecoder()
            return True
        await self.aclose()
        if self._delivered and isinstance(exc, _CUT_OFF):
            raise IncompleteStreamError(
                f"the server closed the stream before it finished ({error.message})",
                provider=provider.id,
                request_id=self.request_id,
            ) from exc
        raise error from (None if fired else exc)

    async def _connect(self) -> None:
        response, _ = await self._provider._send(self._call, read_body=False)
        self._response = response
        self.headers = response.headers
        self.request_id = self._provider._request_id(response.headers)
        timer, self._call.timer = self._call.timer, None
        if timer is not None:  # our transport's: it times the body's reads from now on
            timer.reading(response.close, self._call.deadline)  # type: ignore[attr-defined]
            self._timer = timer
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
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        if response is not None:
            await _close(response)

    async def aclose(self) -> None:
        """Close the HTTP response now and stop the call's timer. Safe to call twice."""
        self._done = True
        if self._events is not None:
            self._events.clear()
        await self._drop_response()


#: A connection the server closed before the body's end (our transport's, httpx's words).
_CUT_OFF = (httpx.RemoteProtocolError, aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError)


class _ScopeExpired(Exception):
    """A read's own ``asyncio.timeout_at`` scope expired (``reason``: what it bounded)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
