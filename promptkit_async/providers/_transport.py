"""The providers' HTTP transport: one aiohttp ``ClientSession``, sent to directly.

Why not httpx's own (httpcore) pool: it scans every pooled connection on each request, which
costs milliseconds of CPU per request once hundreds of streams share it. aiohttp's connector
keeps per-host deques, so the cost per request stays flat at thousands of concurrent streams.

The providers call :meth:`AiohttpTransport.send` and read the :class:`RawResponse` it returns:
no httpx client, request, response or headers objects on that path, and aiohttp's errors
reach the provider untranslated, to be turned into :mod:`promptkit_async.errors` in one
place. The same class is also an ``httpx.AsyncBaseTransport``
(:meth:`AiohttpTransport.handle_async_request`), for an ``httpx.AsyncClient`` of your own
that should use aiohttp's pool: there aiohttp's errors become the matching httpx errors,
and httpx does cookies, redirects and content decoding.

Concurrency: one transport (and its session) serves any number of concurrent requests on one
event loop. The session is created lazily on the first request, inside the running loop.
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.request
from collections.abc import AsyncIterator, Coroutine, Iterable, Mapping
from typing import Any

import aiohttp
import httpx
from multidict import CIMultiDictProxy
from yarl import URL

__all__ = ["AiohttpTransport", "RawResponse"]

_HTTP11 = {"http_version": b"HTTP/1.1"}


def _map_error(
    exc: BaseException, request: httpx.Request | None, *, reading: bool
) -> Exception | None:
    """The httpx error matching an aiohttp/OS error, or ``None`` for anything else: for
    an ``httpx.AsyncClient`` over this transport only (the providers translate aiohttp's
    errors themselves, once)."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        # aiohttp's connect timeout also covers waiting for a pooled connection.
        return httpx.ConnectTimeout(f"connect or pool timeout: {message}", request=request)
    if isinstance(exc, (aiohttp.SocketTimeoutError, aiohttp.ServerTimeoutError)):
        return httpx.ReadTimeout(f"read timeout: {message}", request=request)
    if isinstance(exc, asyncio.TimeoutError):
        return httpx.ReadTimeout(f"timeout: {message}", request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(message, request=request)
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError)):
        return httpx.RemoteProtocolError(message, request=request)
    if isinstance(exc, aiohttp.ClientResponseError):
        return httpx.RemoteProtocolError(message, request=request)
    if isinstance(exc, (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError)):
        return httpx.UnsupportedProtocol(message, request=request)
    if isinstance(exc, (aiohttp.ClientConnectionError, OSError)):
        if reading:
            return httpx.ReadError(message, request=request)
        return httpx.ConnectError(message, request=request)
    if isinstance(exc, aiohttp.ClientError):
        return httpx.TransportError(message, request=request)
    return None


