"""The interactive chat loop: read a line, stream the reply, show tokens and cost."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from typing import TextIO

from ..errors import PromptKitError
from ..pipeline import ExecutionContext, Next, Pipeline
from ..statestore.base import StateStore
from ..tools import ToolRegistry
from ..types import Message, StreamChunk, ToolCall

__all__ = ["Chat", "LineReader", "Persona"]

HELP = """\
Commands:
  exit              quit (also /exit, /quit or Ctrl-D)
  clear, /clear     forget this conversation and start again
  /history          show the conversation so far
  /system <prompt>  set the bot's persona (system prompt); /system alone shows it,
                    /system off removes it
  /tools            list the tools the model may call (from --mcp / --mcp-url)
  /help             this list
Ctrl-C while the bot is answering stops that reply; nothing of it is saved."""

# The persona is kept with the session (in its metadata), so a restart keeps it too.
PERSONA_KEY = "promptkit_chat.system_prompt"


class Persona:
    """Middleware that puts the session's system prompt in front of what the model sees.

    Sits after ``StateMiddleware``; the prompt is sent every turn but never stored in
    the history, so changing it does not rewrite the conversation.
    """

    __slots__ = ("prompt",)

    def __init__(self, prompt: str | None = None) -> None:
        self.prompt = prompt

    async def __call__(self, ctx: ExecutionContext, next: Next) -> AsyncIterator[StreamChunk]:
        if self.prompt:
            ctx.messages.insert(0, Message("system", self.prompt))
        async for chunk in next(ctx):
            yield chunk


class LineReader:
    """Reads lines from a file descriptor without blocking the event loop.

    On POSIX the loop watches the descriptor (a terminal in canonical mode delivers whole
    lines, so no thread and no terminal changes are needed). Where that is impossible
    (Windows, or stdin redirected from a regular file) a worker thread reads instead.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._eof = False
        self._waiter: asyncio.Future[None] | None = None
        self._fd: int | None = None
        try:
            fd = stream.fileno()
            self._loop.add_reader(fd, self._readable)
        except (AttributeError, OSError, ValueError, NotImplementedError):
            return
        self._fd = fd

    def _readable(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._buffer += data
        else:
            self._eof = True
            self._loop.remove_reader(self._fd)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def discard_pending(self) -> None:
        """Forget a partly typed line (after Ctrl-C at the prompt)."""
        if b"\n" not in self._buffer:
            self._buffer.clear()

    async def readline(self) -> str | None:
        """The next line without its newline, or ``None`` at end of input."""
        if self._fd is None:
            line = await asyncio.to_thread(self._stream.readline)
            return line.rstrip("\r\n") if line else None
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                raw = bytes(self._buffer[:newline])
                del self._buffer[: newline + 1]
                return self._decoder.decode(raw).rstrip("\r")
            if self._eof:
                if not self._buffer:
                    return None
                raw = bytes(self._buffer)
                self._buffer.clear()
                return self._decoder.decode(raw, final=True)
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def close(self) -> None:
        """Stop watching the descriptor."""
        if self._fd is not None and not self._eof:
            self._loop.remove_reader(self._fd)
            self._eof = True


class Chat:
    """One interactive chat session on a terminal (or any pair of text streams).

    Args:
        pipeline: the pipeline turns run through (state first, provider last).
        store: the pipeline's store (for ``clear``, ``/history`` and the persona).
        persona: the pipeline's :class:`Persona` layer.
        session_id: the conversation.
        stdin / stdout: where lines come from and output goes.
        tools: the pipeline's tools, for ``/tools``.
    """

    def __init__(
        self,
        pipeline: Pipeline | None,
        store: StateStore,
        persona: Persona,
        session_id: str,
        *,
        stdin: TextIO | None = None,
        stdout: TextIO | None = None,
        tools: ToolRegistry | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.tools = tools
        self.store = store
        self.persona = persona
        self.session_id = session_id
        self.total_cost = 0.0
        self._stdin = stdin or sys.stdin
        self._out = stdout or sys.stdout
        self._reply: asyncio.Task[None] | None = None
        self._reader: LineReader | None = None

    def write(self, text: str) -> None:
        """Write ``text`` and flush, so streamed words appear as they arrive."""
        self._out.write(text)
        self._out.flush()

    # --- Ctrl-C ---------------------------------------------------------------------

    def _interrupt(self) -> None:
        reply = self._reply
        if reply is not None and not reply.done():
            reply.cancel()
            return
        if self._reader is not None:
            self._reader.discard_pending()
        self.write("\n(Type 'exit' or press Ctrl-D to quit.)\nYou: ")

    @contextlib.contextmanager
    def _sigint(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGINT, self._interrupt)
        except (NotImplementedError, RuntimeError, ValueError):
            # No loop signal handlers here (Windows, or not the main thread): Ctrl-C then
            # ends the whole program the default way.
            yield
            return
        try:
            yield
        finally:
            loop.remove_signal_handler(signal.SIGINT)

    # --- the loop ---------------------------------------------------------------------

    async def run(self) -> None:
        """Chat until ``exit`` or end of input, then print the session's total cost."""
        self._reader = LineReader(self._stdin)
        try:
            with self._sigint():
                await self._loop(self._reader)
        finally:
            self._reader.close()
        self.write(f"\nTotal cost this session: ${self.total_cost:.6f}\nGoodbye!\n")

    async def _loop(self, reader: LineReader) -> None:
        while True:
            self.write("You: ")
            line = await reader.readline()
            if line is None:  # Ctrl-D
                self.write("\n")
                return
            text = line.strip()
            if not text:
                continue
            command = text.split(maxsplit=1)[0].lower()
            if command in ("exit", "quit", "/exit", "/quit"):
                return
            if command in ("clear", "/clear"):
                await self.clear()
            elif command == "/history":
                await self.history()
            elif command == "/tools":
                self.list_tools()
            elif command == "/system":
                await self.system(text[len(command) :].strip())
            elif command in ("/help", "help", "/?"):
                self.write(HELP + "\n\n")
            elif command.startswith("/"):
                self.write(f"Unknown command {command}; /help lists the commands.\n\n")
            else:
                await self.turn(text)

    async def turn(self, text: str) -> None:
        """Send ``text``, stream the reply, then print tokens and cost.

        Ctrl-C (or cancelling) stops the reply; the turn is then not stored.
        """
        try:
            before = await self.store.count(self.session_id)
        except PromptKitError as exc:
            self.write(f"Error: {exc}\n\n")
            return
        self._reply = reply = asyncio.get_running_loop().create_task(self._stream(text))
        try:
            await asyncio.wait((reply,))
        except asyncio.CancelledError:
            reply.cancel()
            await asyncio.wait((reply,))
            raise
        finally:
            self._reply = None
        if not reply.cancelled():
            reply.result()  # re-raise anything unexpected (say, a closed stdout)
            return
        # The store says what happened: a save that had begun is finished, not cut.
        try:
            saved = await self.store.count(self.session_id) > before
        except PromptKitError:
            saved = False
        if saved:
            self.write("\n[Reply interrupted after it was saved]\n\n")
        else:
            self.write("\n[Reply cancelled; nothing of this turn was saved]\n\n")

    async def _stream(self, text: str) -> None:
        self.write("\nBot: ")
        assert self.pipeline is not None, "Chat.pipeline is set before the chat runs"
        try:
            async with self.pipeline.stream(self.session_id, "user", text) as chunks:
                async for chunk in chunks:
                    if chunk.delta:
                        self.write(chunk.delta)
                result = chunks.result
        except PromptKitError as exc:
            self.write(f"\nError: {exc}\n\n")
            return
        if result is None:  # pragma: no cover - the pipeline always ends with a result
            return
        self.total_cost += result.cost.total_cost
        self.write(
            f"\n\n[Tokens: {result.usage.total_tokens} | This: ${result.cost.total_cost:.6f}"
            f" | Total: ${self.total_cost:.6f}]\n\n"
        )

    async def show_tool_call(self, call: ToolCall) -> bool:
        """Show a tool call as it starts (the tool loop's approval hook; always yes)."""
        arguments = call.arguments if len(call.arguments) <= 200 else call.arguments[:200] + "..."
        self.write(f"\n[tool: {call.name} {arguments}]\n")
        return True

    def list_tools(self) -> None:
        """Print the tools on offer, with the first line of each description."""
        tools = list(self.tools) if self.tools is not None else []
        if not tools:
            self.write(
                '[No tools. Start with --mcp "COMMAND ARGS" or --mcp-url URL to add some]\n\n'
            )
            return
        self.write(f"[{len(tools)} tool(s)]\n")
        for t in tools:
            about = t.description.strip().splitlines()[0] if t.description.strip() else ""
            self.write(f"  {t.name}" + (f" - {about}" if about else "") + "\n")
        self.write("\n")

    async def clear(self) -> None:
        """Forget the conversation (the persona stays)."""
        await self.store.delete(self.session_id)
        if self.persona.prompt:
            await self.store.merge_metadata(self.session_id, {PERSONA_KEY: self.persona.prompt})
        self.write("\n[Conversation cleared]\n\n")

    async def history(self) -> None:
        """Print the stored conversation."""
        messages = await self.store.load(self.session_id)
        if not messages:
            self.write("[No messages yet]\n\n")
            return
        names = {"user": "You", "assistant": "Bot", "system": "System", "tool": "Tool"}
        self.write(f"[{len(messages)} message(s) in session {self.session_id}]\n")
        for message in messages:
            self.write(f"  {names[message.role]}: {message.content}\n")
        self.write("\n")

    async def system(self, prompt: str) -> None:
        """Show, set or (with ``off``) remove the persona."""
        if not prompt:
            current = self.persona.prompt or "(none)"
            self.write(f"System prompt: {current}\n\n")
            return
        if prompt.lower() in ("off", "none", "-"):
            self.persona.prompt = None
            await self.store.merge_metadata(self.session_id, {PERSONA_KEY: None})
            self.write("[System prompt removed]\n\n")
            return
        self.persona.prompt = prompt
        await self.store.merge_metadata(self.session_id, {PERSONA_KEY: prompt})
        self.write("[System prompt set]\n\n")
