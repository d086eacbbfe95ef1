"""Real PostgreSQL servers for tests: ``initdb`` + ``pg_ctl`` in a temporary directory.

Conftests import the fixtures from here (``from tests._postgres_server import ...``). The
session-scoped server is shared by every conftest that imports it (reference counted),
started on a free loopback port with its unix socket in its own directory, and stopped at
the end; each test uses its own schema, so tests never see each other's tables.

PostgreSQL refuses to run as root: when the tests run as root (CI), the server runs as
the unprivileged ``postgres`` user (Debian's package creates it) in a directory that
user owns. Without the server binaries the PostgreSQL tests skip, except under CI
(``CI`` set), where they fail: CI must run them.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests._redis_server import _share, free_port

_START_TIMEOUT = 60.0  # seconds for initdb, or a start


def _find_bin_dir() -> Path | None:
    # Debian keeps the server binaries out of PATH, under /usr/lib/postgresql/<v>/bin.
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    found = shutil.which("pg_ctl")
    if found:
        candidates.append(os.path.dirname(os.path.realpath(found)))
    for directory in candidates:
        path = Path(directory)
        if all((path / name).exists() for name in ("initdb", "pg_ctl", "postgres")):
            return path
    return None


BIN_DIR = _find_bin_dir()


def require_postgres() -> Path:
    """The directory of ``initdb``/``pg_ctl``; skip (locally) or fail (under CI) without."""
    if BIN_DIR is None:
        message = (
            "PostgreSQL server binaries (initdb, pg_ctl) not found (apt-get install postgresql)"
        )
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must run the PostgreSQL tests", pytrace=False)
        pytest.skip(message)
    return BIN_DIR


def _server_user() -> str | None:
    """The user to run the server as: ``postgres`` when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail(
            "running as root, and PostgreSQL refuses root: create an unprivileged "
            "'postgres' user (Debian's postgresql package does)",
            pytrace=False,
        )
    return "postgres"


class PostgresServer:
    """One PostgreSQL server on a loopback port, restartable (and killable) in place.

    ``dsn`` connects as the superuser ``postgres`` to database ``postgres`` with trust
    authentication (loopback only, a throwaway cluster).
    """

    def __init__(self, *, port: int | None = None) -> None:
        self.bin_dir = require_postgres()
        self.user = _server_user()
        # Our own directory under /tmp: pytest's tmp_path is private to root (0700).
        self.directory = Path(tempfile.mkdtemp(prefix="promptkit-pg-"))
        self.data = self.directory / "data"
        self.socket_dir = self.directory / "sock"
        self.log = self.directory / "postgres.log"
        self.port = port or free_port()
        self.running = False
        self._initialised = False

    @property
    def dsn(self) -> str:
        """``postgresql://postgres@127.0.0.1:<port>/postgres``."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str, timeout: float = _START_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv,
            user=self.user,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.directory,
        )

    def _init(self) -> None:
        self.socket_dir.mkdir()
        if self.user is not None:
            record = pwd.getpwnam(self.user)
            for path in (self.directory, self.socket_dir):
                os.chown(path, record.pw_uid, record.pw_gid)
        done = self._run(
            str(self.bin_dir / "initdb"),
            "-D", str(self.data),
            "-U", "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        self._initialised = True

    def start(self) -> None:
        """Start the server (``pg_ctl start -w``): it answers once this returns."""
        if not self._initialised:
            self._init()
        options = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.socket_dir}",
                "-c fsync=off",  # a throwaway cluster: crash safety of the OS is not tested
                "-c max_connections=100",
                "-c shared_buffers=32MB",
            ]
        )
        done = self._run(
            str(self.bin_dir / "pg_ctl"),
            "start", "-w",
            "-t", str(int(_START_TIMEOUT)),
            "-D", str(self.data),
            "-l", str(self.log),
            "-o", options,
        )  # fmt: skip
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"PostgreSQL on port {self.port} did not start:\n{done.stderr}{log}")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` (clean), or ``immediate`` (a crash: no shutdown work)."""
        if not self.running:
            return
        self.running = False
        self._run(str(self.bin_dir / "pg_ctl"), "stop", "-w", "-m", mode, "-D", str(self.data))

    def kill(self) -> None:
        """End every server process at once, as a crash would; the next start recovers."""
        self.stop("immediate")

    def remove(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class _SharedServer(PostgresServer):
    """The session's server: stopping it for good also deletes its directory."""

    def stop(self, mode: str = "fast") -> None:
        super().stop(mode)
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole session (each test uses its own schema)."""
    require_postgres()
    # Shared (reference counted) like the Redis servers, by every conftest importing it.
    with _share("postgres", _SharedServer) as server:
        yield server


@pytest.fixture
def postgres_factory() -> Iterator[Callable[[], PostgresServer]]:
    """Start private servers for one test (one that stops, kills or restarts PostgreSQL)."""
    require_postgres()
    servers: list[PostgresServer] = []

    def start() -> PostgresServer:
        server = PostgresServer()
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.remove()


def unique_schema() -> str:
    """A fresh schema name for one test."""
    return f"t_{os.urandom(6).hex()}"


def server_pids(server: PostgresServer) -> list[int]:
    """The postmaster's pid and its children's (backends, checkpointer, ...)."""
    pid_file = server.data / "postmaster.pid"
    postmaster = int(pid_file.read_text().split("\n", 1)[0])
    pids = [postmaster]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # ended meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces, so split after the ")".
        if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
            pids.append(int(entry.name))
    return pids
