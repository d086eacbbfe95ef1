"""Real MCP servers for the tests: the SDK's own server API, over stdio and over HTTP.

``stdio_command`` starts ``_server.py`` as a subprocess of this interpreter; the HTTP
fixtures run the same server with uvicorn on a free loopback port in a thread of their
own (so its event loop is not the test's), and can restart it to drop every session.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import pytest

if os.environ.get("CI"):  # under CI the real servers must run: a missing SDK fails
    import mcp  # noqa: F401
    import uvicorn
else:
    pytest.importorskip("mcp", reason="the [mcp] extra is not installed")
    uvicorn = pytest.importorskip("uvicorn")

from tests.tools.mcp._server import build

SERVER = Path(__file__).with_name("_server.py")


@pytest.fixture(scope="module")
def errlog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TextIO]:
    """Where the stdio servers' stderr goes (a real file: the SDK needs a descriptor)."""
    path = tmp_path_factory.mktemp("mcp") / "server-stderr.log"
    with path.open("w", encoding="utf-8") as f:
        yield f


def stdio_args() -> tuple[str, list[str]]:
    return sys.executable, [str(SERVER)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LoopbackServer:
    """An MCP server app served by uvicorn on 127.0.0.1 in a background thread."""

    def __init__(self, transport: str) -> None:
        self.transport = transport
        self.port = _free_port()
        self.path = "/mcp" if transport == "http" else "/sse"
        self.url = f"http://127.0.0.1:{self.port}{self.path}"
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        mcp = build("web")
        app = mcp.streamable_http_app() if self.transport == "http" else mcp.sse_app()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name=f"mcp-{self.transport}", daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:  # uvicorn has no "started" callback: poll, bounded
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the {self.transport} MCP server did not start")
            time.sleep(0.02)
        self._server, self._thread = server, thread

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        # Open SSE streams would hold a graceful shutdown: cut them, as a crash would.
        self._server.should_exit = True
        self._server.force_exit = True
        self._thread.join(20)
        assert not self._thread.is_alive(), "the loopback MCP server did not stop"
        self._server = self._thread = None

    def restart(self) -> None:
        """A new server process-state on the same port: every MCP session is forgotten."""
        self.stop()
        self.start()


def _serving(transport: str) -> Iterator[LoopbackServer]:
    server = LoopbackServer(transport)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def http_server() -> Iterator[LoopbackServer]:
    """The test server over Streamable HTTP, at ``.url`` (``/mcp``)."""
    yield from _serving("http")


@pytest.fixture(scope="module")
def sse_server() -> Iterator[LoopbackServer]:
    """The test server over the older SSE transport, at ``.url`` (``/sse``)."""
    yield from _serving("sse")
