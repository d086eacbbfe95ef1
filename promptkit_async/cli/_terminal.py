"""The chat's input and output: plain streams, or a terminal with line editing and Markdown.

Two independent choices, made once when the chat starts (:func:`terminal_features`):

* **input**: prompt_toolkit's async prompt (line editing, a persistent input history) when
  stdin and stdout are both terminals; otherwise :class:`~promptkit_async.cli._chat.LineReader`
  reads plain lines (pipes, scripts, tests);
* **output**: replies rendered as Markdown by rich when stdout is a terminal; otherwise
  the text exactly as the model streams it.

Both libraries are optional (``pip install 'promptkit_async[chat]'``) and imported only
here, only when chosen: without them, or with ``--plain`` or ``TERM=dumb``, the chat is
plain. Nothing in this module is imported by ``import promptkit_async``.
"""

from __future__ import annotations

import importlib
import io
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

__all__ = [
    "MarkdownReplies",
    "PlainReplies",
    "PromptInput",
    "Replies",
    "TerminalFeatures",
    "terminal_features",
]

#: What the chat prints when the reply streams as plain text.
BOT = "\nBot: "


@dataclass(frozen=True, slots=True)
class TerminalFeatures:
    """Which terminal niceties this run uses, and which are missing for want of a library."""

    line_editing: bool = False
    markdown: bool = False
    missing: tuple[str, ...] = ()


def _installed(module: str) -> bool:
    # Imported, not just found: a broken installation counts as missing. Only asked on
    # a terminal, so pipes and scripts never pay for the import.
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def terminal_features(
    stdin: TextIO, stdout: TextIO, env: Mapping[str, str], *, plain: bool = False
) -> TerminalFeatures:
    """Decide the niceties: line editing needs stdin and stdout on a terminal, Markdown
    stdout; both need their library, a terminal that is not ``TERM=dumb``, and no ``plain``."""
    if plain or env.get("TERM") == "dumb":
        return TerminalFeatures()
    out_tty = _isatty(stdout)
    in_tty = out_tty and _isatty(stdin)
    editing = in_tty and _installed("prompt_toolkit")
    markdown = out_tty and _installed("rich")
    missing = tuple(
        name
        for name, wanted, have in (
            ("prompt_toolkit", in_tty, editing),
            ("rich", out_tty, markdown),
        )
        if wanted and not have
    )
    return TerminalFeatures(editing, markdown, missing)


# --- input ---------------------------------------------------------------------------


