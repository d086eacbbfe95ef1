"""MCP servers' tools in the tool loop, on the official ``mcp`` SDK (the ``[mcp]`` extra).

::

    from promptkit_async.tools import MCPServerStdio, MCPServerHTTP

    async with (
        MCPServerStdio("python", ["weather_server.py"], prefix="weather_") as weather,
        MCPServerHTTP("http://127.0.0.1:8000/mcp", name="docs") as docs,
    ):
        tools = [weather, docs, my_local_tool]
        pipeline = Pipeline(StateMiddleware(store), ProviderMiddleware(provider, tools))

A server object is a :class:`~promptkit_async.tools.ToolSource`: put it in
``ProviderMiddleware(tools=[...])`` (or ``ToolRegistry.add_source``) beside local tools and
the model sees its tools, each named ``prefix + the server's name for it`` so two servers
(or a server and a local tool) can never collide.

How it runs:

* One connection per server object, shared by every session and pipeline that use it.
  It is opened on ``async with`` / :meth:`MCPServer.connect` (or by the first turn that
  needs it) and lives in one owner task, which opens and closes the SDK's transport and
  session (the anyio rule: close in the task that opened) and runs each call in a task of
  its own, so a caller's cancellation or timeout cancels only that call.
* A stdio server that exits, or an HTTP session that drops, ends the connection; a call
  in flight then fails at once with :class:`~promptkit_async.errors.MCPConnectionError`
  (a tool error the model sees), and the next call or turn reconnects (a stdio server is
  started again). A call that never gets an answer ends at its timeout.
* The tool list is fetched on connect and cached; the server's ``tools/list_changed``
  notification refetches it, and the next model request sees the change.
* Results become the tool message's text: text blocks as they are, structured content as
  JSON (when the server sent no text, which should repeat it), resources' text, and a short
  placeholder for images and audio (``[image: image/png, 1234 bytes]``) until messages can
  carry content parts. ``isError`` results and JSON-RPC errors are raised as
  :class:`~promptkit_async.errors.MCPToolCallError`, which the tool loop reports to the
  model as the tool's failure.

Importing this module does not import the SDK; connecting without it raises
:class:`~promptkit_async.errors.ToolError` naming the extra to install.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import json
import logging
import math
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlsplit

from typing_extensions import Self, TypedDict, Unpack

from .._lifecycle import AsyncResource
from ..errors import MCPConnectionError, MCPServerError, MCPToolCallError, ToolError
from ._registry import Tool, _check_timeout, _patterns, matches

if TYPE_CHECKING:
    import anyio
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = [
    "MCPServer",
    "MCPServerHTTP",
    "MCPServerOptions",
    "MCPServerSSE",
    "MCPServerStdio",
    "MCPTool",
    "result_text",
]

logger = logging.getLogger("promptkit_async.tools.mcp")

_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_MAX_PAGES = 100  # tools/list pages followed before giving up (a server looping its cursor)
_CONNECTION_CLOSED = -32000  # the SDK's JSON-RPC code for "Connection closed"
_STOP = "stop"
_REFRESH = "refresh"


def _sdk() -> Any:
    """The ``mcp`` package, or a ToolError saying how to install it."""
    try:
        return importlib.import_module("mcp")
    except ImportError as exc:
        raise ToolError("MCP servers need the mcp SDK: pip install 'promptkit-async[mcp]'") from exc


def _leaf(exc: BaseException) -> BaseException:
    # The first real error inside (possibly nested) exception groups (duck-typed: the
    # builtin BaseExceptionGroup is 3.11+).
    inner = getattr(exc, "exceptions", None)
    while isinstance(inner, tuple) and inner and isinstance(inner[0], BaseException):
        exc = inner[0]
        inner = getattr(exc, "exceptions", None)
    return exc


def _describe(exc: BaseException) -> str:
    exc = _leaf(exc)
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text


def _is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` means the connection is gone (as opposed to the call failing)."""
    exc = _leaf(exc)
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    if isinstance(code, int):  # the server (or the SDK for it) answered with JSON-RPC
        return code == _CONNECTION_CLOSED or getattr(error, "message", None) in _FORGOTTEN
    if isinstance(exc, (OSError, EOFError)):
        return True
    module = type(exc).__module__.split(".")[0]
    return module in ("anyio", "httpx", "httpx2", "httpcore")


