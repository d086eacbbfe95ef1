"""MCP tools over Streamable HTTP and SSE: the SDK's server on uvicorn, on loopback."""

from __future__ import annotations

import asyncio
import time

import pytest

from promptkit_async import InMemoryStateStore, Pipeline, ProviderMiddleware, StateMiddleware
from promptkit_async.errors import MCPConnectionError, ToolError
from promptkit_async.tools import MCPServerHTTP, MCPServerSSE, ToolRegistry, tool
from tests.tools.mcp._model import scripted_model
from tests.tools.mcp.conftest import LoopbackServer


async def test_multi_turn_conversation_over_streamable_http(http_server: LoopbackServer) -> None:
    store = InMemoryStateStore()
    model = scripted_model()

    @tool
    def shout(text: str) -> str:
        """Upper-case the text."""
        return text.upper()

    async with MCPServerHTTP(http_server.url, name="web") as server:
        pipe = Pipeline(StateMiddleware(store), ProviderMiddleware(model, [server, shout]))
        first = await pipe.execute(
            "h", "user", 'call web_remember {"key": "k", "value": "v1"}; shout {"text": "hi"}'
        )
        assert first.response.content == "results: stored k | HI"
        second = await pipe.execute("h", "user", 'call web_recall {"key": "k"}')
        assert second.response.content == "results: v1"
        replayed = [m.content for m in model.requests[2].messages if m.role == "tool"]
        assert replayed == ["stored k", "HI"]
        await pipe.shutdown()
    assert not server.connected


async def test_allow_and_block_filters_with_wildcards(http_server: LoopbackServer) -> None:
    async with (
        MCPServerHTTP(http_server.url, name="a", allow=["re*", "add"], block=["recall"]) as a,
        MCPServerHTTP(http_server.url, name="b", block=["*e*", "[fhu]*"]) as b,
    ):
        assert {t.remote_name for t in a.tools} == {"remember", "add"}
        assert {t.remote_name for t in b.tools} == {"add", "pid"}
        registry = ToolRegistry([a, b])
        assert set(registry.names) == {"a_remember", "a_add", "b_add", "b_pid"}
        model = scripted_model()
        pipe = Pipeline(ProviderMiddleware(model, registry))
        result = await pipe.execute("f", "user", 'call a_recall {"key": "k"}')
        # A filtered-out tool is neither offered nor run.
        assert "there is no tool named 'a_recall'" in result.response.content
        assert "a_recall" not in {d.name for d in model.requests[0].tools}
        await pipe.shutdown()


async def test_two_servers_with_one_prefix_are_refused(http_server: LoopbackServer) -> None:
    one = MCPServerHTTP(http_server.url, name="x")
    two = MCPServerHTTP(http_server.url, name="y", prefix="x_")
    with pytest.raises(ToolError, match="share the tool-name prefix"):
        ToolRegistry([one, two])


async def test_a_dropped_http_session_is_reopened_on_the_next_call(
    http_server: LoopbackServer,
) -> None:
    async with MCPServerHTTP(http_server.url, name="web") as server:
        assert await server.call_tool("echo", {"text": "before"}) == "before"
        # The server restarts: it forgets every session, and the client's id is refused.
        await asyncio.to_thread(http_server.restart)
        assert await server.call_tool("echo", {"text": "after"}) == "after"
        assert server.connected


async def test_a_server_that_went_away_fails_fast_and_is_reconnected_when_back(
    http_server: LoopbackServer,
) -> None:
    async with MCPServerHTTP(http_server.url, name="web", connect_timeout=5) as server:
        assert await server.call_tool("echo", {"text": "up"}) == "up"
        await asyncio.to_thread(http_server.stop)
        started = time.perf_counter()
        with pytest.raises(MCPConnectionError):
            await server.call_tool("echo", {"text": "down"})
        assert time.perf_counter() - started < 5  # an error at once, not a timeout
        await asyncio.to_thread(http_server.start)
        assert await server.call_tool("echo", {"text": "back"}) == "back"


async def test_an_unreachable_server_is_a_tool_error_not_a_failed_turn() -> None:
    from tests.tools.mcp.conftest import _free_port

    url = f"http://127.0.0.1:{_free_port()}/mcp"
    server = MCPServerHTTP(url, name="down", connect_timeout=3)
    with pytest.raises(MCPConnectionError, match="could not connect to MCP server 'down'"):
        await server.connect()
    model = scripted_model()
    pipe = Pipeline(ProviderMiddleware(model, [server]))
    result = await pipe.execute("d", "user", "hello")  # no tools listed: the turn goes on
    assert result.response.content == "plain answer to hello"
    await pipe.shutdown()
    await server.aclose()


async def test_sse_transport(sse_server: LoopbackServer) -> None:
    async with MCPServerSSE(sse_server.url, name="old") as server:
        assert "old_add" in {t.name for t in server.tools}
        assert await server.call_tool("add", {"a": 2, "b": 3}) == "5"


def test_secrets_stay_out_of_repr() -> None:
    server = MCPServerHTTP(
        "https://user:pw@example.com/mcp?token=sekrit",
        headers={"Authorization": "Bearer sekrit"},
    )
    text = repr(server) + repr(ToolRegistry([server]))
    assert "sekrit" not in text
    assert "pw" not in text
    assert "https://example.com/mcp" in text
    # Errors pass through the same filter (a transport error may quote the URL).
    leak = "GET https://user:pw@example.com/mcp?token=sekrit with Bearer sekrit failed"
    assert "sekrit" not in server._scrub(leak)


async def test_connection_errors_do_not_carry_the_url_or_headers() -> None:
    from tests.tools.mcp.conftest import _free_port

    url = f"http://127.0.0.1:{_free_port()}/mcp?token=sekrit"
    server = MCPServerHTTP(url, headers={"X-Key": "sekrit"}, connect_timeout=3)
    with pytest.raises(MCPConnectionError) as caught:
        await server.connect()
    assert "sekrit" not in str(caught.value)
    await server.aclose()
