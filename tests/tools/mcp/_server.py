"""A small MCP server written with the SDK's server API, for the MCP tests.

Run as a script it serves over stdio (the tests start it with ``sys.executable``);
``build()`` returns the same server for the Streamable HTTP / SSE fixtures.
"""

# No "from __future__ import annotations": older FastMCP reads the hints as objects.

import asyncio
import base64
import os
import sys
from typing import Any

try:  # mcp 2.x renamed FastMCP to MCPServer
    from mcp.server.mcpserver import Context
    from mcp.server.mcpserver import MCPServer as FastMCP
    from mcp.server.mcpserver.exceptions import ToolError
    from mcp.server.mcpserver.utilities.types import Image
except ImportError:  # pragma: no cover - mcp 1.x
    from mcp.server.fastmcp import Context, FastMCP  # type: ignore[no-redef]
    from mcp.server.fastmcp.exceptions import ToolError  # type: ignore[no-redef]
    from mcp.server.fastmcp.utilities.types import Image  # type: ignore[no-redef]

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def build(name: str = "test") -> Any:
    server = FastMCP(name, log_level="WARNING")
    notes: dict[str, str] = {}
    sleeping = [0]

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @server.tool()
    def remember(key: str, value: str) -> str:
        """Store a note under a key."""
        notes[key] = value
        return f"stored {key}"

    @server.tool()
    def recall(key: str) -> str:
        """Read the note stored under a key."""
        return notes.get(key, "nothing stored")

    @server.tool()
    def fail(reason: str) -> str:
        """Always fails with the given reason."""
        raise ToolError(f"refused: {reason}")

    @server.tool()
    async def sleep(seconds: float) -> str:
        """Sleep, then say how long."""
        sleeping[0] += 1
        try:
            await asyncio.sleep(seconds)
        finally:
            sleeping[0] -= 1
        return f"slept {seconds}"

    @server.tool()
    def sleepers() -> int:
        """How many sleep calls are running now."""
        return sleeping[0]

    @server.tool()
    async def hang() -> str:
        """Never answers."""
        await asyncio.Event().wait()
        return "unreachable"

    @server.tool()
    async def die() -> str:
        """Kills the server process in the middle of the call."""
        os._exit(3)

    @server.tool()
    def pid() -> int:
        """The server's process id."""
        return os.getpid()

    @server.tool()
    def picture() -> Image:
        """A 1x1 PNG."""
        return Image(data=PNG, format="png")

    @server.tool()
    def delete_everything(confirm: bool) -> str:
        """A destructive tool (for the approval tests)."""
        return "deleted"

    @server.tool()
    async def unlock(ctx: Context) -> str:  # type: ignore[type-arg]
        """Adds the tool 'secret' and tells the client the tool list changed."""

        def secret() -> str:
            """The secret."""
            return "42"

        server.add_tool(secret)
        await ctx.session.send_tool_list_changed()
        return "unlocked"

    return server


if __name__ == "__main__":
    build(sys.argv[1] if len(sys.argv) > 1 else "test").run("stdio")