#: How a Streamable HTTP server's 404 for an unknown session id reaches us: the SDK
#: client's own stand-in, or the SDK server's JSON-RPC error body passed through.
_FORGOTTEN = frozenset(("Session terminated", "Session not found"))


def _session_forgotten(exc: BaseException) -> bool:
    error = getattr(_leaf(exc), "error", None)
    return getattr(error, "message", None) in _FORGOTTEN


def _base64_size(data: object) -> int:
    if not isinstance(data, str):
        return 0
    return len(data.rstrip("=")) * 3 // 4


def result_text(result: Mapping[str, Any]) -> tuple[bool, str]:
    """``(is_error, text)`` for a ``tools/call`` result in its wire form (camelCase keys).

    Text blocks are kept as they are, one per line; ``structuredContent`` is given as
    JSON when there is no text block (servers repeat it as text); embedded text resources give
    their text; images, audio and binary resources become a short placeholder naming
    their type and size (messages carry text only for now).
    """
    parts: list[str] = []
    texts: list[str] = []
    for block in result.get("content") or ():
        kind = block.get("type")
        if kind == "text":
            text = str(block.get("text", ""))
            parts.append(text)
            texts.append(text)
        elif kind in ("image", "audio"):
            mime = block.get("mimeType") or "unknown type"
            parts.append(f"[{kind}: {mime}, {_base64_size(block.get('data'))} bytes]")
        elif kind == "resource_link":
            label = block.get("title") or block.get("name") or block.get("uri")
            about = f": {block['description']}" if block.get("description") else ""
            parts.append(f"[resource link: {label} <{block.get('uri')}>{about}]")
        elif kind == "resource":
            resource = block.get("resource") or {}
            if "text" in resource:
                parts.append(str(resource["text"]))
            else:
                mime = resource.get("mimeType") or "unknown type"
                size = _base64_size(resource.get("blob"))
                parts.append(f"[resource {resource.get('uri')}: {mime}, {size} bytes]")
        else:
            parts.append(f"[{kind} content]")
    structured = result.get("structuredContent")
    if structured is not None and not texts:
        # Servers are asked to repeat structured results as text; the text, when there
        # is some, is what the server meant the model to read.
        parts.append(json.dumps(structured, ensure_ascii=False))
    text = "\n".join(parts)
    return bool(result.get("isError")), text if text else "(the tool returned no content)"


def _local_name(prefix: str, remote: str, taken: Collection[str]) -> str:
    """``prefix + remote`` made into a name every provider accepts, unique in ``taken``."""
    name = _NAME_CHARS.sub("_", prefix + remote)
    if len(name) > 64 or name in taken or not name:
        digest = hashlib.sha1(remote.encode()).hexdigest()[:8]
        name = f"{name[:55]}_{digest}"
    return name


def _wire(model: Any) -> dict[str, Any]:
    # The SDK's pydantic model in its JSON wire form: camelCase keys in every SDK version.
    data: dict[str, Any] = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    return data


class _RemoteCall:
    """The function behind an :class:`MCPTool`: forwards keyword arguments to the server."""

    __slots__ = ("name", "server")

    def __init__(self, server: MCPServer, name: str) -> None:
        self.server = server
        self.name = name

    async def __call__(self, /, **arguments: Any) -> str:
        return await self.server._call(self.name, arguments, None)


