"""Real ``redis-server`` processes for tests: a standalone server and a 3-master cluster.

Conftests import the fixtures from here (``from tests._redis_server import ...``). The
session-scoped servers are shared by every conftest that imports them (reference
counted), started on free loopback ports with persistence off, and stopped at the end.

Without a ``redis-server`` binary the Redis tests skip, except under CI (``CI`` set),
where they fail: CI must run them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
_START_TIMEOUT = 20.0


def require_redis() -> str:
    """The redis-server path; skip (locally) or fail (under CI) when it is missing."""
    if REDIS_SERVER is None or REDIS_CLI is None:
        message = "redis-server / redis-cli not found (apt-get install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must run the Redis tests", pytrace=False)
        pytest.skip(message)
    return REDIS_SERVER


def free_port(*, cluster_bus: bool = False) -> int:
    """A loopback port nobody listens on (and port + 10000 too, for a cluster bus)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if not cluster_bus:
            return port
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free loopback port found")


def command(port: int, *args: str) -> bytes:
    """Send one command over a raw socket and return the raw reply (tests' side channel)."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"".join(parts))
        reply = b""
        while True:
            chunk = s.recv(65536)
            reply += chunk
            if not chunk or _complete(reply):
                return reply


def _complete(reply: bytes) -> bool:
    if reply[:1] in (b"+", b"-", b":"):
        return reply.endswith(b"\r\n")
    if reply[:1] == b"$":
        head, _, rest = reply.partition(b"\r\n")
        size = int(head[1:])
        return size < 0 or len(rest) >= size + 2
    return reply.endswith(b"\r\n")


def _answers(port: int) -> bool:
    try:
        # A server with a password answers -NOAUTH: up, all the same.
        return command(port, "PING").startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process on a loopback port, restartable on the same port."""

    def __init__(self, directory: Path, *, port: int | None = None, args: tuple[str, ...] = ()):
        self.directory = directory
        self.port = port or free_port(cluster_bus="--cluster-enabled" in args)
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        binary = require_redis()
        self.directory.mkdir(parents=True, exist_ok=True)
        argv = [
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", str(self.directory / "redis.log"),
            *self.args,
        ]  # fmt: skip
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + _START_TIMEOUT
        while not _answers(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not start:\n{log}")
            time.sleep(0.02)  # polling an external process until it is ready

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and reap it."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """Kill the server at once, as a crash would (SIGKILL)."""
        self._end(signal.SIGKILL)

    def _end(self, sig: int) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class RedisClusterServers:
    """Three ``redis-server --cluster-enabled yes`` masters joined into one cluster."""

    def __init__(self, directory: Path) -> None:
        args = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
        self.nodes = [RedisServer(directory / f"node{i}", args=args) for i in range(3)]

    @property
    def port(self) -> int:
        """The port of the first master (any master works as a startup node)."""
        return self.nodes[0].port

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port of the first master>``."""
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the nodes, create the cluster and wait for ``cluster_state:ok``."""
        for node in self.nodes:
            node.start()
        assert REDIS_CLI is not None
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        argv = [REDIS_CLI, "--cluster", "create", *addresses, "--cluster-replicas", "0"]
        created = subprocess.run(
            [*argv, "--cluster-yes"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        if created.returncode != 0:
            self.stop()
            raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout[-2000:]!r}")
        deadline = time.monotonic() + _START_TIMEOUT
        while not all(self._ready(n.port) for n in self.nodes):
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the Redis cluster did not reach cluster_state:ok")
            time.sleep(0.05)  # polling external processes until the cluster has formed

    @staticmethod
    def _ready(port: int) -> bool:
        info = command(port, "CLUSTER", "INFO")
        return b"cluster_state:ok" in info and b"cluster_known_nodes:3" in info

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()


# --- sharing between conftests --------------------------------------------------------

_shared: dict[str, list[Any]] = {}


@contextlib.contextmanager
def _share(name: str, create: Callable[[], Any]) -> Iterator[Any]:
    # Each conftest that imports a fixture gets its own fixture definition; reference
    # counting makes them share one server, stopped when the last user is done.
    entry = _shared.get(name)
    if entry is None:
        server = create()
        server.start()
        entry = _shared[name] = [server, 0]
    entry[1] += 1
    try:
        yield entry[0]
    finally:
        entry[1] -= 1
        if entry[1] == 0:
            del _shared[name]
            entry[0].stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A standalone redis-server for the whole session (persistence off)."""
    require_redis()
    with _share("standalone", lambda: RedisServer(tmp_path_factory.mktemp("redis"))) as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A 3-master Redis Cluster for the whole session."""
    require_redis()
    with _share("cluster", lambda: RedisClusterServers(tmp_path_factory.mktemp("cluster"))) as c:
        yield c


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start private servers for one test (one that stops or kills Redis, say)."""
    require_redis()
    servers: list[RedisServer] = []

    def start(*args: str) -> RedisServer:
        server = RedisServer(tmp_path / f"redis{len(servers)}", args=args)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()
