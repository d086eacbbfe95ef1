"""The interactive chat loop: read a line, stream the reply, show tokens and cost."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import TextIO

from ..errors import PromptKitError
from ..pipeline import ExecutionContext, Next, Pipeline
from ..statestore.base import StateStore, TurnStore
from ..tools import ToolRegistry
from ..types import ContentPart, Message, MessageContent, StreamChunk, TextPart, ToolCall
from ._attach import (
    ATTACHMENTS_KEY,
    Attachment,
    AttachmentError,
    Kind,
    describe_content,
    read_attachment,
)
from ._terminal import PlainReplies, PromptInput, Replies

__all__ = ["Chat", "LineReader", "Persona", "name_attachments"]

HELP = """\
Commands:
  exit              quit (also /exit, /quit or Ctrl-D)
  clear, /clear     forget this conversation and start again
  /history          show the conversation so far
  /system <prompt>  set the bot's persona (system prompt); /system alone shows it,
                    /system off removes it
  /tools            list the tools the model may call (from --mcp / --mcp-url)
  /image PATH       attach an image (PNG, JPEG, GIF, WebP) to your next message
  /file PATH        attach a file: an image, a PDF, a text file or audio
  /audio PATH       attach audio (WAV, MP3, OGG, FLAC)
  /detach           drop the attachments not sent yet
  /help             this list