class RawResponse(httpx.AsyncByteStream):
    """One aiohttp response with its body unread and undecoded.

    Read directly (:meth:`read`, ``status``, ``headers``) by the providers, or wrapped in an
    ``httpx.Response`` (:meth:`to_httpx`, which decodes ``Content-Encoding``) as the body
    stream httpx reads.

    :meth:`read` raises aiohttp's own errors (the providers translate them, once, into
    :mod:`promptkit_async.errors`); iterating it (what httpx does) raises the matching
    httpx errors. It has no timer of its own: the providers bound their waits themselves
    (see ``promptkit_async.providers._http``); an ``httpx.AsyncClient`` over
    :class:`AiohttpTransport` gets aiohttp's ``sock_read`` timeout.

    Attributes:
        status: the HTTP status code.
        headers: the response headers (a case-insensitive mapping).
    """

    __slots__ = ("_request", "_response", "headers", "status")

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request | None) -> None:
        self._response = response
        self._request = request
        self.status = response.status
        self.headers: CIMultiDictProxy[str] = response.headers

    def read(self) -> Coroutine[Any, Any, bytes]:
        """The next piece of the body as it arrives; ``b""`` at its end (await it).

        No async generator per chunk (unlike ``__aiter__``), nor a coroutine of ours
        around aiohttp's read: one frame less between a provider's reader and the socket.
        Closing the response (:meth:`close`, e.g. from a timer callback) makes a waiting
        read fail at once with ``aiohttp.ClientConnectionError``.
        """
        return self._response.content.readany()

    def close(self) -> None:
        """Close the response now (synchronously; safe to call twice)."""
        self._response.close()

    def at_eof(self) -> bool:
        """Whether the whole body has arrived and been read (the next read returns
        ``b""`` without waiting)."""
        return self._response.content.at_eof()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            while chunk := await self._response.content.readany():
                yield chunk
        except Exception as exc:
            self.close()
            mapped = _map_error(exc, self._request, reading=True)
            if mapped is None:
                raise
            raise mapped from exc

    async def aclose(self) -> None:
        """Close the response (safe to call twice)."""
        # close() drops the connection if the body was not fully received (a cancelled
        # stream must not hand a half-read connection back to the pool); once the body is
        # complete aiohttp has already returned the connection and close() is a no-op.
        self.close()

    def to_httpx(self, request: httpx.Request | None = None) -> httpx.Response:
        """This response as an ``httpx.Response`` reading (and decoding) this body."""
        response = self._response
        try:
            extensions = _HTTP11
            if response.reason:
                extensions = {**_HTTP11, "reason_phrase": response.reason.encode()}
            return httpx.Response(
                self.status,
                headers=response.raw_headers,
                stream=self,
                request=request,
                extensions=extensions,
            )
        except BaseException:
            response.close()
            raise


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An ``httpx.AsyncBaseTransport`` that sends requests through aiohttp.

    Args:
        max_connections: open connections allowed at once (across hosts); requests beyond
            it wait for a free connection (bounded by the pool timeout). ``None`` for no
            limit. The default suits thousands of concurrent streams.
        keepalive_expiry: seconds an idle pooled connection is kept.
        verify: ``True`` (certifi's CA bundle, or ``SSL_CERT_FILE``), ``False`` (no
            verification: tests only) or an ``ssl.SSLContext``.
        proxy: a proxy URL for every request. With ``trust_env`` and no ``proxy``, the
            ``HTTP(S)_PROXY`` / ``NO_PROXY`` environment variables are read once per host.
        trust_env: honour proxy and certificate environment variables.
        session: an aiohttp session to use instead of creating one; it is not closed by
            :meth:`aclose`.

    HTTP/1.1 only. Response bodies are passed through undecoded; httpx decodes them.
    """

    def __init__(
        self,
        *,
        max_connections: int | None = 4096,
        keepalive_expiry: float | None = 30.0,
        verify: ssl.SSLContext | bool = True,
        proxy: str | None = None,
        trust_env: bool = True,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._max_connections = max_connections or 0
        self._keepalive = keepalive_expiry
        self._verify = verify
        self._proxy = proxy
        self._trust_env = trust_env
        self._session = session
        self._owns_session = session is None
        self._ssl: ssl.SSLContext | bool | None = None
        self._proxies: dict[tuple[str, str], str | None] = {}
        self._env_proxies: dict[str, str] | None = None
        # Per URL: where and how to send (yarl URL, ssl argument, proxy), worked out once.
        self._targets: dict[str, tuple[URL, ssl.SSLContext | bool, str | None]] = {}
        self._timeouts: dict[tuple[float | None, ...], aiohttp.ClientTimeout] = {}
        self._last_target: tuple[object, tuple[URL, ssl.SSLContext | bool, str | None]] | None
        self._last_target = None
        self._closed = False

    def _create_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            limit_per_host=0,
            keepalive_timeout=self._keepalive if self._keepalive is not None else 3600.0,
        )
        return aiohttp.ClientSession(
            connector=connector,
            # httpx owns cookies, redirects and decoding; aiohttp must not do them twice.
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(),
            trust_env=False,  # per-request env lookups run in threads; we resolve once
        )

    def _ssl_context(self) -> ssl.SSLContext | bool:
        if self._ssl is None:
            if isinstance(self._verify, ssl.SSLContext):
                self._ssl = self._verify
            elif self._verify:
                # certifi's bundle like httpx, so behaviour does not depend on the OS store.
                self._ssl = httpx.create_ssl_context(trust_env=self._trust_env)
            else:
                self._ssl = False
        return self._ssl

    def _proxy_for(self, url: httpx.URL) -> str | None:
        if self._proxy is not None or not self._trust_env:
            return self._proxy
        key = (url.scheme, url.host)
        try:
            return self._proxies[key]
        except KeyError:
            pass
        if self._env_proxies is None:
            self._env_proxies = urllib.request.getproxies_environment()
        proxies = self._env_proxies
        proxy = proxies.get(url.scheme) or proxies.get("all")
        if proxy and _bypass(url.host, proxies.get("no", "")):
            proxy = None
        self._proxies[key] = proxy or None
        return proxy or None

    def _client_timeout(
        self, timeouts: Mapping[str, float | None], per_read: bool
    ) -> aiohttp.ClientTimeout:
        connect = timeouts.get("connect")
        pool = timeouts.get("pool")
        read = timeouts.get("read") if per_read else None
        key = (connect, pool, read)
        found = self._timeouts.get(key)
        if found is None:
            if len(self._timeouts) > 64:
                self._timeouts.clear()
            found = self._timeouts[key] = aiohttp.ClientTimeout(
                total=None,
                # aiohttp's "connect" covers waiting for the pool plus connecting, with a
                # timer per request: only for httpx clients over this transport. The
                # providers bound the whole attempt (pool, connecting, headers) with one
                # timer of their own; sock_connect still bounds opening a connection.
                connect=None if pool is None or not per_read else pool + (connect or 0.0),
                sock_connect=connect,
                # sock_read re-arms a timer on every network read: only for httpx clients.
                sock_read=read,
            )
        return found

    def _target(self, url: httpx.URL | str) -> tuple[URL, ssl.SSLContext | bool, str | None]:
        last = self._last_target
        if last is not None and last[0] is url:
            return last[1]  # a provider sends to one URL object again and again
        text = str(url)
        found = self._targets.get(text)
        if found is None:
            if len(self._targets) > 512:
                self._targets.clear()
            parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
            found = self._targets[text] = (
                # httpx has percent-encoded the URL; do not let yarl encode it again.
                URL(str(parsed), encoded=True),
                self._ssl_context() if parsed.scheme == "https" else True,
                self._proxy_for(parsed),
            )
        self._last_target = (url, found)
        return found

    async def send(
        self,
        method: str,
        url: httpx.URL | str,
        headers: Iterable[tuple[str, str]] | Mapping[str, str],
        data: bytes | AsyncIterator[bytes] | None,
        timeouts: Mapping[str, float | None],
        *,
        per_read_timeout: bool = False,
    ) -> RawResponse:
        """Send a request and return the response with its body unread.

        The providers' direct path (and :meth:`handle_async_request`'s core): ``headers``
        are sent as given (aiohttp adds ``Host`` and ``Content-Length``); ``timeouts`` has
        httpx's ``connect`` / ``read`` / ``pool`` keys (see ``httpx.Timeout.as_dict()``),
        of which only ``connect`` and ``pool`` apply unless ``per_read_timeout`` (then
        ``read`` bounds every network read, the headers' included). Failures raise
        aiohttp's (or the OS's) errors untranslated: the caller translates them, once.
        """
        if self._closed:
            raise RuntimeError("the transport is closed")
        session = self._session
        if session is None:
            session = self._session = self._create_session()
        target, ssl_arg, proxy = self._target(url)
        response = await session.request(
            method,
            target,
            headers=headers,
            data=data,
            allow_redirects=False,
            timeout=self._client_timeout(timeouts, per_read_timeout),
            ssl=ssl_arg,
            proxy=proxy,
        )
        return RawResponse(response, None)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and return the response with its body still unread.

        aiohttp's errors are raised as the matching httpx errors.
        """
        data: bytes | AsyncIterator[bytes] | None
        try:
            data = request.content or None
        except httpx.RequestNotRead:
            data = _body(request.stream)
        headers = request.headers.multi_items()
        if not isinstance(request.stream, httpx.ByteStream):
            # aiohttp frames a streamed body itself.
            headers = [h for h in headers if h[0].lower() != "transfer-encoding"]
        try:
            response = await self.send(
                request.method,
                request.url,
                headers,
                data,
                request.extensions.get("timeout", {}),
                per_read_timeout=True,
            )
        except Exception as exc:
            mapped = _map_error(exc, request, reading=False)
            if mapped is None:
                raise
            raise mapped from exc
        response._request = request
        return response.to_httpx(request)

    async def aclose(self) -> None:
        """Close the session (and its connections) if this transport created it."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None and self._owns_session:
            await session.close()


def _bypass(host: str, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` (comma-separated hosts / domain suffixes, or ``*``) covers host."""
    for entry in no_proxy.replace(" ", "").split(","):
        entry = entry.lstrip(".").lower()
        if entry == "*" or (entry and (host == entry or host.endswith("." + entry))):
            return True
    return False


async def _body(stream: httpx.AsyncByteStream | httpx.SyncByteStream) -> AsyncIterator[bytes]:
    if isinstance(stream, httpx.AsyncByteStream):
        async for chunk in stream:
            yield chunk
    else:
        for chunk in stream:
            yield chunk