class MCPTool(Tool[..., Any]):
    """One tool of an MCP server, as the tool loop sees it.

    Built by the server from its ``tools/list`` entry; the model calls it by :attr:`name`
    (the server's prefix + :attr:`remote_name`) with the JSON schema the server gave.
    Calling it sends ``tools/call`` to the server; the arguments are checked by the server.

    Attributes:
        server: the :class:`MCPServer` it belongs to.
        remote_name: the server's name for it.
        annotations: the server's hints (``readOnlyHint``, ``destructiveHint``...), as
            given.
    """

    __slots__ = ("annotations", "remote_name", "server")

    def __init__(
        self, server: MCPServer, spec: Mapping[str, Any], name: str, timeout: float | None
    ) -> None:
        remote = str(spec["name"])
        schema = dict(spec.get("inputSchema") or {})
        schema.setdefault("type", "object")
        schema.setdefault("properties", {})
        description = spec.get("description") or spec.get("title") or ""
        super().__init__(
            _RemoteCall(server, remote),
            name=name,
            description=str(description),
            parameters=schema,
            timeout=timeout,
        )
        self.server = server
        self.remote_name = remote
        self.annotations: Mapping[str, Any] = dict(spec.get("annotations") or {})

    def __repr__(self) -> str:
        return f"MCPTool(name={self.name!r}, server={self.server.name!r})"


class _Job:
    """One ``tools/call`` waiting to be run (or running) in the owner task."""

    __slots__ = ("arguments", "future", "name", "scope")

    def __init__(self, name: str, arguments: dict[str, Any], future: asyncio.Future[Any]) -> None:
        self.name = name
        self.arguments = arguments
        self.future = future
        self.scope: anyio.CancelScope | None = None
        future.add_done_callback(self._done)

    def _done(self, future: asyncio.Future[Any]) -> None:
        # The caller gave up (cancelled or timed out): stop the call in the owner task.
        if future.cancelled() and self.scope is not None:
            self.scope.cancel()


class _NotSent(MCPConnectionError):
    """The connection ended before this request went out: safe to send on a new one."""


def _settle(
    future: asyncio.Future[Any], result: Any = None, exc: BaseException | None = None
) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


class _Connection:
    """A live session and the queue of commands for its owner task."""

    __slots__ = ("alive", "commands", "session")

    def __init__(self, commands: MemoryObjectSendStream[Any]) -> None:
        self.commands = commands
        self.session: Any = None
        self.alive = True

    def send(self, command: object) -> bool:
        try:
            self.commands.send_nowait(command)
        except Exception:  # closed, or the owner is gone
            return False
        return True

    def end(self) -> None:
        """Mark the connection dead and ask the owner task to close it."""
        self.alive = False
        self.send(_STOP)


class MCPServerOptions(TypedDict, total=False):
    """The keyword options every MCP server takes; see :class:`MCPServer`."""

    name: str | None
    prefix: str | None
    allow: Collection[str] | None
    block: Collection[str]
    timeout: float | None
    tool_timeouts: Mapping[str, float | None] | None
    connect_timeout: float
    close_timeout: float


