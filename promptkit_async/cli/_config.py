"""Command-line options and the pieces they select: provider, store, session id."""

from __future__ import annotations

import argparse
import datetime
import getpass
import importlib
import os
import sys
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

from .._version import __version__
from ..errors import StoreError
from ..providers.base import Provider
from ..providers.demo import DemoProvider
from ..statestore.base import StateStore
from ..statestore.memory import InMemoryStateStore

__all__ = [
    "DEFAULT_MODELS",
    "KEY_VARIABLES",
    "UsageError",
    "build_parser",
    "build_provider",
    "default_db_path",
    "default_session_id",
    "open_store",
]

PROVIDERS = ("openai", "anthropic", "gemini", "ollama", "demo")
#: The database of ``--store postgres`` without ``--postgres-url`` or ``$DATABASE_URL``.
DEFAULT_POSTGRES_URL = "postgresql://localhost/postgres"
#: The model each provider uses when ``--model`` is not given.
DEFAULT_MODELS: Mapping[str, str] = {
    "openai": "gpt-4o-mini",
    "anthropic": "claude-haiku-4-5",
    "gemini": "gemini-2.5-flash",
    "ollama": "llama3.2",
    "demo": "demo",
}
#: Where each hosted provider's API key is read from, first match wins.
KEY_VARIABLES: Mapping[str, tuple[str, ...]] = {
    "openai": ("OPENAI_API_KEY",),
    "anthropic": ("ANTHROPIC_API_KEY",),
    "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
}
# Seconds between the demo model's streamed words: enough to see streaming, not to wait.
DEMO_CHUNK_DELAY = 0.03


class UsageError(Exception):
    """The command line asked for something that cannot work (exit status 2).

    Internal to the CLI: ``main`` turns it into a message, it never reaches library users.
    """


def default_session_id(env: Mapping[str, str]) -> str:
    """``SESSION_ID`` if set, else ``chat-<user>-<YYYY-MM-DD>`` (one conversation a day)."""
    if env.get("SESSION_ID"):
        return env["SESSION_ID"]
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name (e.g. in a container with no passwd entry)
        user = ""
    return f"chat-{user or 'guest'}-{datetime.date.today().isoformat()}"


