"""examples/chatbot.py: the tutorial's complete multi-user chatbot, run as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests._redis_server import RedisServer, free_port

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "chatbot.py"


def chat(lines: list[str], *, redis_addr: str, user: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.endswith("API_KEY")}
    env.update(REDIS_ADDR=redis_addr, USER=user, PYTHONPATH=str(EXAMPLE.parents[1]))
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    return done.stdout + done.stderr


def test_without_redis_or_key_it_falls_back_and_still_remembers() -> None:
    out = chat(
        ["My name is Alice", "What's my name?", "I love pizza", "What food do I love?", "exit"],
        redis_addr=f"127.0.0.1:{free_port()}",
        user="alice",
    )
    assert "OPENAI_API_KEY not set: using an offline MockProvider" in out
    assert "Redis unavailable, using in-memory store" in out
    assert "Your name is Alice" in out
    assert "You mentioned that you love pizza" in out
    assert "[Tokens: " in out
    assert "Total cost this session" in out


def test_with_redis_a_restart_continues_and_users_are_separate(
    redis_server: RedisServer,
) -> None:
    addr = f"127.0.0.1:{redis_server.port}"
    chat(["clear", "My name is Alice", "exit"], redis_addr=addr, user="alice-restart")
    chat(["clear", "My name is Bob", "exit"], redis_addr=addr, user="bob-restart")
    again = chat(["What's my name?", "exit"], redis_addr=addr, user="alice-restart")
    assert "Redis unavailable" not in again
    assert "Your name is Alice" in again
    cleared = chat(["clear", "What's my name?", "exit"], redis_addr=addr, user="alice-restart")
    assert "[Conversation cleared]" in cleared
    assert "Your name is Alice" not in cleared
