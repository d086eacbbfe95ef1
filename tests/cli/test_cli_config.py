"""The chatbot's choices (session id, store path, provider) and non-terminal input."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from pathlib import Path

import pytest

from promptkit_async.cli._config import (
    UsageError,
    build_provider,
    choose_provider,
    default_db_path,
    default_session_id,
    redact_url,
)
from promptkit_async.providers.demo import DemoProvider

ROOT = Path(__file__).resolve().parents[2]


def test_session_id_defaults_to_user_and_date(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER", "erin")
    monkeypatch.setenv("LOGNAME", "erin")
    today = datetime.date.today().isoformat()
    assert default_session_id({}) == f"chat-erin-{today}"
    assert default_session_id({"SESSION_ID": "mine"}) == "mine"


def test_db_path_default_and_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert default_db_path({"PROMPTKIT_CHAT_DB": str(tmp_path / "x.db")}) == tmp_path / "x.db"
    if sys.platform.startswith("linux"):
        assert default_db_path({"XDG_DATA_HOME": str(tmp_path)}) == (
            tmp_path / "promptkit-chat" / "chat.db"
        )
        monkeypatch.setenv("HOME", str(tmp_path))
        assert default_db_path({}) == tmp_path / ".local/share/promptkit-chat/chat.db"


def test_provider_choice_follows_keys() -> None:
    assert choose_provider(None, {}) == "demo"
    assert choose_provider(None, {"ANTHROPIC_API_KEY": "k"}) == "anthropic"
    assert choose_provider(None, {"GOOGLE_API_KEY": "k", "OPENAI_API_KEY": "k"}) == "openai"
    assert choose_provider("ollama", {"OPENAI_API_KEY": "k"}) == "ollama"


def test_build_provider_demo_and_missing_key() -> None:
    demo = build_provider(
        "demo", None, {"PROMPTKIT_DEMO_CHUNK_DELAY": "0.5"}, demo_chunk_delay=None
    )
    assert isinstance(demo, DemoProvider)
    assert demo.chunk_delay == 0.5
    fast = build_provider("demo", None, {}, demo_chunk_delay=0)
    assert isinstance(fast, DemoProvider)
    assert fast.chunk_delay == 0
    with pytest.raises(UsageError, match="GEMINI_API_KEY or GOOGLE_API_KEY"):
        build_provider("gemini", None, {}, demo_chunk_delay=None)


def test_redact_url_hides_passwords() -> None:
    assert redact_url("localhost:6379") == "localhost:6379"
    assert redact_url("redis://user:pw@host:1/0") == "redis://user:***@host:1/0"
    assert redact_url("rediss://:pw@host") == "rediss://:***@host"


def test_reads_from_a_pipe_or_a_file(tmp_path: Path) -> None:
    # Not a terminal: lines are read all the same and each reply is printed.
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update(PYTHONPATH=str(ROOT), PROMPTKIT_DEMO_CHUNK_DELAY="0")
    script = "My name is Zed\nWhat's my name?\n"
    command = [sys.executable, "-m", "promptkit_async", "--store", "memory", "--session", "z"]
    piped = subprocess.run(
        command, input=script, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert "Bot: Your name is Zed." in piped.stdout
    assert "Total cost this session: $0.000000" in piped.stdout  # end of input = Ctrl-D
    source = tmp_path / "input.txt"
    source.write_text(script + "exit\n")
    with source.open() as stdin:
        from_file = subprocess.run(
            command, stdin=stdin, env=env, capture_output=True, text=True, timeout=60, check=True
        )
    assert "Bot: Your name is Zed." in from_file.stdout
    assert "Goodbye!" in from_file.stdout


def test_output_closed_early_ends_quietly() -> None:
    # As with ``promptkit-chat | head -1``: no traceback, no "exception never retrieved".
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update(PYTHONPATH=str(ROOT), PROMPTKIT_DEMO_CHUNK_DELAY="0")
    command = [sys.executable, "-m", "promptkit_async", "--store", "memory"]
    with subprocess.Popen(
        command,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None
        assert child.stdin is not None
        assert child.stderr is not None
        assert child.stdout.readline().startswith("=== promptkit-chat")
        child.stdout.close()
        child.stdin.write("hi\nhello\n")
        child.stdin.close()
        errors = child.stderr.read()
        assert child.wait(timeout=60) == 1
    assert "Traceback" not in errors
    assert "never retrieved" not in errors
