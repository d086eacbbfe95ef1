"""MCP tools over stdio: one real server subprocess shared by every test of this module."""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import signal
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any, TextIO

import pytest
import pytest_asyncio

from promptkit_async import (
    InMemoryStateStore,
    Pipeline,
    ProviderMiddleware,
    StateMiddleware,
    ToolCall,
    ToolPolicy,
)
from promptkit_async.errors import MCPConnectionError
from promptkit_async.tools import MCPServerStdio, ToolRegistry
from tests.tools.mcp._model import scripted_model
from tests.tools.mcp.conftest import stdio_args

pytestmark = pytest.mark.asyncio(loop_scope="module")
MCP_MAJOR = int(importlib.metadata.version("mcp").split(".")[0])


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server(errlog: TextIO) -> AsyncIterator[MCPServerStdio]:
    command, argv = stdio_args()
    async with MCPServerStdio(
        command, argv, name="t", errlog=errlog, tool_timeouts={"hang": 0.5}
    ) as server:
        yield server
    assert not server.connected


def pipeline(server: MCPServerStdio, policy: ToolPolicy | None = None, **kw: Any) -> Pipeline:
    return Pipeline(
        StateMiddleware(kw.get("store") or InMemoryStateStore()),
        ProviderMiddleware(scripted_model(), [server], policy),
    )


def tool_records(result: Any) -> list[dict[str, Any]]:
    return [c for e in result.trace if e.kind == "tool_round" for c in e.detail["calls"]]


async def wait_for(condition: Any, what: str, seconds: float = 10.0) -> None:
    # Polls a condition the library exposes, with a bound (no fixed sleeps).
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_tools_are_listed_with_the_prefix(server: MCPServerStdio) -> None:
    names = {t.name for t in server.tools}
    assert {"t_add", "t_echo", "t_remember", "t_recall", "t_fail", "t_hang"} <= names
    assert len(names) == 13
    add = next(t for t in server.tools if t.name == "t_add")
    assert add.remote_name == "add"
    assert add.description == "Add two integers."
    assert set(add.parameters["properties"]) == {"a", "b"}
    registry = ToolRegistry([server])
    assert "t_add" in registry
    assert registry.get("t_add") is add


async def test_multi_turn_conversation_stores_and_replays_tool_results(
    server: MCPServerStdio,
) -> None:
    store = InMemoryStateStore()
    model = scripted_model()
    pipe = Pipeline(StateMiddleware(store), ProviderMiddleware(model, [server]))
    first = await pipe.execute("s1", "user", 'call t_remember {"key": "color", "value": "blue"}')
    assert first.response.content == "results: stored color"
    second = await pipe.execute("s1", "user", 'call t_recall {"key": "color"}')
    assert second.response.content == "results: blue"
    stored = await store.load("s1")
    assert [m.role for m in stored] == ["user", "assistant", "tool", "assistant"] * 2
    assert stored[2].content == "stored color"
    assert stored[1].tool_calls[0].id == stored[2].tool_call_id
    # The second turn's first request replayed the first turn's call and its result.
    replay = model.requests[2].messages
    assert [m.content for m in replay if m.role == "tool"] == ["stored color"]
    assert model.requests[2].tools
    assert "t_recall" in {d.name for d in model.requests[2].tools}
    await pipe.shutdown()


async def test_a_tool_error_is_reported_to_the_model(server: MCPServerStdio) -> None:
    pipe = pipeline(server)
    result = await pipe.execute("err", "user", 'call t_fail {"reason": "nope"}')
    assert "refused: nope" in result.response.content
    assert "MCPToolCallError" in result.response.content
    assert [r["status"] for r in tool_records(result)] == ["error"]
    await pipe.shutdown()


async def test_a_server_that_never_answers_times_out_and_the_connection_lives_on(
    server: MCPServerStdio,
) -> None:
    pipe = pipeline(server)
    started = time.perf_counter()
    result = await pipe.execute("hang", "user", 'call t_hang {}; t_echo {"text": "still here"}')
    assert time.perf_counter() - started < 5
    assert [r["status"] for r in tool_records(result)] == ["timeout", "ok"]
    assert "did not finish within 0.5 seconds" in result.response.content
    assert result.response.content.endswith("| still here")
    assert await server.call_tool("echo", {"text": "again"}) == "again"
    await pipe.shutdown()


async def test_cancelling_a_turn_mid_call_keeps_the_connection_for_others(
    server: MCPServerStdio,
) -> None:
    pid = await server.call_tool("pid")
    pipe = pipeline(server)
    slow = asyncio.ensure_future(pipe.execute("slow", "user", 'call t_sleep {"seconds": 30}'))
    sleepers: list[str] = []

    async def sleeping() -> bool:
        sleepers.append(await server.call_tool("sleepers"))
        return sleepers[-1] == "1"

    deadline = time.monotonic() + 10
    while not await sleeping():  # the call reached the server
        assert time.monotonic() < deadline
    other = await pipe.execute("other", "user", 'call t_echo {"text": "meanwhile"}')
    assert other.response.content == "results: meanwhile"
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    if MCP_MAJOR >= 2:  # mcp 1.x clients do not tell the server about a cancelled call
        # The server was told: its handler was cancelled (not left to sleep for 30 s).
        deadline = time.monotonic() + 5
        while await sleeping():
            assert time.monotonic() < deadline, "the server never saw the cancellation"
    assert server.connected
    assert await server.call_tool("echo", {"text": "after"}) == "after"
    assert await server.call_tool("pid") == pid  # the same process: nothing reconnected
    await pipe.shutdown()


