"""Fixtures that run the real chatbot in a pseudo-terminal, as a person would."""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import os
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest

# The real redis-server fixtures arrive with the stores branch; until then the Redis
# tests skip (they are marked so).
with contextlib.suppress(ImportError):
    from tests._redis_server import redis_server  # noqa: F401 (fixture)

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


class FakeOpenAI:
    """A loopback OpenAI-compatible server (a thread), answering from what it is sent.

    The reply to each chat completion names how many messages it received and the
    first one, so a test can see the history reach the model. Streams like OpenAI:
    text deltas, a finish chunk, a usage chunk, ``[DONE]``.
    """

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.auth: list[str] = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(body)
                fake.auth.append(self.headers.get("Authorization", ""))
                messages = body["messages"]
                text = f"You sent {len(messages)} message(s); the first: {messages[0]['content']}"
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                base = {"id": "c1", "object": "chat.completion.chunk", "created": 0}
                base["model"] = body["model"]
                words = text.split(" ")
                events = [
                    {**base, "choices": [{"index": 0, "delta": {"content": w + " "}}]}
                    for w in words[:-1]
                ]
                events.append({**base, "choices": [{"index": 0, "delta": {"content": words[-1]}}]})
                events.append(
                    {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
                )
                usage = {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100}
                events.append({**base, "choices": [], "usage": usage})
                for event in events:
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    """A running :class:`FakeOpenAI`."""
    with FakeOpenAI() as server:
        yield server
