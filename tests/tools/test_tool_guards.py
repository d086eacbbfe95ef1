"""ToolPolicy's per-turn call cap, loop guard and approval hook, with local tools."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from promptkit_async import (
    MockProvider,
    Pipeline,
    ProviderMiddleware,
    ProviderResponse,
    ToolCall,
    ToolError,
    ToolPolicy,
    tool,
)

ran: list[str] = []


@tool
def lookup(q: str) -> str:
    """Look something up."""
    ran.append(q)
    return f"found {q}"


@tool
def wipe() -> str:
    """Delete everything."""
    ran.append("wipe")
    return "wiped"


def calls(*items: tuple[str, str]) -> ProviderResponse:
    return ProviderResponse(
        tool_calls=tuple(ToolCall(f"c{i}-{n}", n, a) for i, (n, a) in enumerate(items))
    )


def statuses(result: Any) -> list[str]:
    return [c["status"] for e in result.trace if e.kind == "tool_round" for c in e.detail["calls"]]


@pytest.fixture(autouse=True)
def _reset() -> None:
    ran.clear()


async def run(replies: list[Any], policy: ToolPolicy) -> tuple[Any, MockProvider]:
    provider = MockProvider(replies)
    pipe = Pipeline(ProviderMiddleware(provider, [lookup, wipe], policy))
    result = await pipe.execute("s", "user", "go")
    await pipe.shutdown()
    return result, provider


async def test_the_loop_guard_counts_across_rounds_and_ignores_key_order() -> None:
    a = '{"q": "x"}'
    replies = [calls(("lookup", a)), calls(("lookup", '{ "q" : "x" }')), "done"]
    result, provider = await run(replies, ToolPolicy(max_identical_calls=1))
    assert statuses(result) == ["ok", "repeated"]
    assert ran == ["x"]
    told = provider.requests[2].messages[-1].content
    assert "already called with these same arguments" in told


async def test_without_the_guard_repeats_run() -> None:
    a = '{"q": "x"}'
    result, _ = await run([calls(("lookup", a)), calls(("lookup", a)), "done"], ToolPolicy())
    assert statuses(result) == ["ok", "ok"]
    assert ran == ["x", "x"]


async def test_the_call_cap_counts_the_whole_turn() -> None:
    replies = [
        calls(("lookup", '{"q": "1"}'), ("lookup", '{"q": "2"}')),
        calls(("lookup", '{"q": "3"}'), ("lookup", '{"q": "4"}')),
        "done",
    ]
    result, provider = await run(replies, ToolPolicy(max_calls=3))
    assert statuses(result) == ["ok", "ok", "ok", "capped"]
    assert ran == ["1", "2", "3"]
    assert "limit of 3 tool calls" in provider.requests[2].messages[-1].content
    assert result.response.content == "done"


async def test_approval_refused_allowed_failing_and_slow() -> None:
    answers: dict[str, Any] = {}
    asked: list[ToolCall] = []

    async def approve(call: ToolCall) -> bool:
        asked.append(call)
        answer = answers["answer"]
        if isinstance(answer, BaseException):
            raise answer
        if answer == "slow":
            await asyncio.Event().wait()
        return bool(answer)

    policy = ToolPolicy(require_approval={"wi*"}, approve=approve, approval_timeout=0.2)
    for answer, status, text in [
        (False, "declined", "the user declined"),
        (RuntimeError("no terminal"), "declined", "could not be asked"),
        ("slow", "declined", "no answer within 0.2 seconds"),
        (True, "ok", "wiped"),
    ]:
        answers["answer"] = answer
        ran.clear()
        result, provider = await run(
            [calls(("wipe", "{}"), ("lookup", '{"q": "y"}')), "done"], policy
        )
        assert statuses(result) == [status, "ok"]
        assert text in provider.requests[1].messages[-2].content
        assert ("wipe" in ran) is (status == "ok")
    assert {c.name for c in asked} == {"wipe"}  # lookup never needed approval


def test_policy_validation() -> None:
    with pytest.raises(ToolError, match="approve is None"):
        ToolPolicy(require_approval={"x"})
    with pytest.raises(ToolError, match="max_calls"):
        ToolPolicy(max_calls=0)
    with pytest.raises(ToolError, match="max_identical_calls"):
        ToolPolicy(max_identical_calls=True)  # type: ignore[arg-type]
    with pytest.raises(ToolError, match="not the string"):
        ToolPolicy(require_approval="wipe", approve=lambda c: None)  # type: ignore[arg-type,return-value]
    policy = ToolPolicy(require_approval=["fs_*", "exact"], approve=lambda c: None)  # type: ignore[arg-type,return-value]
    assert policy.needs_approval("fs_write")
    assert policy.needs_approval("exact")
    assert not policy.needs_approval("other")
