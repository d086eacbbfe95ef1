"""Running one assistant message's tool calls: concurrently, time-limited, never raising.

Every call ends as a ``role="tool"`` message answering its ``tool_call_id``: the tool's
result, or a sentence telling the model what went wrong (unknown or blocked tool, bad
arguments, an exception, a timeout, the turn's call cap, a repeated call, a refused
approval), so the model can recover. Only cancellation of the turn propagates, after the
running tools were cancelled and have finished.

The per-turn cap and the loop guard keep no state of their own: they count the calls of
the turn's earlier assistant messages in ``ctx.new_messages``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import enum
import json
import logging
import time
from collections import Counter
from collections.abc import Coroutine, Sequence
from typing import Any

from .. import events
from .._context import ExecutionContext
from ..types import Message, ToolCall
from ._registry import AnyTool, ToolPolicy, ToolRegistry
from ._schema import ArgumentError

__all__ = ["result_text", "run_tool_calls"]

logger = logging.getLogger("promptkit_async.tools")

_MAX_LISTED = 20  # tool names listed in an "unknown tool" answer


def _jsonable(value: Any) -> Any:
    # json.dumps' fallback for common non-JSON types a tool may return.
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    dump = getattr(value, "model_dump", None)  # pydantic models, without importing pydantic
    if callable(dump):
        return dump(mode="json")
    return str(value)


_dumps = json.JSONEncoder(ensure_ascii=False, default=_jsonable).encode


def result_text(value: Any) -> str:
    """The tool-message content for a tool's return value.

    A ``str`` is sent as is; anything else as JSON (dataclasses, enums, sets, dates and
    pydantic models included; other objects as their ``str``, JSON-quoted). ``None`` becomes
    ``null``.
    """
    if isinstance(value, str):
        return value
    try:
        return _dumps(value)
    except (TypeError, ValueError):  # e.g. NaN-free but circular structures
        return str(value)


def _short(name: str) -> str:
    return repr(name if len(name) <= 80 else name[:80] + "...")


async def _invoke(tool: AnyTool, kwargs: dict[str, Any], ctx: ExecutionContext) -> tuple[str, str]:
    # Catches the tool's own exceptions here, inside any timeout, so a TimeoutError the
    # tool raises itself is reported as its error, not as our time limit.
    try:
        value = await tool._run(kwargs, ctx)
    except Exception as exc:
        logger.warning(
            "tool %r raised %s: %s",
            tool.name,
            type(exc).__name__,
            exc,
            exc_info=logger.isEnabledFor(logging.DEBUG),
        )
        return "error", f"Error: the tool {tool.name!r} failed: {type(exc).__name__}: {exc}"
    return "ok", result_text(value)


def _call_key(call: ToolCall) -> tuple[str, str]:
    # The loop guard's identity of a call: its name and its arguments as canonical JSON
    # (so key order and spacing do not make a repeat look new).
    try:
        args = json.dumps(json.loads(call.arguments or "{}"), sort_keys=True)
    except ValueError:
        args = call.arguments
    return call.name, args


def _refusals(
    calls: Sequence[ToolCall], policy: ToolPolicy, ctx: ExecutionContext
) -> list[tuple[str, str] | None]:
    """For each call, ``(status, text)`` when the cap or the loop guard refuses it."""
    out: list[tuple[str, str] | None] = [None] * len(calls)
    cap, same = policy.max_calls, policy.max_identical_calls
    if cap is None and same is None:
        return out
    earlier = _earlier_calls(ctx.new_messages, calls)
    made = len(earlier)
    seen = Counter(_call_key(c) for c in earlier) if same is not None else Counter()
    for i, call in enumerate(calls):
        made += 1
        if cap is not None and made > cap:
            out[i] = (
                "capped",
                f"Error: the limit of {cap} tool calls for this turn is reached; "
                f"{call.name!r} was not run. Answer with the results you already have.",
            )
            continue
        if same is not None:
            key = _call_key(call)
            seen[key] += 1
            if seen[key] > same:
                out[i] = (
                    "repeated",
                    f"Error: {call.name!r} was already called with these same arguments "
                    f"in this turn ({same} time(s)); it was not run again. Use the "
                    "earlier result above, or call it with different arguments.",
                )
    return out


def _earlier_calls(messages: Sequence[Message], current: Sequence[ToolCall]) -> list[ToolCall]:
    """The turn's tool calls before ``current`` (whose message the loop appended last)."""
    end = len(messages)
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if m.role == "assistant" and m.tool_calls:
            if tuple(m.tool_calls) == tuple(current):
                end = i
            break
    return [c for m in messages[:end] if m.role == "assistant" for c in m.tool_calls]


