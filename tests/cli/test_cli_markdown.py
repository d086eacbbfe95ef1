"""Streamed Markdown replies, checked on an emulated terminal screen (pyte): what the
reader ends up seeing, after every redraw of the live region."""

from __future__ import annotations

import io

import pyte
import pytest

from promptkit_async.cli._terminal import MarkdownReplies, PlainReplies

COLUMNS, LINES = 60, 20


class Terminal(io.StringIO):
    """Output that says it is a terminal, so rich styles it and redraws in place."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> Terminal:
    monkeypatch.setenv("COLUMNS", str(COLUMNS))
    monkeypatch.setenv("LINES", str(LINES))
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.delenv("NO_COLOR", raising=False)
    return Terminal()


def screen(output: str) -> list[str]:
    """Every line the terminal shows, scrolled off the top or not (blank lines within
    kept, the empty rows above and below dropped)."""
    emulated = pyte.HistoryScreen(COLUMNS, LINES, history=10_000)
    stream = pyte.Stream(emulated)
    stream.feed(output.replace("\n", "\r\n"))  # a tty's output processing adds the CRs
    rows = ["".join(line[x].data for x in range(COLUMNS)) for line in emulated.history.top] + list(
        emulated.display
    )
    shown = [row.rstrip() for row in rows]
    while shown and not shown[-1]:
        shown.pop()
    while shown and not shown[0]:
        shown.pop(0)
    return shown


def stream_words(replies: MarkdownReplies | PlainReplies, text: str, sep: str = " ") -> None:
    replies.begin()
    for word in text.split(sep):
        replies.add(word + sep)
    replies.end()


def test_a_long_reply_shows_every_line_once_in_order(terminal: Terminal) -> None:
    # Three screens of list items, streamed line by line and redrawn at every line.
    items = [f"- item **{i}** of the list" for i in range(60)]
    replies = MarkdownReplies(terminal, interval=0, pace=0)  # redrawn at every chunk
    stream_words(replies, "Here is the list:\n\n" + "\n".join(items), "\n")
    replies.status("[Tokens: 1 | This: $0.000000 | Total: $0.000000]")
    shown = screen(terminal.getvalue())
    assert shown[:3] == ["Bot:", "Here is the list:", ""]
    assert shown[3:63] == [f" • item {i} of the list" for i in range(60)]
    assert shown[63:] == ["", "[Tokens: 1 | This: $0.000000 | Total: $0.000000]"]
    assert "\x1b[1m" in terminal.getvalue()  # the numbers were bold


def test_a_tool_call_lands_after_the_text_before_it(terminal: Terminal) -> None:
    replies = MarkdownReplies(terminal, interval=0, pace=0)  # redrawn at every chunk
    replies.begin()
    replies.add("Let me *check* that.")
    replies.note("\n[tool: weather {}]\n")
    replies.add("It is **sunny**.")
    replies.end()
    assert screen(terminal.getvalue()) == [
        "Bot:",
        "Let me check that.",
        "[tool: weather {}]",
        "It is sunny.",
    ]


def test_a_cut_reply_keeps_what_arrived(terminal: Terminal) -> None:
    # end() runs in a finally when the reply is cancelled: the words so far stay, and
    # the text held back by the redraw interval is rendered too.
    replies = MarkdownReplies(terminal, interval=3600)
    replies.begin()
    replies.add("Hello ")
    replies.add("there, ")
    replies.end()
    assert screen(terminal.getvalue()) == ["Bot:", "Hello there,"]


def test_plain_replies_are_the_stream_itself() -> None:
    out = io.StringIO()
    replies = PlainReplies(out)
    stream_words(replies, "Some **bold** text")
    replies.note("\n[tool: x {}]\n")
    replies.status("[Tokens: 1]")
    assert out.getvalue() == "\nBot: Some **bold** text \n[tool: x {}]\n\n\n[Tokens: 1]\n\n"


LONG = "\n\n".join(
    [
        "# A long answer",
        *(
            block
            for i in range(30)
            for block in (
                f"## Part {i}",
                f"Paragraph {i} has **bold**, `code` and a [link](https://example.com/{i}) "
                "and goes on long enough to wrap over several lines of the terminal, "
                "as replies from real models do.",
                f"- point {i}.a\n- point {i}.b",
                f"```python\nprint({i})\n```",
                f"| n | square |\n|---|---|\n| {i} | {i * i} |",
            )
        ),
        "That is all.",
    ]
)


def test_a_long_reply_settles_and_still_shows_what_one_render_shows(
    terminal: Terminal,
) -> None:
    from rich.console import Console
    from rich.markdown import Markdown

    reference = Terminal()
    Console(file=reference).print(Markdown(LONG))
    replies = MarkdownReplies(terminal, interval=0, pace=0)  # redrawn at every chunk
    replies.begin()
    for i in range(0, len(LONG), 100):
        replies.add(LONG[i : i + 100])
    # Most of the reply was settled (printed for good, no longer re-rendered).
    assert len(LONG) > 8000
    assert len(replies._text) < 2500
    replies.end()
    assert screen(terminal.getvalue()) == ["Bot:", *screen(reference.getvalue())]


@pytest.mark.parametrize(
    "block",
    [
        "- point a\n- point b",
        "1. first\n2. second",
        "| n | square |\n|---|---|\n| 2 | 4 |",
        "> a quote",
        "---",
        "```python\nprint(1)\n```",
        "## A heading",
    ],
)
def test_settling_never_changes_what_is_shown(terminal: Terminal, block: str) -> None:
    # Long enough to settle, with ``block`` last when it does: the blocks that may go on
    # or change the spacing before them are not cut off.
    text = "\n\n".join(f"Paragraph {i} " + "word " * 40 for i in range(10))
    reference = Terminal()
    from rich.console import Console
    from rich.markdown import Markdown

    Console(file=reference).print(Markdown(f"{text}\n\n{block}\n\nThe end."))
    replies = MarkdownReplies(terminal, interval=0, pace=0)
    replies.begin()
    replies.add(f"{text}\n\n{block}")
    replies.add("\n\nThe end.")
    replies.end()
    assert screen(terminal.getvalue()) == ["Bot:", *screen(reference.getvalue())]