Ctrl-C while the bot is answering stops that reply; nothing of it is saved."""

_ATTACH: dict[str, Kind] = {"/image": "image", "/file": "file", "/audio": "audio"}

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


async def name_attachments(ctx: ExecutionContext, next: Next) -> AsyncIterator[StreamChunk]:
    """Middleware keeping the names of a turn's attachments with its input message.

    The chat passes the names in the turn's metadata (``ATTACHMENTS_KEY``); they go to
    the stored message's metadata (never sent to the model), for ``/history``.
    """
    names = ctx.metadata.get(ATTACHMENTS_KEY)
    if names:
        old = ctx.input
        named = replace(old, metadata={**old.metadata, ATTACHMENTS_KEY: list(names)})
        ctx.messages[:] = [named if m is old else m for m in ctx.messages]
        ctx.new_messages[:] = [named if m is old else m for m in ctx.new_messages]
        ctx.input = named
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
        store: the pipeline's store (for ``clear``, ``/history``, the persona and, when
            it is a :class:`~promptkit_async.statestore.base.TurnStore`, the session's
            total cost from its ledger, which survives restarts).
        persona: the pipeline's :class:`Persona` layer.
        session_id: the conversation.
        stdin / stdout: where lines come from and output goes.
        tools: the pipeline's tools, for ``/tools``.
        prompt: line editing for a terminal (:class:`PromptInput`); ``None`` reads plain
            lines from ``stdin``.
        replies: how replies are shown (default: plain text as it streams).

    One chat runs in one task; its pipeline and store may be shared with other code.
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
        prompt: PromptInput | None = None,
        replies: Replies | None = None,
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
        self._prompt = prompt
        self._replies: Replies = replies or PlainReplies(self._out)
        self._attachments: list[Attachment] = []
        self._ledger = isinstance(store, TurnStore)
        self._turns = 0  # turns stored since the chat started or last cleared the session

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
        if self._prompt is not None:
            return  # the prompt reads Ctrl-C as a key (KeyboardInterrupt), not a signal
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
        if self._prompt is None:
            self._reader = LineReader(self._stdin)
        try:
            with self._sigint():
                await self._loop()
        finally:
            if self._reader is not None:
                self._reader.close()
        total = await self.session_total()
        self.write(f"\nTotal cost this session: ${total:.6f}\nGoodbye!\n")

    async def _readline(self) -> str | None:
        if self._prompt is None:
            assert self._reader is not None
            self.write("You: ")
            return await self._reader.readline()
        while True:
            try:
                return await self._prompt.readline("You: ")
            except KeyboardInterrupt:
                self.write("(Type 'exit' or press Ctrl-D to quit.)\n")

    async def _loop(self) -> None:
        while True:
            line = await self._readline()
            if line is None:  # Ctrl-D
                if self._prompt is None:
                    self.write("\n")  # end the prompt's line (the prompt ends its own)
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
            elif command in _ATTACH:
                await self.attach(_ATTACH[command], text[len(command) :])
            elif command == "/detach":
                self.detach()
            elif command in ("/help", "help", "/?"):
                self.write(HELP + "\n\n")
            elif command.startswith("/"):
                self.write(f"Unknown command {command}; /help lists the commands.\n\n")
            else:
                await self.turn(text)

    async def session_total(self) -> float:
        """The session's total cost: from the store's ledger when it keeps one (so it
        counts earlier runs too, since the session was last cleared), else the sum of
        this run's turns."""
        if self._ledger:
            try:
                ledger = await self.store.get_ledger(self.session_id)  # type: ignore[attr-defined]
            except PromptKitError:
                pass  # a store that cannot answer now: this run's sum is still right
            else:
                # A ledger that missed this run's turns (a pipeline storing them with
                # plain appends) is not the session's total.
                if ledger.turns >= self._turns:
                    return float(ledger.cost_usd)
        return self.total_cost

    async def attach(self, kind: Kind, argument: str) -> None:
        """Read a file for the next message (``kind``: image, file or audio) and say so."""
        try:
            attachment = await read_attachment(kind, argument)
        except AttachmentError as exc:
            self.write(f"[Not attached: {exc}]\n\n")
            return
        self._attachments.append(attachment)
        self.write(f"[Attached {attachment.describe()}; it goes with your next message]\n\n")

    def detach(self) -> None:
        """Drop the attachments not sent yet."""
        if not self._attachments:
            self.write("[No attachments]\n\n")
            return
        names = ", ".join(a.name for a in self._attachments)
        self._attachments.clear()
        self.write(f"[Dropped: {names}]\n\n")

    async def turn(self, text: str) -> None:
        """Send ``text`` (with the files attached since the last message), stream the
        reply, then print tokens and cost.

        Ctrl-C (or cancelling) stops the reply; the turn is then not stored. Attachments
        go with this one message whatever its outcome.
        """
        try:
            before = await self.store.count(self.session_id)
        except PromptKitError as exc:
            self.write(f"Error: {exc}\n\n")
            return
        attachments, self._attachments = self._attachments, []
        content: MessageContent = text
        metadata: dict[str, object] | None = None
        if attachments:
            parts: list[ContentPart] = [TextPart(text), *(a.part for a in attachments)]
            content = parts
            metadata = {ATTACHMENTS_KEY: [a.name for a in attachments]}
        stream = self._stream(content, metadata)
        self._reply = reply = asyncio.get_running_loop().create_task(stream)
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

    async def _stream(self, content: MessageContent, metadata: dict[str, object] | None) -> None:
        assert self.pipeline is not None, "Chat.pipeline is set before the chat runs"
        replies = self._replies
        replies.begin()
        try:
            async with self.pipeline.stream(
                self.session_id, "user", content, metadata=metadata
            ) as chunks:
                async for chunk in chunks:
                    if chunk.thinking:
                        replies.think(chunk.thinking)
                    if chunk.delta:
                        replies.add(chunk.delta)
                result = chunks.result
        except PromptKitError as exc:
            replies.end()
            self.write(f"\nError: {exc}\n\n")
            return
        finally:
            replies.end()  # also on cancellation: what arrived stays on screen
        if result is None:  # pragma: no cover - the pipeline always ends with a result
            return
        self.total_cost += result.cost.total_cost
        self._turns += 1
        total = await self.session_total()
        replies.status(
            f"[Tokens: {result.usage.total_tokens} | This: ${result.cost.total_cost:.6f}"
            f" | Total: ${total:.6f}]"
        )

    async def show_tool_call(self, call: ToolCall) -> bool:
        """Show a tool call as it starts (the tool loop's approval hook; always yes)."""
        arguments = call.arguments if len(call.arguments) <= 200 else call.arguments[:200] + "..."
        self._replies.note(f"\n[tool: {call.name} {arguments}]\n")
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
        self._turns = 0  # the ledger went with the session
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
            content = message.content
            if not isinstance(content, str):
                content = describe_content(content, message.metadata)
            self.write(f"  {names[message.role]}: {content}\n")
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
