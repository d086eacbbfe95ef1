"""Fixtures that run the real chatbot in a pseudo-terminal, as a person would."""

from __future__ import annotations

import io
import os
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pexpect
import pytest

from tests._fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parents[2]
# Variables that would change which provider, store or session the CLI picks.
_SCRUB = (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "ANTHROPIC_API_KEY",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
    "SESSION_ID",
    "REDIS_URL",
    "DATABASE_URL",
    "PROMPTKIT_CHAT_DB",
    "PROMPTKIT_DEMO_CHUNK_DELAY",
)

Spawn = Callable[..., pexpect.spawn]


@pytest.fixture
def chat_env(tmp_path: Path) -> dict[str, str]:
    """The environment the chatbot runs in: no keys, this worktree's package, a temp db."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PROMPTKIT_CHAT_DB"] = str(tmp_path / "chat.db")
    env["PROMPTKIT_DEMO_CHUNK_DELAY"] = "0"
    env["HOME"] = str(tmp_path)  # so nothing lands in the real user data directory
    env["TERM"] = "dumb"
    return env


@pytest.fixture
def spawn_chat(chat_env: dict[str, str]) -> Iterator[Spawn]:
    """Start ``python -m promptkit_async ARGS`` in a pty; every child is closed after."""
    children: list[pexpect.spawn] = []

    def spawn(*args: str, env: dict[str, str] | None = None) -> pexpect.spawn:
        child = pexpect.spawn(
            sys.executable,
            ["-m", "promptkit_async", *args],
            env={**chat_env, **(env or {})},
            cwd=str(ROOT),
            encoding="utf-8",
            timeout=30,
            dimensions=(40, 250),
        )
        child.logfile_read = io.StringIO()  # the whole transcript, for assertions
        children.append(child)
        return child

    yield spawn
    for child in children:
        child.close(force=True)


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    """A running :class:`FakeOpenAI`."""
    with FakeOpenAI() as server:
        yield server
