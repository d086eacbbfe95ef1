"""Tool calling: Python functions the model may call during a turn.

::

    from promptkit_async.tools import ToolPolicy, ToolRegistry, tool

    @tool
    async def get_weather(city: str, unit: Literal["C", "F"] = "C") -> str:
        \"\"\"Current weather for a city.

        Args:
            city: the city name, e.g. "Paris".
        \"\"\"
        return await weather_api(city, unit)

    ProviderMiddleware(provider, [get_weather], ToolPolicy(max_rounds=5, timeout=10))

:class:`Tool` wraps a function and derives the JSON schema of its parameters from its
type hints and docstring (or takes an explicit one); :class:`ToolRegistry` holds tools by
name; :class:`ToolPolicy` limits the loop that
:class:`~promptkit_async.pipeline.middleware.ProviderMiddleware` runs: model → tool calls
(concurrent, time-limited) → tool results → model, until the model answers.

A tool's failure never fails the turn: exceptions, timeouts, unknown or blocked names and
malformed arguments all come back to the model as the tool's result, so it can recover.

MCP servers' tools join the same loop: :class:`MCPServerStdio`, :class:`MCPServerHTTP`
and :class:`MCPServerSSE` (from :mod:`promptkit_async.tools.mcp`, the ``[mcp]`` extra;
imported on first use, so the library never needs the SDK otherwise) are
:class:`ToolSource` objects to pass beside local tools.
"""

from typing import TYPE_CHECKING, Any

from .._toolcalls import ToolCallAssembler
from ._registry import Tool, ToolLike, ToolPolicy, ToolRegistry, ToolSource, as_registry, tool
from ._runner import result_text, run_tool_calls

if TYPE_CHECKING:
    from .mcp import MCPServer, MCPServerHTTP, MCPServerSSE, MCPServerStdio, MCPTool

__all__ = [
    "MCPServer",
    "MCPServerHTTP",
    "MCPServerSSE",
    "MCPServerStdio",
    "MCPTool",
    "Tool",
    "ToolCallAssembler",
    "ToolLike",
    "ToolPolicy",
    "ToolRegistry",
    "ToolSource",
    "as_registry",
    "result_text",
    "run_tool_calls",
    "tool",
]

_MCP_NAMES = frozenset(("MCPServer", "MCPServerHTTP", "MCPServerSSE", "MCPServerStdio", "MCPTool"))


def __getattr__(name: str) -> Any:
    # The MCP classes load on first use (their module never imports the SDK by itself).
    if name in _MCP_NAMES:
        from . import mcp

        value = getattr(mcp, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
