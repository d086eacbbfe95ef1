"""Every ```python block in docs/ and README.md runs, page by page.

The convention (documented on the docs' home page): the blocks of one page run in order
in one namespace, like notebook cells, so a block may use what an earlier block on the
same page defined. Each block that reads input gets the tutorial's conversation on
stdin. No API keys are set, so examples take their documented offline fallback
(DemoProvider). Other fences (```bash, ```text) are not run.
"""

from __future__ import annotations

import asyncio
import io
import re
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```python[^\n]*\n(?P<code>.*?)^(?P=indent)```[ \t]*$", re.M | re.S
)
CONVERSATION = "My name is Alice\nWhat's my name?\nI love pizza\nWhat food do I love?\nexit\n"

# What certain pages must print: proof that their examples did what the text says.
EXPECTED_OUTPUT = {
    "docs/tutorial/multi-turn.md": ["Your name is Alice", "You mentioned that you love pizza"],
    "docs/index.md": ["Your name is Alice."],
    "docs/getting-started.md": ["Hello Alice!", "Your name is Alice.", "4 messages stored"],
    "docs/tutorial/mcp.md": [
        "weather_server_get_weather - The current temperature (Celsius) and sky in a city.",
        "Bot: The tool said: 64.4",
        "['user', 'assistant', 'tool', 'assistant', 'user', 'assistant', 'tool', 'assistant']",
        "MCPToolCallError: Error executing tool get_weather: no weather station in Atlantis",
        "The model wants to run weather_get_weather",
        "needs the user's approval",
        "MCPServerHTTP(name='docs', url='https://mcp.example.com/mcp')",
    ],
    "docs/how-to/structured-output.md": [
        "City Oslo 709000",
        '{"name": "Oslo", "population": 709000}',
        "positive",
        "parsed: name='Bergen' population=291000",
        'raw: {"name": "Oslo", "population": "lots"}',
        "why: population: Input should be a valid integer",
        "stored: 0",
    ],
    "docs/how-to/content-parts.md": [
        "image_url\nimage\n['inlineData']\nUnsupportedContentError - Anthropic messages cannot "
        "carry audio",
        "['ThinkingPart', 'TextPart'] - It is 18C in Paris.",
    ],
    "docs/how-to/observability.md": [
        "model call: 17 tokens",
        "chat gpt-4o-mini 9\n",
        "invoke_agent promptkit 9\nPOST /chat",
        "key [REDACTED] never shows",
    ],
}


def blocks(page: Path) -> list[tuple[int, str]]:
    """The page's python blocks with the line each starts on, dedented."""
    text = page.read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        indent = match.group("indent")
        code = "".join(
            line[len(indent) :] if line.startswith(indent) else line
            for line in match.group("code").splitlines(keepends=True)
        )
        found.append((text.count("\n", 0, match.start("code")) + 1, code))
    return found


def page_id(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


RUNNABLE = [p for p in PAGES if blocks(p)]


def test_pages_have_examples() -> None:
    # Guards the extraction itself: if the pattern broke, nothing would be run.
    names = {page_id(p) for p in RUNNABLE}
    assert {"README.md", "docs/tutorial/multi-turn.md", "docs/how-to/testing.md"} <= names


@pytest.mark.parametrize("page", RUNNABLE, ids=page_id)
def test_page_examples_run(
    page: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    docs_redis: tuple[str, bool],
) -> None:
    """Offline: no keys, so the examples use DemoProvider; their output is checked."""
    run_page(page, tmp_path, monkeypatch, docs_redis)
    out = capsys.readouterr().out
    for expected in EXPECTED_OUTPUT.get(page_id(page), []):
        assert expected in out, f"{page_id(page)} should print {expected!r}"
    if docs_redis[1]:
        assert "unavailable" not in out, "with a Redis server running, no fallback is taken"


@pytest.mark.parametrize("page", RUNNABLE, ids=page_id)
def test_page_examples_run_with_an_openai_key(
    page: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    docs_redis: tuple[str, bool],
    fake_openai: Any,
) -> None:
    """With OPENAI_API_KEY set, the examples' real-provider path runs (against loopback)."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-docs-test")
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.url)
    run_page(page, tmp_path, monkeypatch, docs_redis, keep_keys=True)
    if any("OPENAI_API_KEY" in code for _, code in blocks(page)):
        assert fake_openai.requests, f"{page_id(page)} never called the OpenAI server"


def run_page(
    page: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    docs_redis: tuple[str, bool],
    *,
    keep_keys: bool = False,
) -> None:
    """Run the page's blocks in order in one namespace, each with the conversation on stdin."""
    name = page_id(page)
    for variable in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY"):
        if not (keep_keys and variable == "OPENAI_API_KEY"):
            monkeypatch.delenv(variable, raising=False)
    redis_url, _ = docs_redis
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("REDIS_ADDR", redis_url)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__main__"}
    for line, code in blocks(page):
        monkeypatch.setattr(sys, "stdin", io.StringIO(CONVERSATION))
        compiled = compile(code, f"{page}:{line}", "exec")
        try:
            exec(compiled, namespace)
        except Exception as exc:
            raise AssertionError(f"the example at {name}:{line} failed: {exc!r}") from exc
        # A block must not leave an event loop behind for the next one.
        with pytest.raises(RuntimeError):
            asyncio.get_running_loop()
