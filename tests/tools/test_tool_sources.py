"""ToolRegistry with tool sources (what MCP servers are): merged live, never colliding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from promptkit_async import MockProvider, Pipeline, ProviderMiddleware, Tool, ToolError
from promptkit_async.tools import ToolRegistry, ToolSource, tool


def make(name: str) -> Tool[..., Any]:
    def f() -> str:
        return name

    return Tool(f, name=name)


class Source:
    """A minimal ToolSource whose tools a test changes by hand."""

    def __init__(self, *names: str, prefix: str = "") -> None:
        self.prefix = prefix
        self._tools = tuple(make(n) for n in names)
        self.version = 0
        self.prepared = 0

    @property
    def tools(self) -> Sequence[Tool[..., Any]]:
        return self._tools

    def set(self, *names: str) -> None:
        self._tools = tuple(make(n) for n in names)
        self.version += 1

    async def prepare(self) -> None:
        self.prepared += 1


@tool
def local() -> str:
    """A local tool."""
    return "local"


def test_sources_are_merged_live_and_bump_the_version() -> None:
    source = Source("s_a", prefix="s_")
    assert isinstance(source, ToolSource)
    registry = ToolRegistry([local, source])
    assert registry.names == ("local", "s_a")
    before = registry.version
    source.set("s_a", "s_b")
    assert registry.version > before
    assert registry.names == ("local", "s_a", "s_b")
    assert registry.get("s_b") is source.tools[1]
    assert [d.name for d in registry.definitions(exclude={"s_a"})] == ["local", "s_b"]


def test_collisions_are_refused_up_front_and_left_out_later(caplog: Any) -> None:
    with pytest.raises(ToolError, match="names are taken: local"):
        ToolRegistry([local, Source("local")])
    with pytest.raises(ToolError, match="share the tool-name prefix"):
        ToolRegistry([Source(prefix="p_"), Source(prefix="p_")])
    source = Source("x")
    registry = ToolRegistry([local, source])
    source.set("x", "local")  # the server grew a tool named like a local one
    assert registry.get("local") is local
    assert "left out" in caplog.text
    with pytest.raises(ToolError, match="already registered"):
        registry.add(make("x"))


async def test_the_tool_loop_prepares_sources_each_turn() -> None:
    source = Source("s_a")
    pipe = Pipeline(ProviderMiddleware(MockProvider(["hi", "there"]), [source]))
    await pipe.execute("s", "user", "one")
    await pipe.execute("s", "user", "two")
    assert source.prepared == 2
    await pipe.shutdown()
