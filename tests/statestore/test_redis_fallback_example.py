"""examples/redis_fallback.py runs as documented: Redis when it answers, memory when not."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from tests._redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "redis_fallback.py"


async def run_example(redis_addr: str, *messages: str) -> tuple[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env.update(REDIS_ADDR=redis_addr, SESSION_ID="alice", PYTHONPATH=str(ROOT))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE),
        *messages,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return out.decode(), err.decode()


@pytest.mark.redis
async def test_with_redis_a_restarted_program_continues_the_conversation(
    redis_server: RedisServer,
) -> None:
    out, _ = await run_example(redis_server.address, "Hi! My name is Alice.")
    assert "(RedisStateStore)" in out
    assert "Bot: Nice to meet you, Alice!" in out

    out, _ = await run_example(redis_server.address, "What's my name?")
    assert "Bot: Your name is Alice." in out


async def test_without_redis_it_falls_back_to_memory() -> None:
    out, err = await run_example(f"127.0.0.1:{free_port()}")
    assert "Redis unavailable, using in-memory store" in err
    assert "redis-cli" in err
    assert "(InMemoryStateStore)" in out
    assert "Bot: Nice to meet you, Alice!" in out
    assert "Bot: Your name is Alice." in out
