"""Tool, the tool decorator, ToolRegistry, ToolPolicy and result_text."""

from __future__ import annotations

import datetime
import enum
import functools
import inspect
import math
import threading
from dataclasses import dataclass
from typing import Any

import pytest

import promptkit_async
from promptkit_async import ExecutionContext, Message, Tool, ToolError, ToolPolicy, ToolRegistry
from promptkit_async import tool as tool_decorator
from promptkit_async.tools import result_text, tool


async def add(a: int, b: int = 1) -> int:
    """Add two numbers."""
    return a + b


def test_public_names_are_exported() -> None:
    for name in ("Tool", "ToolCallAssembler", "ToolPolicy", "ToolRegistry", "tool"):
        assert name in promptkit_async.__all__
        assert getattr(promptkit_async, name) is getattr(promptkit_async.tools, name)
    assert tool_decorator is tool
    for name in promptkit_async.tools.__all__:
        obj = getattr(promptkit_async.tools, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):  # ToolLike is a type alias
            assert obj.__doc__, name


async def test_decorated_function_stays_callable() -> None:
    @tool
    async def double(x: int) -> int:
        """Double it."""
        return 2 * x

    assert isinstance(double, Tool)
    assert await double(4) == 8
    assert double.function.__name__ == "double"
    assert list(inspect.signature(double).parameters) == ["x"]
    assert repr(double).startswith("Tool(name='double'")


async def test_decorator_with_options() -> None:
    @tool(name="sum2", timeout=5)
    def summed(a: int, b: int) -> int:
        """Sum."""
        return a + b

    assert summed.name == "sum2"
    assert summed.timeout == 5.0
    assert summed(1, 2) == 3
    assert await summed.invoke('{"a": 1, "b": 2}') == 3


async def test_sync_tool_runs_in_a_thread_and_async_tool_on_the_loop() -> None:
    threads: list[int] = []

    def sync() -> str:
        threads.append(threading.get_ident())
        return "s"

    async def asynchronous() -> str:
        threads.append(threading.get_ident())
        return "a"

    assert await Tool(sync).invoke("{}") == "s"
    assert await Tool(asynchronous).invoke("{}") == "a"
    main = threading.get_ident()
    assert threads[0] != main
    assert threads[1] == main


async def test_partials_callable_objects_and_positional_only_parameters() -> None:
    async def scaled(factor: int, x: int) -> int:
        """Scale x."""
        return factor * x

    triple = Tool(functools.partial(scaled, 3))
    assert triple.name == "scaled"
    assert list(triple.parameters["properties"]) == ["x"]
    assert await triple.invoke('{"x": 2}') == 6

    class Counter:
        """Count words."""

        def __call__(self, text: str) -> int:
            return len(text.split())

    counter = Tool(Counter())
    assert counter.name == "Counter"
    assert counter.description == "Count words."
    assert await counter.invoke('{"text": "a b c"}') == 3

    def power(base: int, exp: int = 2, /) -> int:
        return int(base**exp)

    assert await Tool(power).invoke('{"base": 3}') == 9
    assert await Tool(power).invoke('{"base": 2, "exp": 3}') == 8


async def test_context_parameter_is_injected_and_hidden() -> None:
    async def who(ctx: ExecutionContext, name: str) -> str:
        return f"{ctx.session_id}:{name}"

    t = Tool(who)
    assert t.parameters["required"] == ["name"]
    ctx = ExecutionContext("s-1", Message("user", "hi"))
    assert await t.invoke('{"name": "x"}', ctx) == "s-1:x"
    # The model cannot set it.
    with pytest.raises(ToolError, match="unexpected property 'ctx'"):
        t.parse_arguments('{"name": "x", "ctx": 1}')


def test_invalid_names_and_timeouts() -> None:
    with pytest.raises(ToolError, match="invalid tool name 'has space'"):
        Tool(add, name="has space")
    with pytest.raises(ToolError, match="invalid tool name"):
        Tool(add, name="x" * 65)
    with pytest.raises(ToolError, match="positive number of seconds"):
        Tool(add, timeout=0)
    with pytest.raises(ToolError, match="must be a callable"):
        Tool(42)  # type: ignore[arg-type]
    assert Tool(add, timeout=math.inf).timeout is None


def test_registry_holds_tools_by_name() -> None:
    registry = ToolRegistry([add])
    assert "add" in registry
    assert len(registry) == 1
    assert registry["add"].function is add
    assert registry.get("nope") is None
    version = registry.version

    @registry.register(description="Multiply.")
    def mul(a: int, b: int) -> int:
        return a * b

    @registry.register
    async def neg(a: int) -> int:
        """Negate."""
        return -a

    assert isinstance(mul, Tool)
    assert registry.names == ("add", "mul", "neg")
    assert [t.name for t in registry] == ["add", "mul", "neg"]
    assert registry.version != version
    assert [d.name for d in registry.definitions(exclude={"mul"})] == ["add", "neg"]
    assert registry.definitions()[1].description == "Multiply."
    registry.remove("mul")
    assert registry.names == ("add", "neg")
    with pytest.raises(KeyError):
        registry.remove("mul")
    assert repr(registry) == "ToolRegistry(['add', 'neg'])"


def test_duplicate_names_are_refused() -> None:
    registry = ToolRegistry([add])
    with pytest.raises(ToolError, match="already registered; pass name="):
        registry.add(add)
    registry.add(Tool(add, name="add2"))
    assert registry.names == ("add", "add2")


def test_policy_defaults_and_validation() -> None:
    policy = ToolPolicy()
    assert policy.max_rounds == 10
    assert policy.tool_choice is None
    assert policy.blocklist == frozenset()
    assert policy.timeout == 30.0
    assert ToolPolicy(blocklist=["a", "b"]).blocklist == frozenset({"a", "b"})
    assert ToolPolicy(timeout=None).timeout is None
    assert ToolPolicy(tool_choice="required").tool_choice == "required"
    with pytest.raises(ToolError, match="at least 1"):
        ToolPolicy(max_rounds=0)
    with pytest.raises(ToolError, match="must be an int"):
        ToolPolicy(max_rounds=2.5)  # type: ignore[arg-type]
    with pytest.raises(ToolError, match="blocklist=\\{'danger'\\}"):
        ToolPolicy(blocklist="danger")
    with pytest.raises(ToolError, match="positive number of seconds"):
        ToolPolicy(timeout=-1)
    with pytest.raises(ToolError, match="tool_choice must be"):
        ToolPolicy(tool_choice="not a name")
    with pytest.raises(ToolError, match="tool names"):
        ToolPolicy(blocklist=[1])  # type: ignore[list-item]


class Mood(enum.Enum):
    HAPPY = "happy"


@dataclass
class Reading:
    value: float
    mood: Mood
    at: datetime.date


class Model:
    """Looks like a pydantic model."""

    def model_dump(self, mode: str = "python") -> dict[str, Any]:
        return {"mode": mode}


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("plain", "plain"),
        (None, "null"),
        (3, "3"),
        ({"a": [1, 2]}, '{"a": [1, 2]}'),
        ({"ü": "é"}, '{"ü": "é"}'),
        (
            Reading(1.5, Mood.HAPPY, datetime.date(2024, 5, 1)),
            '{"value": 1.5, "mood": "happy", "at": "2024-05-01"}',
        ),
        ({1, 2}, "[1, 2]"),
        (Model(), '{"mode": "json"}'),
        (object, "\"<class 'object'>\""),  # anything else: its str, as a JSON string
    ],
)
def test_result_text(value: Any, text: str) -> None:
    assert result_text(value) == text
