"""MCP result mapping, tool naming and the optional-extra import, without a server."""

from __future__ import annotations

import base64
import subprocess
import sys

import pytest

from promptkit_async.errors import ToolError
from promptkit_async.tools.mcp import MCPServerStdio, _local_name, result_text


def test_text_blocks_are_kept_in_order() -> None:
    result = {"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    assert result_text(result) == (False, "a\nb")


def test_structured_content_is_used_when_there_is_no_text() -> None:
    assert result_text({"content": [], "structuredContent": {"t": 21.5}}) == (False, '{"t": 21.5}')
    both = {"content": [{"type": "text", "text": "21.5 C"}], "structuredContent": {"t": 21.5}}
    assert result_text(both) == (False, "21.5 C")


def test_images_audio_and_resources() -> None:
    png = base64.b64encode(b"x" * 1234).decode()
    result = {
        "content": [
            {"type": "image", "data": png, "mimeType": "image/png"},
            {
                "type": "audio",
                "data": base64.b64encode(b"y" * 10).decode(),
                "mimeType": "audio/wav",
            },
            {"type": "resource", "resource": {"uri": "file:///a.txt", "text": "file text"}},
            {
                "type": "resource",
                "resource": {"uri": "file:///b.bin", "blob": png, "mimeType": "application/zip"},
            },
            {"type": "resource_link", "uri": "file:///c", "name": "c", "description": "the c"},
        ]
    }
    assert result_text(result)[1].splitlines() == [
        "[image: image/png, 1234 bytes]",
        "[audio: audio/wav, 10 bytes]",
        "file text",
        "[resource file:///b.bin: application/zip, 1234 bytes]",
        "[resource link: c <file:///c>: the c]",
    ]


def test_errors_and_empty_results() -> None:
    assert result_text({"content": [{"type": "text", "text": "bad"}], "isError": True}) == (
        True,
        "bad",
    )
    assert result_text({"content": []}) == (False, "(the tool returned no content)")


def test_local_names_are_valid_and_unique() -> None:
    assert _local_name("fs_", "read.file", set()) == "fs_read_file"
    long = _local_name("p_", "x" * 100, set())
    assert len(long) <= 64
    assert long != _local_name("p_", "x" * 99, set())
    assert _local_name("p_", "a.b", {"p_a_b"}) != "p_a_b"


def test_constructor_checks() -> None:
    with pytest.raises(ToolError, match="not the string"):
        MCPServerStdio("python", "server.py")  # type: ignore[arg-type]
    from promptkit_async.tools import MCPServerHTTP

    with pytest.raises(ToolError, match="http"):
        MCPServerHTTP("ftp://example.com")
    assert MCPServerStdio("python", ["-u", "servers/weather.py"]).prefix == "weather_"
    assert MCPServerStdio.from_command_line("npx -y '@x/server fs'").args == ("-y", "@x/server fs")


def test_the_library_imports_without_loading_the_sdk() -> None:
    code = (
        "import sys, promptkit_async, promptkit_async.tools as t\n"
        "from promptkit_async.tools import MCPServerStdio\n"
        "assert t.MCPServerStdio is MCPServerStdio\n"
        "print(sorted(m for m in sys.modules if m == 'mcp' or m.startswith('mcp.')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


async def test_connecting_without_the_sdk_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "mcp", None)  # as if it were not installed
    server = MCPServerStdio("python", ["server.py"])
    with pytest.raises(ToolError, match=r"promptkit-async\[mcp\]"):
        await server.connect()
    await server.aclose()
