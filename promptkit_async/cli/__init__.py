"""``promptkit-chat``: the tutorial's complete chatbot, ready to run.

Run ``promptkit-chat`` (or ``python -m promptkit_async``) and start typing. Replies
stream as they are written, each followed by ``[Tokens: N | This: $x | Total: $y]``.
Conversations are stored in an embedded SQLite file by default, so starting again with
the same ``--session`` continues the conversation. With no API key set (and no
``--provider``) it talks to :class:`~promptkit_async.providers.demo.DemoProvider`, an
offline rule-based model, so it works anywhere. ``promptkit-chat --help`` lists the
options.

``/image PATH``, ``/file PATH`` and ``/audio PATH`` attach a file to the next message
(as content parts). On a terminal, with the ``chat`` extra installed
(``pip install 'promptkit_async[chat]'``), lines are edited with prompt_toolkit (Up
recalls earlier lines, kept in ``input_history`` beside the SQLite file) and replies are
rendered as Markdown by rich; piped, or without the extra, input and output are plain.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from typing import TextIO

from ..errors import InvalidRequestError, PromptKitError
from ..events import Listener
from ..pipeline import Middleware, Pipeline
from ..pipeline.middleware import ProviderMiddleware, ProviderMiddlewareConfig, StateMiddleware
from ..providers import GenerationConfig
from ..tools import ToolPolicy, ToolRegistry
from ._chat import PERSONA_KEY, Chat, Persona, name_attachments
from ._config import (
    KEY_VARIABLES,
    UsageError,
    build_mcp_servers,
    build_parser,
    build_provider,
    choose_provider,
    default_db_path,
    default_session_id,
    environment,
    open_store,
)
from ._terminal import MarkdownReplies, PromptInput, Replies, terminal_features

__all__ = ["main"]

# The lines typed at the prompt, beside the SQLite file (whatever the store).
HISTORY_FILE = "input_history"


def _context_window(
    max_tokens: int | None, model: str, reserve: int, out: TextIO
) -> Middleware | None:
    """A ContextWindowMiddleware for ``model``: ``max_tokens`` if given, else the model's
    known window; ``None`` when neither is known (everything is then sent).

    Raises:
        UsageError: ``max_tokens`` was given but cannot be honoured.
    """
    middleware = importlib.import_module("promptkit_async.pipeline.middleware")
    window = getattr(middleware, "ContextWindowMiddleware", None)
    if window is None:
        if max_tokens:
            print(
                "Note: --max-context-tokens needs ContextWindowMiddleware, which this "
                "installation lacks; the whole history will be sent.",
                file=out,
            )
        return None
    try:
        layer: Middleware = window(max_tokens, reserve_output_tokens=reserve, model=model)
    except InvalidRequestError as exc:
        if max_tokens:
            raise UsageError(f"--max-context-tokens {max_tokens}: {exc}") from exc
        return None  # a model with no known window and no budget given: send everything
    return layer


def _tracing(stack: AsyncExitStack) -> Listener:
    """An OpenTelemetry listener printing spans to stderr (``--trace``).

    Raises:
        UsageError: OpenTelemetry's SDK is not installed.
    """
    try:
        from ..telemetry import OpenTelemetryListener, console_tracing

        provider = console_tracing(sys.stderr)
    except ImportError as exc:
        raise UsageError(f"--trace: {exc}") from None
    stack.callback(provider.shutdown)
    return OpenTelemetryListener(tracer_provider=provider, metrics=False)


async def _amain(argv: Sequence[str] | None, env: Mapping[str, str], out: TextIO) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    session_id = args.session or default_session_id(env)
    db = args.db or default_db_path(env)
    redis_url = args.redis_url or env.get("REDIS_URL") or "localhost:6379"
    postgres_url = args.postgres_url or env.get("DATABASE_URL") or ""
    name = choose_provider(args.provider, env)

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    async with AsyncExitStack() as stack:
        try:
            provider = build_provider(name, args.model, env, demo_chunk_delay=args.demo_chunk_delay)
        except UsageError as exc:
            parser.print_usage(sys.stderr)
            print(f"promptkit-chat: error: {exc}", file=sys.stderr)
            return 2
        stack.push_async_callback(provider.aclose)
        try:
            store, store_label = await open_store(args.store, db, redis_url, say, postgres_url)
        except PromptKitError as exc:
            print(f"promptkit-chat: error: could not open the store: {exc}", file=sys.stderr)
            return 1
        stack.push_async_callback(store.aclose)

        try:
            history = await store.count(session_id)
            metadata = await store.get_metadata(session_id)
        except PromptKitError as exc:
            print(f"promptkit-chat: error: {exc}", file=sys.stderr)
            return 1
        persona = Persona(metadata.get(PERSONA_KEY))
        if args.system:
            persona.prompt = args.system
            await store.merge_metadata(session_id, {PERSONA_KEY: args.system})

        layers: list[Middleware] = [StateMiddleware(store), name_attachments, persona]
        try:
            window = _context_window(args.max_context_tokens, provider.model, args.max_tokens, out)
        except UsageError as exc:
            print(f"promptkit-chat: error: {exc}", file=sys.stderr)
            return 2
        if window is not None:
            layers.append(window)
        try:
            servers = build_mcp_servers(args.mcp, args.mcp_url, stack)
        except UsageError as exc:
            parser.print_usage(sys.stderr)
            print(f"promptkit-chat: error: {exc}", file=sys.stderr)
            return 2
        for server in servers:
            stack.push_async_callback(server.aclose)
        tools = ToolRegistry(servers) if servers else None
        config = ProviderMiddlewareConfig(GenerationConfig(max_tokens=args.max_tokens))
        features = terminal_features(sys.stdin, out, env, plain=args.plain)
        prompt = None
        if features.line_editing:
            try:
                prompt = PromptInput(None if args.no_history else db.parent / HISTORY_FILE)
            except OSError as exc:
                say(f"Note:    the input history is not kept ({exc}).")
                prompt = PromptInput(None)
        replies: Replies | None = MarkdownReplies(out) if features.markdown else None
        chat = Chat(
            None,
            store,
            persona,
            session_id,
            stdout=out,
            tools=tools,
            prompt=prompt,
            replies=replies,
        )
        policy = ToolPolicy(require_approval={"*"}, approve=chat.show_tool_call)
        layers.append(ProviderMiddleware(provider, tools, policy, config=config))
        listeners: list[Listener] = []
        if args.trace:
            try:
                listeners.append(_tracing(stack))
            except UsageError as exc:
                print(f"promptkit-chat: error: {exc}", file=sys.stderr)
                return 2
        pipeline = Pipeline(*layers, listeners=listeners)
        chat.pipeline = pipeline
        stack.push_async_callback(pipeline.shutdown)

        say("=== promptkit-chat ===")
        state = f"continuing, {history} message(s)" if history else "new"
        say(f"Session: {session_id} ({state})")
        say(f"Store:   {store_label}")
        if name == "demo":
            keys = ", ".join(v[0] for v in KEY_VARIABLES.values())
            priced = f", priced as {provider.model}" if provider.model != "demo" else ""
            say(f"Model:   demo (an offline, rule-based demo model{priced})")
            say("  It knows only what this conversation tells it: try 'My name is Alice',")
            say("  then 'What's my name?'. For a real model set one of")
            say(f"  {keys}, or pass --provider ollama.")
        else:
            say(f"Model:   {provider.model} via {name}")
        if persona.prompt:
            say(f"Persona: {persona.prompt}")
        for server in servers:
            try:
                await server.connect()
            except PromptKitError as exc:
                say(f"MCP:     {server.name}: not connected ({exc}); retried on first use")
            else:
                say(f"MCP:     {server.name}: {len(server.tools)} tool(s), /tools lists them")
        if features.missing:
            say(
                f"Tip:     pip install 'promptkit_async[chat]' ({' and '.join(features.missing)})"
                " for line editing, input history and Markdown replies."
            )
        say(
            "Commands: 'exit' to quit, 'clear' to reset the conversation, /help for more. "
            "Ctrl-C stops a reply.\n"
        )
        await chat.run()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chatbot; returns the exit status (0 on a normal exit).

    Args:
        argv: the arguments (default ``sys.argv[1:]``).
    """
    try:
        return asyncio.run(_amain(argv, environment(), sys.stdout))
    except KeyboardInterrupt:
        # Ctrl-C before the chat started (or where loop signal handlers are unsupported).
        print("\nInterrupted.", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output was piped into something that quit (``| head``): stop quietly, and keep
        # Python from complaining again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