class MCPServer(AsyncResource):
    """A connection to one MCP server whose tools the model may call (the base class).

    Use :class:`MCPServerStdio`, :class:`MCPServerHTTP` or :class:`MCPServerSSE`.

    Args:
        name: a short name for logs, errors and ``/tools`` (default: from the command or
            URL; ``"mcp"`` here).
        prefix: put in front of each tool's name (default ``name + "_"``; ``""`` for
            none). Tool names are then made safe for every provider (other characters
            become ``_``; a name over 64 characters is shortened with a hash).
        allow: if given, only tools whose (server-side) name matches one of these shell
            patterns (``"read_*"``) are offered.
        block: tools whose name matches one of these patterns are never offered.
        timeout: seconds each call may take. ``None`` (the default): the
            ``ToolPolicy``'s timeout in the tool loop, 30 s for :meth:`call_tool`.
        tool_timeouts: per-tool timeouts, by server-side name or pattern (the first match
            wins), overriding ``timeout``.
        connect_timeout: seconds to start or reach the server, initialise the session and
            list its tools.
        close_timeout: seconds :meth:`aclose` waits for the connection to close.

    Raises:
        ToolError: a bad value.

    One object is one connection, shared by every task that uses it (in the event loop
    that connected it): calls run concurrently over it. :attr:`tools` and
    :attr:`version` never wait. Cancelling a call cancels that call only (the SDK tells
    the server, from mcp 2.0 on); the connection stays up for other sessions. Close it with
    ``async with`` or :meth:`aclose`; a closed server cannot be reopened.
    """

    def __init__(
        self,
        *,
        name: str | None = None,
        prefix: str | None = None,
        allow: Collection[str] | None = None,
        block: Collection[str] = (),
        timeout: float | None = None,
        tool_timeouts: Mapping[str, float | None] | None = None,
        connect_timeout: float = 10.0,
        close_timeout: float = 10.0,
    ) -> None:
        if name is None:
            name = "mcp"
        if not isinstance(name, str) or not name.strip():
            raise ToolError(f"an MCP server's name must be a non-empty string, not {name!r}")
        if prefix is not None and not isinstance(prefix, str):
            raise ToolError(f"prefix must be a string, not {prefix!r}")
        self.name = name
        self.prefix = _NAME_CHARS.sub("_", name) + "_" if prefix is None else prefix
        self.allow = None if allow is None else _patterns(allow, "allow")
        self.block = _patterns(block, "block")
        self.timeout = _check_timeout(timeout, "timeout")
        self.tool_timeouts = {
            str(k): _check_timeout(v, f"tool_timeouts[{k!r}]")
            for k, v in (tool_timeouts or {}).items()
        }
        connect = _check_timeout(connect_timeout, "connect_timeout")
        close = _check_timeout(close_timeout, "close_timeout")
        if connect is None or close is None:
            raise ToolError("connect_timeout and close_timeout must be finite numbers of seconds")
        self.connect_timeout = connect
        self.close_timeout = close
        self._tools: tuple[MCPTool, ...] = ()
        self._version = 0
        self._conn: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self._owners: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # --- the ToolSource side ------------------------------------------------------------

    @property
    def tools(self) -> tuple[MCPTool, ...]:
        """The server's tools as last listed (after the filters); empty before connecting."""
        return self._tools

    @property
    def version(self) -> int:
        """Grows by one each time :attr:`tools` changes."""
        return self._version

    @property
    def connected(self) -> bool:
        """Whether a connection is up now."""
        return self._conn is not None and self._conn.alive

    async def prepare(self) -> None:
        """Connect if not connected (the tool loop calls this at the start of a turn).

        Never raises for an unreachable server: it logs a warning and the turn goes on
        with the tools last listed, whose calls then report the problem to the model.
        """
        if self._closed or self.connected:
            return
        try:
            await self._connection()
        except MCPServerError as exc:
            logger.warning("%s", exc)

    async def connect(self) -> None:
        """Connect now (start the server, initialise, list its tools) if not connected.

        Raises:
            MCPConnectionError: the server could not be reached within ``connect_timeout``,
                or this object is closed.
        """
        await self._connection()

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def aclose(self) -> None:
        """Close the connection (a stdio server is stopped) and wait, at most
        ``close_timeout`` seconds, for it to end. Calls still running fail."""
        self._closed = True
        if self._conn is not None:
            self._conn.end()
        owners = tuple(self._owners)
        if not owners:
            return
        _, late = await asyncio.wait(owners, timeout=self.close_timeout)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=1.0)

    # --- calls ------------------------------------------------------------------------------

    async def list_tools(self) -> tuple[MCPTool, ...]:
        """Fetch the tool list again (connecting if needed) and return :attr:`tools`.

        Raises:
            MCPConnectionError: the server could not be reached.
        """
        conn = await self._connection()
        await self._refresh(conn.session)
        return self._tools

    async def call_tool(self, name: str, arguments: Mapping[str, Any] | None = None) -> str:
        """Call the server's tool ``name`` (its own name, without the prefix).

        Returns the result as the text the model would see. The tool's timeout (or the
        server's) applies; filters do not.

        Raises:
            MCPToolCallError: the server reported an error.
            MCPConnectionError: the server could not be reached, or was lost during the call.
            MCPServerError: no answer within the timeout.
        """
        limit = self._timeout_for(name)
        return await self._call(name, dict(arguments or {}), 30.0 if limit is None else limit)

    def _timeout_for(self, remote: str) -> float | None:
        for pattern, value in self.tool_timeouts.items():
            if matches(remote, (pattern,)):
                return value
        return self.timeout

    async def _call(self, name: str, arguments: dict[str, Any], limit: float | None) -> str:
        loop = asyncio.get_running_loop()
        for _ in range(2):  # a second try only when the first request never went out
            conn = await self._connection()
            job = _Job(name, arguments, loop.create_future())
            if not conn.send(job):
                continue
            try:
                if limit is None:
                    result = await job.future
                else:
                    result = await asyncio.wait_for(job.future, limit)
            except _NotSent:
                continue
            except asyncio.TimeoutError:
                raise MCPServerError(
                    f"MCP server {self.name!r} did not answer the call to {name!r} within "
                    f"{limit:g} seconds; the call was cancelled"
                ) from None
            is_error, text = result_text(_wire(result))
            if is_error:
                raise MCPToolCallError(text)
            return text
        raise MCPConnectionError(
            f"MCP server {self.name!r}: the connection closed twice before the call to "
            f"{name!r} could be sent; try again"
        )

    # --- the connection -----------------------------------------------------------------

    async def _connection(self) -> _Connection:
        conn = self._conn
        if conn is not None and conn.alive:
            return conn
        if self._closed:
            raise MCPConnectionError(f"MCP server {self.name!r} is closed")
        loop = asyncio.get_running_loop()
        if self._owners and self._loop is not loop:
            raise MCPConnectionError(
                f"MCP server {self.name!r} is connected in another event loop; create one "
                "server object per loop (in the loop that uses it)"
            )
        pending = self._connecting
        if pending is None:
            _sdk()  # fail here, clearly, without the SDK
            self._loop = loop
            pending = self._connecting = loop.create_future()
            # Nobody may be waiting when it fails (every waiter was cancelled).
            pending.add_done_callback(lambda f: f.cancelled() or f.exception())
            task = loop.create_task(self._own(pending), name=f"mcp-server-{self.name}")
            self._owners.add(task)
            task.add_done_callback(self._owner_done)
        # Shielded: one waiter's cancellation must not cancel the shared connect. The
        # bound is here too, so a caller is not kept while a silent server is stopped.
        try:
            return await asyncio.wait_for(asyncio.shield(pending), self.connect_timeout)
        except asyncio.TimeoutError:
            raise MCPConnectionError(
                f"could not connect to MCP server {self.name!r} within "
                f"{self.connect_timeout:g} s: no answer in time"
            ) from None

    def _scrub(self, text: str) -> str:
        """``text`` without anything secret this server was given (URLs, headers)."""
        return text

    def _why(self, exc: BaseException) -> str:
        return self._scrub(_describe(exc))

    def _owner_done(self, task: asyncio.Task[None]) -> None:
        self._owners.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "MCP server %r: its connection task failed", self.name, exc_info=task.exception()
            )

    def _open(self) -> contextlib.AbstractAsyncContextManager[Sequence[Any]]:
        """The SDK transport's context manager, yielding ``(read, write, ...)``."""
        raise NotImplementedError

    async def _own(self, ready: asyncio.Future[_Connection]) -> None:
        """The owner task: opens the transport and session, serves calls, closes both."""
        import anyio

        sdk = _sdk()
        conn: _Connection | None = None
        try:
            send, receive = anyio.create_memory_object_stream[Any](math.inf)
            # One scope around everything (a task group the transport opens must not sit
            # inside a shorter scope): its deadline bounds the connect, then is lifted.
            limit = anyio.CancelScope(deadline=anyio.current_time() + self.connect_timeout)
            with limit, send, receive:
                conn = _Connection(send)
                async with contextlib.AsyncExitStack() as stack:
                    streams = await stack.enter_async_context(self._open())
                    relay_send, relay_receive = anyio.create_memory_object_stream[Any](0)
                    with relay_send, relay_receive:
                        async with anyio.create_task_group() as tg:
                            tg.start_soon(_relay, streams[0], relay_send, conn)
                            session = sdk.ClientSession(
                                relay_receive, streams[1], message_handler=_Notify(conn)
                            )
                            async with session:
                                await session.initialize()
                                self._install(await _list_all(sdk, session))
                                limit.deadline = math.inf
                                conn.session = session
                                self._conn = conn
                                self._connecting = None
                                _settle(ready, conn)
                                if self._closed:
                                    conn.end()
                                await self._serve(conn, session, receive)
                            tg.cancel_scope.cancel()
            if limit.cancelled_caught and not ready.done():
                raise TimeoutError
        except Exception as exc:
            if not ready.done():
                logger.debug("MCP server %r: connect failed", self.name, exc_info=True)
                self._connecting = None
                _settle(
                    ready,
                    exc=MCPConnectionError(
                        f"could not connect to MCP server {self.name!r} within "
                        f"{self.connect_timeout:g} s: {self._why(exc)}"
                    ),
                )
            else:
                logger.debug("MCP server %r: the connection ended: %s", self.name, self._why(exc))
        finally:
            if conn is not None:
                conn.alive = False
            if self._conn is conn:
                self._conn = None
            if not ready.done():  # cancelled while connecting
                self._connecting = None
                _settle(ready, exc=MCPConnectionError(f"MCP server {self.name!r} was closed"))

    async def _serve(
        self, conn: _Connection, session: Any, commands: MemoryObjectReceiveStream[Any]
    ) -> None:
        import anyio

        try:
            async with anyio.create_task_group() as calls:
                async for command in commands:
                    if command == _STOP:
                        break
                    if command == _REFRESH:
                        calls.start_soon(self._refresh_quietly, session)
                    else:
                        calls.start_soon(self._run_job, conn, session, command)
                calls.cancel_scope.cancel()
        finally:
            conn.alive = False
            # Requests still queued never reached the server: their callers may resend.
            while True:
                try:
                    job = commands.receive_nowait()
                except Exception:
                    break
                if isinstance(job, _Job):
                    _settle(job.future, exc=_NotSent("the connection closed first"))

    async def _run_job(self, conn: _Connection, session: Any, job: _Job) -> None:
        import anyio

        try:
            with anyio.CancelScope() as scope:
                job.scope = scope
                if job.future.done():  # the caller gave up before we started
                    return
                result = await session.call_tool(job.name, job.arguments)
                _settle(job.future, result)
        except Exception as exc:
            if _session_forgotten(exc):
                # The server refused the session (it restarted): the call never ran,
                # so the caller sends it again on a new session.
                conn.end()
                _settle(job.future, exc=_NotSent("the server forgot the session"))
            elif _is_connection_error(exc):
                conn.end()
                _settle(
                    job.future,
                    exc=MCPConnectionError(
                        f"the connection to MCP server {self.name!r} was lost during the "
                        f"call to {job.name!r} ({self._why(exc)}); it reconnects on the next call"
                    ),
                )
            else:
                _settle(job.future, exc=MCPToolCallError(self._why(exc)))
        finally:
            _settle(
                job.future,
                exc=MCPConnectionError(
                    f"the connection to MCP server {self.name!r} closed during the call to "
                    f"{job.name!r}; it reconnects on the next call"
                ),
            )

    async def _refresh(self, session: Any) -> None:
        import anyio

        with anyio.fail_after(self.connect_timeout):
            self._install(await _list_all(_sdk(), session))

    async def _refresh_quietly(self, session: Any) -> None:
        try:
            await self._refresh(session)
        except Exception as exc:
            logger.warning("MCP server %r: could not list its tools: %s", self.name, self._why(exc))

    def _install(self, specs: Sequence[Mapping[str, Any]]) -> None:
        tools: list[MCPTool] = []
        taken: set[str] = set()
        for spec in specs:
            remote = spec.get("name")
            if not isinstance(remote, str) or not remote:
                continue
            if self.allow is not None and not matches(remote, self.allow):
                continue
            if self.block and matches(remote, self.block):
                continue
            name = _local_name(self.prefix, remote, taken)
            try:
                tools.append(MCPTool(self, spec, name, self._timeout_for(remote)))
            except ToolError as exc:
                logger.warning("MCP server %r: tool %r left out: %s", self.name, remote, exc)
                continue
            taken.add(name)
        new = tuple(tools)
        if [t.definition for t in new] != [t.definition for t in self._tools]:
            self._tools = new
            self._version += 1

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class _Notify:
    """The session's message handler: refetch the tools when the server says so."""

    __slots__ = ("conn",)

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn

    async def __call__(self, message: Any) -> None:
        if isinstance(message, Exception):
            logger.debug("MCP transport reported: %s", _describe(message))
            return
        root = getattr(message, "root", message)
        if getattr(root, "method", None) == "notifications/tools/list_changed":
            self.conn.send(_REFRESH)