async def test_images_become_a_placeholder(server: MCPServerStdio) -> None:
    assert await server.call_tool("picture") == "[image: image/png, 70 bytes]"


async def test_a_changed_tool_list_is_refetched(server: MCPServerStdio) -> None:
    model = scripted_model()
    pipe = Pipeline(ProviderMiddleware(model, [server]))
    version = server.version
    await pipe.execute("u", "user", "call t_unlock {}")
    await wait_for(lambda: server.version > version, "the tools/list_changed refresh")
    assert "t_secret" in {t.name for t in server.tools}
    result = await pipe.execute("u", "user", "call t_secret {}")
    assert result.response.content == "results: 42"
    assert "t_secret" in {d.name for d in model.requests[-2].tools}
    await pipe.shutdown()


async def test_approval_hook_refuses_and_allows(server: MCPServerStdio) -> None:
    asked: list[ToolCall] = []
    answer = False

    async def approve(call: ToolCall) -> bool:
        asked.append(call)
        return answer

    policy = ToolPolicy(require_approval={"t_delete_*"}, approve=approve)
    pipe = pipeline(server, policy)
    refused = await pipe.execute("a", "user", 'call t_delete_everything {"confirm": true}')
    assert "needs the user's approval" in refused.response.content
    assert [r["status"] for r in tool_records(refused)] == ["declined"]
    assert asked[0].name == "t_delete_everything"
    answer = True
    allowed = await pipe.execute("a", "user", 'call t_delete_everything {"confirm": true}')
    assert allowed.response.content == "results: deleted"
    # Tools outside require_approval never ask.
    await pipe.execute("a", "user", 'call t_echo {"text": "x"}')
    assert len(asked) == 2
    await pipe.shutdown()


async def test_loop_guard_and_cap_with_mcp_tools(server: MCPServerStdio) -> None:
    policy = ToolPolicy(max_identical_calls=1, max_calls=3)
    pipe = pipeline(server, policy)
    same = '{"text": "a"}'
    result = await pipe.execute(
        "g", "user", f'call t_echo {same}; t_echo {same}; t_echo {{"text": "b"}}; t_pid {{}}'
    )
    statuses = [r["status"] for r in tool_records(result)]
    assert statuses == ["ok", "repeated", "ok", "capped"]
    assert result.response.content.startswith("results: a | Error: 't_echo' was already called")
    await pipe.shutdown()


async def test_a_server_killed_mid_call_fails_the_call_and_restarts_next_time(
    server: MCPServerStdio,
) -> None:
    pid = await server.call_tool("pid")
    pipe = pipeline(server)
    started = time.perf_counter()
    result = await pipe.execute("kill", "user", "call t_die {}")
    assert time.perf_counter() - started < 10
    assert [r["status"] for r in tool_records(result)] == ["error"]
    assert "MCPConnectionError: the connection to MCP server 't'" in result.response.content
    assert "it reconnects on the next call" in result.response.content
    after = await pipe.execute("kill", "user", "call t_pid {}")
    new_pid = after.response.content.removeprefix("results: ")
    assert new_pid.isdigit()
    assert new_pid != pid
    await pipe.shutdown()


async def test_a_server_that_died_while_idle_is_restarted_by_the_next_call(
    server: MCPServerStdio,
) -> None:
    pid = int(await server.call_tool("pid"))
    os.kill(pid, signal.SIGKILL)
    await wait_for(lambda: not server.connected, "the connection to notice the exit")
    assert int(await server.call_tool("pid")) != pid


async def test_a_closed_server_refuses_calls(errlog: TextIO) -> None:
    command, argv = stdio_args()
    server = MCPServerStdio(command, argv, errlog=errlog)
    await server.aclose()
    with pytest.raises(MCPConnectionError, match="is closed"):
        await server.call_tool("add", {"a": 1, "b": 2})


async def test_200_concurrent_sessions_share_one_server(server: MCPServerStdio) -> None:
    pipe = pipeline(server)
    sessions = 200

    async def one(i: int) -> Any:
        return await pipe.execute(f"c{i}", "user", f'call t_add {{"a": {i}, "b": 1}}')

    started = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in range(sessions)))
    wall = time.perf_counter() - started
    records = [r for res in results for r in tool_records(res)]
    errors = [r for r in records if r["status"] != "ok"]
    latencies = sorted(r["seconds"] for r in records)
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(
        f"\nMCP stdio, {sessions} concurrent sessions, one server: calls={len(records)} "
        f"errors={len(errors)} p50={p50 * 1000:.1f} ms p99={p99 * 1000:.1f} ms "
        f"wall={wall:.2f} s"
    )
    assert len(records) == sessions
    assert not errors
    assert [r.response.content for r in results] == [f"results: {i + 1}" for i in range(sessions)]
    await pipe.shutdown()


async def test_a_server_that_never_answers_the_handshake_fails_in_bounded_time(
    errlog: TextIO,
) -> None:
    import sys

    silent = MCPServerStdio(
        sys.executable, ["-c", "import time; time.sleep(60)"], errlog=errlog, connect_timeout=1
    )
    started = time.perf_counter()
    with pytest.raises(MCPConnectionError, match="within 1 s: no answer in time"):
        await silent.connect()
    assert time.perf_counter() - started < 2  # at its deadline, not after the cleanup
    await silent.aclose()  # stopping the silent process is bounded too
    assert time.perf_counter() - started < 15
