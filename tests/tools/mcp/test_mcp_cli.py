"""The chatbot's MCP flags: --mcp / --mcp-url, /tools, and tool calls shown as they run."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from promptkit_async import InMemoryStateStore, Pipeline, ProviderMiddleware, ToolPolicy
from promptkit_async.cli import main
from promptkit_async.cli._chat import Chat, Persona
from promptkit_async.tools import MCPServerHTTP, ToolRegistry
from tests.tools.mcp._model import scripted_model
from tests.tools.mcp.conftest import SERVER, LoopbackServer

KEYS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY", "SESSION_ID")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PROMPTKIT_CHAT_DB", str(tmp_path / "chat.db"))
    monkeypatch.setenv("PROMPTKIT_DEMO_CHUNK_DELAY", "0")


def test_mcp_flags_connect_and_tools_lists_them(
    offline: None,
    http_server: LoopbackServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("/tools\nexit\n"))
    argv = [
        "--store",
        "memory",
        "--mcp",
        f"{sys.executable} {SERVER}",
        "--mcp-url",
        http_server.url,
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "MCP:     server: 13 tool(s)" in out
    assert "MCP:     127_0_0_1: 13 tool(s)" in out
    assert "[26 tool(s)]" in out
    assert "  server_add - Add two integers." in out
    assert "  127_0_0_1_recall - Read the note stored under a key." in out


def test_a_bad_mcp_command_line_is_a_usage_error(
    offline: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--mcp", "'unclosed"]) == 2
    assert "cannot parse the MCP server command line" in capsys.readouterr().err


def test_tools_without_servers(offline: None, capsys: pytest.CaptureFixture[str]) -> None:
    chat = Chat(None, InMemoryStateStore(), Persona(), "s", stdout=sys.stdout)
    chat.list_tools()
    assert "No tools" in capsys.readouterr().out


async def test_each_tool_call_is_shown_as_it_runs(http_server: LoopbackServer) -> None:
    out = io.StringIO()
    async with MCPServerHTTP(http_server.url, name="web") as server:
        tools = ToolRegistry([server])
        chat = Chat(None, InMemoryStateStore(), Persona(), "s", stdout=out, tools=tools)
        policy = ToolPolicy(require_approval={"*"}, approve=chat.show_tool_call)
        chat.pipeline = Pipeline(ProviderMiddleware(scripted_model(), tools, policy))
        await chat.turn('call web_add {"a": 2, "b": 40}')
        await chat.pipeline.shutdown()
    text = out.getvalue()
    assert '[tool: web_add {"a": 2, "b": 40}]' in text
    assert text.index("[tool: web_add") < text.index("results: 42")