async def _relay(source: Any, sink: Any, conn: _Connection) -> None:
    """Pass the transport's messages to the session; when they end, the connection is dead.

    This is how a stdio server's exit (or a dropped HTTP stream) is noticed while idle,
    so the next call reconnects instead of failing.
    """
    try:
        async with sink:
            async for item in source:
                await sink.send(item)
    except Exception as exc:  # closed under us during shutdown, or the transport broke
        logger.debug("MCP relay ended: %s", _describe(exc))
    finally:
        conn.end()
        # The session would have closed the transport's stream; the relay stands in
        # for it (some SDK versions leave it to the reader).
        close = getattr(source, "close", None)
        if close is not None:
            close()


async def _list_all(sdk: Any, session: Any) -> list[dict[str, Any]]:
    specs: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(_MAX_PAGES):
        if cursor is None:
            result = await session.list_tools()
        else:
            params = sdk.types.PaginatedRequestParams(cursor=cursor)
            result = await session.list_tools(params=params)
        data = _wire(result)
        specs.extend(data.get("tools") or ())
        cursor = data.get("nextCursor")
        if not cursor:
            break
    return specs


def _name_from(text: str) -> str:
    return _NAME_CHARS.sub("_", text).strip("_") or "mcp"


class MCPServerStdio(MCPServer):
    """An MCP server run as a subprocess, spoken to over its stdin/stdout.

    ::

        async with MCPServerStdio(sys.executable, ["weather_server.py"]) as weather:
            ...

    Args:
        command: the program to run.
        args: its arguments.
        env: extra environment variables (on top of the SDK's safe default set).
        cwd: its working directory.
        errlog: where its stderr goes (a file with a descriptor; default ``sys.stderr``,
            or the process's original stderr when ``sys.stderr`` has no descriptor).
        options: ``name``, ``prefix``, ``allow``, ``block``, ``timeout``,
            ``tool_timeouts``, ``connect_timeout``, ``close_timeout``, as for
            :class:`MCPServer`. ``name`` defaults to the script's (or the command's) file
            name without its extension.

    The process is started on connect and stopped on :meth:`aclose`; if it exits on its
    own, the next call starts it again. Arguments and environment are never shown in
    ``repr`` or errors (they may hold keys).
    """

    def __init__(
        self,
        command: str,
        args: Sequence[str] = (),
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        errlog: TextIO | None = None,
        **options: Unpack[MCPServerOptions],
    ) -> None:
        if not isinstance(command, str) or not command:
            raise ToolError(f"command must be a non-empty string, not {command!r}")
        if isinstance(args, str):
            raise ToolError(
                f"args must be a list of strings, not the string {args!r}; "
                "split it (shlex.split) or use from_command_line()"
            )
        self.command = command
        self.args = tuple(str(a) for a in args)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.errlog = errlog
        if options.get("name") is None:
            scripts = [a for a in self.args if not a.startswith("-")]
            options["name"] = _name_from(Path(scripts[-1] if scripts else command).stem)
        super().__init__(**options)

    @classmethod
    def from_command_line(cls, command_line: str, **options: Any) -> MCPServerStdio:
        """A server from one shell-style line, e.g. ``"npx -y @mcp/server-fs /tmp"``.

        Raises:
            ToolError: an empty or unparsable line.
        """
        import shlex

        try:
            words = shlex.split(command_line)
        except ValueError as exc:
            raise ToolError(f"cannot parse the MCP server command line: {exc}") from None
        if not words:
            raise ToolError("the MCP server command line is empty")
        return cls(words[0], words[1:], **options)

    def _open(self) -> contextlib.AbstractAsyncContextManager[Sequence[Any]]:
        stdio = importlib.import_module("mcp.client.stdio")
        params = stdio.StdioServerParameters(
            command=self.command, args=list(self.args), env=self.env, cwd=self.cwd
        )
        cm: contextlib.AbstractAsyncContextManager[Sequence[Any]] = stdio.stdio_client(
            params, errlog=self.errlog or _stderr()
        )
        return cm

    def __repr__(self) -> str:
        return f"MCPServerStdio(name={self.name!r}, command={Path(self.command).name!r})"