def default_db_path(env: Mapping[str, str]) -> Path:
    """Where the embedded SQLite store lives unless ``--db`` says otherwise.

    ``PROMPTKIT_CHAT_DB`` if set; else ``promptkit-chat/chat.db`` in the user's data
    directory: ``$XDG_DATA_HOME`` or ``~/.local/share`` on Linux,
    ``~/Library/Application Support`` on macOS, ``%LOCALAPPDATA%`` on Windows.
    """
    if env.get("PROMPTKIT_CHAT_DB"):
        return Path(env["PROMPTKIT_CHAT_DB"]).expanduser()
    if sys.platform == "win32":
        base = Path(env.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(env.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "promptkit-chat" / "chat.db"


def _nonnegative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive number of tokens")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``promptkit-chat`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="promptkit-chat",
        description=(
            "A streaming multi-turn chatbot on promptkit_async. With no API key it runs an "
            "offline demo model; conversations are kept in an embedded SQLite file, so "
            "restarting with the same session continues where you left off."
        ),
        epilog=(
            "In the chat: 'exit' quits, 'clear' (or /clear) forgets the conversation, "
            "/history shows it, /system <prompt> sets a persona, /image PATH or /file PATH "
            "attaches a file to your next message, /help lists commands. "
            "Ctrl-C stops the reply being written (nothing of it is saved); Ctrl-D quits."
        ),
    )
    parser.add_argument(
        "--session",
        help="conversation id (default: $SESSION_ID, else chat-<user>-<date>)",
    )
    parser.add_argument(
        "--store",
        choices=("sqlite", "memory", "redis", "postgres"),
        default="sqlite",
        help="where conversations live (default: sqlite, an embedded file)",
    )
    parser.add_argument(
        "--db",
        type=Path,
        help="SQLite file (default: $PROMPTKIT_CHAT_DB, else promptkit-chat/chat.db in "
        "your user data directory, e.g. ~/.local/share)",
    )
    parser.add_argument(
        "--redis-url",
        help="Redis server for --store redis (default: $REDIS_URL, else localhost:6379)",
    )
    parser.add_argument(
        "--postgres-url",
        help="PostgreSQL database for --store postgres, postgresql://user:password@host/db "
        f"(default: $DATABASE_URL, else {DEFAULT_POSTGRES_URL}); needs the [postgres] extra",
    )
    parser.add_argument(
        "--provider",
        choices=PROVIDERS,
        help="model provider (default: the first with an API key set: openai, anthropic, "
        "gemini; else the offline demo model)",
    )
    parser.add_argument("--model", help="model name (default depends on the provider)")
    parser.add_argument("--system", metavar="PROMPT", help="system prompt (persona)")
    parser.add_argument(
        "--max-context-tokens",
        type=_positive_int,
        metavar="N",
        help="send at most N tokens of history per turn (older messages are trimmed)",
    )
    parser.add_argument(
        "--max-tokens",
        type=_positive_int,
        default=1024,
        metavar="N",
        help="cap on each reply's length in tokens (default: 1024)",
    )
    parser.add_argument(
        "--mcp",
        action="append",
        default=[],
        metavar='"COMMAND ARGS"',
        help="start an MCP server with this command line and offer its tools to the model "
        "(repeatable; needs the [mcp] extra)",
    )
    parser.add_argument(
        "--mcp-url",
        action="append",
        default=[],
        metavar="URL",
        help="offer the tools of the MCP server at this URL: Streamable HTTP, or the older "
        "SSE transport for a URL ending in /sse (repeatable)",
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="print each turn's OpenTelemetry spans (model calls, tools, store) to stderr; "
        "needs opentelemetry-sdk (pip install 'promptkit-async[otel]' opentelemetry-sdk)",
    )
    parser.add_argument(
        "--plain",
        action="store_true",
        help="plain input and output even on a terminal: no line editing, no Markdown",
    )
    parser.add_argument(
        "--no-history",
        action="store_true",
        help="do not keep the lines you type in a history file (by default they are kept "
        "in input_history beside the SQLite file, for the Up arrow in later runs)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # Pacing of the demo model's stream; tests slow it down to interrupt a reply midway.
    parser.add_argument(
        "--demo-chunk-delay", type=_nonnegative, default=None, help=argparse.SUPPRESS
    )
    return parser


def _key(name: str, env: Mapping[str, str]) -> str | None:
    for variable in KEY_VARIABLES.get(name, ()):
        if env.get(variable):
            return env[variable]
    return None


def choose_provider(requested: str | None, env: Mapping[str, str]) -> str:
    """The provider to use: the one asked for, else the first with a key, else demo."""
    if requested:
        return requested
    for name in ("openai", "anthropic", "gemini"):
        if _key(name, env):
            return name
    return "demo"


def _load(module: str, name: str) -> Callable[..., Any]:
    try:
        found: Callable[..., Any] = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise UsageError(
            f"{module}.{name} is not available in this installation ({exc}); "
            "use --provider demo, or upgrade promptkit_async"
        ) from exc
    return found


def build_provider(
    name: str, model: str | None, env: Mapping[str, str], *, demo_chunk_delay: float | None
) -> Provider:
    """Create the provider ``name`` with ``model`` (or its default).

    Raises:
        UsageError: its API key is missing, or it is not installed.
    """
    model = model or DEFAULT_MODELS[name]
    if name == "demo":
        delay = demo_chunk_delay
        if delay is None:
            delay = float(env.get("PROMPTKIT_DEMO_CHUNK_DELAY") or DEMO_CHUNK_DELAY)
        return DemoProvider(chunk_delay=delay, model=model)
    if name == "ollama":
        ollama = _load("promptkit_async.providers.presets", "ollama")
        provider: Provider = ollama(model)
        return provider
    key = _key(name, env)
    if key is None:
        variables = " or ".join(KEY_VARIABLES[name])
        raise UsageError(
            f"--provider {name} needs an API key: set {variables}, "
            "or leave out --provider to use the offline demo model"
        )
    module, cls = {
        "openai": ("promptkit_async.providers.openai", "OpenAIProvider"),
        "anthropic": ("promptkit_async.providers.anthropic", "AnthropicProvider"),
        "gemini": ("promptkit_async.providers.gemini", "GeminiProvider"),
    }[name]
    kwargs: dict[str, Any] = {"api_key": key}
    if name == "openai" and env.get("OPENAI_BASE_URL"):
        kwargs["base_url"] = env["OPENAI_BASE_URL"]
    created: Provider = _load(module, cls)(model, name=name, **kwargs)
    return created


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and banners)."""
    if "@" not in url:
        return url
    parts = urlsplit(url if "://" in url else f"redis://{url}")
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


async def _open_sqlite(path: Path) -> StateStore | None:
    try:
        module = importlib.import_module("promptkit_async.statestore")
        sqlite_store = module.SQLiteStateStore
    except (ImportError, AttributeError):
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    store: StateStore = sqlite_store(str(path))
    return store


async def _open_redis(url: str) -> StateStore:
    try:
        redis_store = importlib.import_module("promptkit_async.statestore").RedisStateStore
    except (ImportError, AttributeError) as exc:
        raise StoreError("the Redis store is not available in this installation") from exc
    # connect() checks the server answers: an unreachable one is found now.
    store: StateStore = await redis_store.connect(url)
    return store


async def _open_postgres(url: str) -> StateStore:
    try:
        postgres_store = importlib.import_module("promptkit_async.statestore").PostgresStateStore
    except (ImportError, AttributeError) as exc:
        raise StoreError(
            "the PostgreSQL store needs asyncpg: pip install 'promptkit_async[postgres]'"
        ) from exc
    # connect() checks the server answers (and creates the tables): failures show now.
    store: StateStore = await postgres_store.connect(url)
    return store


async def open_store(
    kind: str,
    db: Path,
    redis_url: str,
    say: Callable[[str], None],
    postgres_url: str = "",
) -> tuple[StateStore, str]:
    """Open the store ``kind``, falling back as the tutorial does; returns it and a label.

    Redis or PostgreSQL that cannot be reached falls back to the embedded SQLite store
    (saying why); an installation without SQLite support falls back to memory.
    """
    servers = {
        "postgres": ("PostgreSQL", _open_postgres, postgres_url or DEFAULT_POSTGRES_URL),
        "redis": ("Redis", _open_redis, redis_url),
    }
    if kind in servers:
        name, opener, url = servers[kind]
        try:
            return await opener(url), f"{kind} at {redact_url(url)}"
        except (StoreError, OSError) as exc:
            say(
                f"{name} unavailable at {redact_url(url)} ({exc}); "
                f"using the embedded SQLite store at {db} instead."
            )
            kind = "sqlite"
    if kind == "sqlite":
        store = await _open_sqlite(db)
        if store is not None:
            return store, f"sqlite at {db}"
        say("The SQLite store is not available in this installation; using memory instead.")
    return InMemoryStateStore(), "memory (forgotten when you quit)"


def warn(out: TextIO, text: str) -> None:
    """Print a one-line notice."""
    print(text, file=out, flush=True)


def environment() -> dict[str, str]:
    """A copy of the process environment (tests pass their own mapping instead)."""
    return dict(os.environ)


def build_mcp_servers(commands: list[str], urls: list[str], stack: AsyncExitStack) -> list[Any]:
    """The MCP servers of ``--mcp`` / ``--mcp-url``, not yet connected.

    Their stderr goes to the null device (it would garble the chat); ``stack`` closes it.

    Raises:
        UsageError: a command line or URL is unusable.
    """
    if not commands and not urls:
        return []
    from ..errors import ToolError
    from ..tools import mcp

    errlog = stack.enter_context(open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115

    servers: list[Any] = []
    names: set[str] = set()
    try:
        for line in commands:
            servers.append(mcp.MCPServerStdio.from_command_line(line, errlog=errlog))
        for url in urls:
            kind = (
                mcp.MCPServerSSE
                if urlsplit(url).path.rstrip("/").endswith("/sse")
                else (mcp.MCPServerHTTP)
            )
            servers.append(kind(url))
    except ToolError as exc:
        raise UsageError(str(exc)) from exc
    # Two servers of one name would get one prefix: number the later ones.
    for i, server in enumerate(servers):
        if server.name in names:
            server.name = f"{server.name}{i + 1}"
            server.prefix = f"{server.name}_"
        names.add(server.name)
    return servers
