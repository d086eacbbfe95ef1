"""``promptkit-chat --store postgres``: conversations kept in PostgreSQL across runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from tests._postgres_server import PostgresServer
from tests._redis_server import free_port

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]


def chat(script: str, *args: str, env: dict[str, str]) -> str:
    command = [sys.executable, "-m", "promptkit_async", "--store", "postgres", *args]
    done = subprocess.run(
        command, input=script, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout


def clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.pop("DATABASE_URL", None)
    env.update(
        PYTHONPATH=str(ROOT),
        PROMPTKIT_DEMO_CHUNK_DELAY="0",
        PROMPTKIT_CHAT_DB=str(tmp_path / "fallback.db"),
    )
    return env


async def test_database_url_keeps_the_conversation_across_runs(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    env = clean_env(tmp_path)
    env["DATABASE_URL"] = postgres_server.dsn
    first = chat("My name is Zed\n", "--session", "pg-cli", env=env)
    assert "postgres at postgresql://postgres@127.0.0.1" in first
    second = chat("What's my name?\n", "--session", "pg-cli", env=env)
    assert "Bot: Your name is Zed." in second  # the history came back from PostgreSQL
    conn = await asyncpg.connect(postgres_server.dsn)
    try:
        stored = await conn.fetchval(
            "SELECT next_seq - start_seq FROM public.promptkit_sessions WHERE id = 'pg-cli'"
        )
    finally:
        await conn.close()
    assert stored == 4


def test_postgres_url_flag_wins_and_an_unreachable_server_falls_back(tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    env["DATABASE_URL"] = "postgresql://nobody@127.0.0.1:1/none"
    url = f"postgresql://app:hunter2@127.0.0.1:{free_port()}/chat"
    out = chat("hi\n", "--postgres-url", url, "--session", "x", env=env)
    assert "PostgreSQL unavailable at postgresql://app:***@127.0.0.1" in out
    assert "pg_isready" in out
    assert "hunter2" not in out
    assert "using the embedded SQLite store" in out