def _stderr() -> Any:
    """Where a server's stderr goes by default: ours, if it is a real file (under a test
    runner or a notebook ``sys.stderr`` may have no descriptor), else the original one."""
    for stream in (sys.stderr, sys.__stderr__):
        try:
            if stream is not None:
                stream.fileno()
                return stream
        except (AttributeError, OSError, ValueError):
            continue
    return subprocess.DEVNULL


def _safe_url(url: str) -> str:
    # For repr and errors: no user:password, no query string (tokens live there).
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _check_url(url: object) -> str:
    if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
        raise ToolError(f"an MCP server URL must be an http(s) URL, not {url!r}")
    return url


class MCPServerHTTP(MCPServer):
    """An MCP server reached over Streamable HTTP (the current HTTP transport).

    ::

        async with MCPServerHTTP("http://127.0.0.1:8000/mcp", headers={"Authorization": key}):
            ...

    Args:
        url: the server's MCP endpoint.
        headers: sent with every request (e.g. authorisation); never shown in ``repr``,
            logs or errors.
        options: as for :class:`MCPServerStdio`; ``name`` defaults to the host.

    If the server forgets the session (it restarted) or the connection drops, the call in
    flight fails and the next call opens a new session.
    """

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        **options: Unpack[MCPServerOptions],
    ) -> None:
        self.url = _check_url(url)
        self._headers = dict(headers or {})
        if options.get("name") is None:
            options["name"] = _name_from(urlsplit(url).hostname or "mcp")
        super().__init__(**options)

    @contextlib.asynccontextmanager
    async def _streams(self) -> AsyncIterator[Sequence[Any]]:
        module = importlib.import_module("mcp.client.streamable_http")
        modern = getattr(module, "streamable_http_client", None)
        if modern is None:  # mcp 1.x
            async with module.streamablehttp_client(self.url, headers=self._headers) as streams:
                yield streams
            return
        if not self._headers:
            async with modern(self.url) as streams:
                yield streams
            return
        utils = importlib.import_module("mcp.shared._httpx_utils")
        async with utils.create_mcp_http_client(headers=self._headers) as client:  # noqa: SIM117
            async with modern(self.url, http_client=client) as streams:
                yield streams

    def _open(self) -> contextlib.AbstractAsyncContextManager[Sequence[Any]]:
        return self._streams()

    def _scrub(self, text: str) -> str:
        text = text.replace(self.url, _safe_url(self.url))
        for value in self._headers.values():
            if value:
                text = text.replace(value, "***")
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, url={_safe_url(self.url)!r})"


class MCPServerSSE(MCPServerHTTP):
    """An MCP server reached over the older HTTP+SSE transport (``.../sse`` endpoints).

    Arguments are as for :class:`MCPServerHTTP`.
    """

    def _open(self) -> contextlib.AbstractAsyncContextManager[Sequence[Any]]:
        sse = importlib.import_module("mcp.client.sse")
        cm: contextlib.AbstractAsyncContextManager[Sequence[Any]] = sse.sse_client(
            self.url, headers=self._headers or None
        )
        return cm