async def _approved(call: ToolCall, policy: ToolPolicy) -> tuple[bool, str]:
    hook = policy.approve
    assert hook is not None  # ToolPolicy refuses require_approval without approve
    try:
        if policy.approval_timeout is None:
            ok = await hook(call)
        else:
            ok = await asyncio.wait_for(hook(call), policy.approval_timeout)
    except asyncio.TimeoutError:
        return False, f"no answer within {policy.approval_timeout:g} seconds"
    except Exception as exc:
        logger.warning("approval hook failed for %r: %s: %s", call.name, type(exc).__name__, exc)
        return False, "the approval could not be asked"
    return ok is True, "the user declined"


async def _outcome(
    registry: ToolRegistry, call: ToolCall, policy: ToolPolicy, ctx: ExecutionContext
) -> tuple[str, str]:
    name = call.name
    if name in policy.blocklist:
        return "blocked", f"Error: the tool {_short(name)} is not allowed. Do not call it again."
    tool = registry.get(name)
    if tool is None:
        offered = [n for n in registry.names if n not in policy.blocklist]
        listed = ", ".join(offered[:_MAX_LISTED]) + (", ..." if len(offered) > _MAX_LISTED else "")
        return "unknown", (
            f"Error: there is no tool named {_short(name)}. Available tools: {listed or 'none'}."
        )
    try:
        kwargs = tool._convert(call.arguments)
    except ArgumentError as exc:
        if exc.kind == "json":
            return "bad_arguments", (
                f"Error: the arguments for {name!r} are {exc}. "
                "Call the tool again with a valid JSON object."
            )
        return "bad_arguments", (
            f"Error: invalid arguments for {name!r}: {exc}. "
            "Call the tool again with arguments that match its schema."
        )
    if policy.needs_approval(name):
        ok, why = await _approved(call, policy)
        if not ok:
            return "declined", (
                f"Error: the tool {name!r} needs the user's approval, and it was not given "
                f"({why}); it was not run. Do not call it again unless the user asks."
            )
    timeout = tool.timeout if tool.timeout is not None else policy.timeout
    if timeout is None:
        return await _invoke(tool, kwargs, ctx)
    try:
        return await asyncio.wait_for(_invoke(tool, kwargs, ctx), timeout)
    except asyncio.TimeoutError:
        logger.warning("tool %r timed out after %gs", name, timeout)
        return "timeout", (
            f"Error: the tool {name!r} did not finish within {timeout:g} seconds and was cancelled."
        )


#: A call's tool message and its trace record.
_Result = tuple[Message, dict[str, Any]]


async def _run_call(
    registry: ToolRegistry,
    call: ToolCall,
    policy: ToolPolicy,
    ctx: ExecutionContext,
    refused: tuple[str, str] | None = None,
) -> _Result:
    events.tool_started(ctx, call)
    started = time.perf_counter()
    if refused is not None:
        status, text = refused
    else:
        status, text = await _outcome(registry, call, policy, ctx)
    seconds = time.perf_counter() - started
    record = {"id": call.id, "name": call.name, "status": status, "seconds": seconds}
    events.tool_finished(ctx, call, status, seconds, text)
    return Message("tool", text, tool_call_id=call.id, name=call.name), record


async def _all(work: Sequence[Coroutine[Any, Any, _Result]]) -> list[_Result]:
    if len(work) <= 1:  # the common case: no task needed
        return [await w for w in work]
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(w) for w in work]
    try:
        await asyncio.wait(tasks)
    except asyncio.CancelledError:
        # The turn was cancelled: cancel every running tool and let them clean up
        # before the cancellation goes on.
        for t in tasks:
            t.cancel()
        await asyncio.wait(tasks)
        raise
    return [t.result() for t in tasks]


async def run_tool_calls(
    registry: ToolRegistry,
    calls: Sequence[ToolCall],
    policy: ToolPolicy,
    ctx: ExecutionContext,
) -> tuple[list[Message], list[dict[str, Any]]]:
    """Run ``calls`` concurrently; return their tool messages (in call order) and records.

    Each record is ``{"id", "name", "status", "seconds"}`` with status ``"ok"``,
    ``"error"``, ``"timeout"``, ``"unknown"``, ``"blocked"``, ``"bad_arguments"``,
    ``"capped"`` (past ``max_calls``), ``"repeated"`` (the loop guard) or ``"declined"``
    (not approved). Never raises for a tool's failure; cancellation cancels the running
    tools.
    """
    refusals = _refusals(calls, policy, ctx)
    results = await _all(
        [_run_call(registry, c, policy, ctx, r) for c, r in zip(calls, refusals, strict=True)]
    )
    return [m for m, _ in results], [r for _, r in results]