class PromptInput:
    """Lines read with prompt_toolkit's async prompt: editing keys, and Up/Down to recall
    earlier lines, kept in ``history_file`` across runs (in memory only when ``None``).

    The file is created readable by its owner only (a chat history is private). Ctrl-C
    at the prompt raises :class:`KeyboardInterrupt` from :meth:`readline`; the caller's
    own SIGINT handler stays installed (the prompt does not replace it).
    """

    def __init__(self, history_file: Path | None) -> None:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import FileHistory, InMemoryHistory, ThreadedHistory

        history: Any
        if history_file is None:
            history = InMemoryHistory()
        else:
            history_file.parent.mkdir(parents=True, exist_ok=True)
            if not history_file.exists():
                os.close(os.open(history_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
            # Loaded in a thread: a long history does not hold up the first prompt.
            history = ThreadedHistory(FileHistory(str(history_file)))
        self._session: Any = PromptSession(history=history)

    async def readline(self, prompt: str) -> str | None:
        """The next line, or ``None`` at Ctrl-D. Raises KeyboardInterrupt at Ctrl-C."""
        try:
            line: str = await self._session.prompt_async(
                prompt, handle_sigint=False, set_exception_handler=False
            )
        except EOFError:
            return None
        return line


# --- output --------------------------------------------------------------------------


class Replies(Protocol):
    """Where a streamed reply goes: ``begin``, ``add`` per chunk, ``end`` (always)."""

    def begin(self) -> None: ...
    def add(self, delta: str) -> None: ...
    def think(self, text: str) -> None: ...
    def end(self) -> None: ...
    def note(self, text: str) -> None: ...
    def status(self, text: str) -> None: ...


class PlainReplies:
    """The reply as the model streams it, flushed chunk by chunk (pipes, plain terminals)."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def _write(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()

    def begin(self) -> None:
        """Print the ``Bot:`` label."""
        self._write(BOT)

    def add(self, delta: str) -> None:
        """Print a chunk."""
        self._write(delta)

    def think(self, text: str) -> None:
        """Reasoning is left out: plain output (a pipe) carries the answer alone."""

    def end(self) -> None:
        """Nothing to finish."""

    def note(self, text: str) -> None:
        """Print a line in the middle of a reply (a tool call starting)."""
        self._write(text)

    def status(self, text: str) -> None:
        """Print the token line after the reply."""
        self._write(f"\n\n{text}\n\n")


# Settle leading blocks only past this many characters of unsettled text: short replies
# render whole (cheap), long ones stay cheap per redraw.
_SETTLE_AFTER = 2000
# A blank line, then a paragraph or a heading (not a list, quote, table, rule or fence,
# which may continue or change how the block before renders).
_NEXT_BLOCK = re.compile(r"\n\n(?=#{1,6} |(?![-*+>|] |\d+[.)] |[-*_]{3}|```|~~~)[^\s])")
_LINK_ID = re.compile(r"\x1b\]8;id=[^;]*;")
_FENCE = re.compile(r"^ {0,3}(```|~~~)", re.MULTILINE)


def _text(lines: list[str]) -> Any:
    """Rendered lines as one rich ``Text``, empty lines (a last one too) kept."""
    from rich.text import Text

    return Text("\n").join(Text.from_ansi(line) for line in lines)


def _boundary(text: str) -> int | None:
    """Where the last complete block of ``text`` ends (outside code fences), if anywhere."""
    last = None
    for match in _NEXT_BLOCK.finditer(text):
        if len(_FENCE.findall(text, 0, match.start())) % 2 == 0:
            last = match.start()
    return last


class MarkdownReplies:
    """The reply rendered as Markdown by rich while it streams.

    The text so far is re-rendered at most every ``interval`` seconds, and only after
    ``pace`` times as long as the last redraw took (so by default rendering takes at
    most a fifth of the time, however slow it gets). Rendered lines above the last
    ``window`` are printed once, for good; only the last few are redrawn in place (a
    ``rich.live.Live`` region), so a reply taller than the screen scrolls normally.
    Once the text is long, its complete leading blocks (paragraphs, headings, closed
    code blocks) are settled: printed and no longer re-rendered, so a redraw costs about
    the same however long the reply (rendering 4 KB of Markdown takes ~20 ms, 40 KB
    ~160-400 ms).

    Used from one task; rendering runs in it (no thread).
    """

    def __init__(self, out: TextIO, *, interval: float = 0.05, pace: float = 4.0) -> None:
        from rich.console import Console

        self._console: Any = Console(file=out, highlight=False, soft_wrap=False)
        self._interval = interval
        self._pace = pace
        self._text = ""
        self._thought = ""  # reasoning streamed before the answer, not yet printed
        self._printed = 0
        self._live: Any = None
        self._last = 0.0
        self._delay = interval
        self._tried: int | None = None  # the last block boundary _settle() looked at

    def begin(self) -> None:
        """Print the ``Bot:`` label and open the live region."""
        from rich.live import Live
        from rich.text import Text

        self._text, self._printed, self._last, self._delay = "", 0, 0.0, self._interval
        self._tried, self._thought = None, ""
        self._console.print()
        self._console.print("Bot:", style="bold", markup=False)
        self._live = Live(
            Text(""),
            console=self._console,
            auto_refresh=False,  # no refresh thread: redrawn from add(), in this task
            redirect_stdout=False,
            redirect_stderr=False,
            vertical_overflow="visible",
        )
        self._live.start()

    def _lines(self, text: str) -> list[str]:
        from rich.console import Console
        from rich.markdown import Markdown

        buffer = io.StringIO()
        console = Console(
            file=buffer,
            force_terminal=True,
            color_system=self._console.color_system,
            width=self._console.width,
            highlight=False,
        )
        console.print(Markdown(text))
        # Paragraphs come padded to the full width: drop the (unstyled) padding. Links
        # carry a random id per render: drop it, so equal text renders to equal lines.
        rendered = _LINK_ID.sub("\x1b]8;;", buffer.getvalue())
        return [line.rstrip(" ") for line in rendered.splitlines()]

    def _render(self, final: bool) -> None:

        lines = self._lines(self._text)
        if not final and len(self._text) > _SETTLE_AFTER:
            lines = self._settle(lines)
        # Keep the redrawn tail shorter than the screen: the live region can only be
        # redrawn while all of it is visible.
        window = max(3, min(30, self._console.height - 4))
        settled = len(lines) if final else max(self._printed, len(lines) - window)
        if settled > self._printed:
            self._live.console.print(_text(lines[self._printed : settled]))
            self._printed = settled
        self._live.update(_text(lines[settled:]), refresh=True)

    def _settle(self, lines: list[str]) -> list[str]:
        """Print the complete blocks before the last block boundary for good and keep
        only the rest as the text to render; returns the rest's lines.

        Only when rendering the two parts apart gives exactly the lines of the whole
        (a blank line between): otherwise (a list or table going on, say) nothing changes.
        """

        cut = _boundary(self._text)
        if cut is None or cut == self._tried:
            return lines
        self._tried = cut
        head = self._lines(self._text[:cut])
        n = len(head) + 1  # and the blank line between blocks
        rest = self._text[cut:].lstrip("\n")
        if (
            lines[: n - 1] != head
            or len(lines) <= n
            or lines[n - 1]
            or self._lines(rest) != lines[n:]
        ):
            return lines
        if self._printed < n:
            self._live.console.print(_text(lines[self._printed : n]))
            self._printed = n
        self._printed -= n
        self._text, self._tried = rest, None
        return lines[n:]

    def think(self, text: str) -> None:
        """Take a piece of the model's reasoning: shown dimmed in the live region while
        it streams, then printed for good above the answer once the answer begins."""
        from rich.text import Text

        self._thought += text
        now = time.monotonic()
        if self._live is None or self._text or now - self._last < self._delay:
            return
        self._live.update(Text(self._thought, style="dim"), refresh=True)
        self._last = now

    def _print_thought(self) -> None:
        from rich.text import Text

        thought, self._thought = self._thought, ""
        self._live.update(Text(""), refresh=False)
        self._live.console.print(Text(thought.strip("\n"), style="dim"))

    def add(self, delta: str) -> None:
        """Take a chunk; redraw if the last redraw is old enough."""
        if self._thought and self._live is not None:
            self._print_thought()
        self._text += delta
        now = time.monotonic()
        if self._live is None or now - self._last < self._delay:
            return
        self._render(final=False)
        took = time.monotonic() - now
        self._last = time.monotonic()
        self._delay = max(self._interval, self._pace * took)

    def end(self) -> None:
        """Render the whole reply and close the live region (also after an error or
        cancellation: what arrived stays on screen)."""
        live = self._live
        if live is None:
            return
        try:
            if self._thought:
                self._print_thought()  # reasoning and no answer (cut off, say)
            if self._text:
                self._render(final=False)  # the tail stays in the region stop() leaves
        finally:
            self._live = None
            live.stop()

    def note(self, text: str) -> None:
        """Print a line in the middle of a reply (a tool call starting): the reply so far
        is rendered for good first, so the line lands after it."""
        if self._live is not None and self._text:
            self._render(final=True)
            self._text, self._printed, self._tried = "", 0, None
        console = self._live.console if self._live is not None else self._console
        console.print(text.strip("\n"), markup=False, style="dim")

    def status(self, text: str) -> None:
        """Print the token line, dimmed."""
        self._console.print()
        self._console.print(text, style="dim", markup=False)
        self._console.print()
