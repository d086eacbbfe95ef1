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
    """Every line the terminal shows, scrolled off the top or not, without blank ones."""
    emulated = pyte.HistoryScreen(COLUMNS, LINES, history=10_000)
    stream = pyte.Stream(emulated)
    stream.feed(output.replace("\n", "\r\n"))  # a tty's output processing adds the CRs
    rows = ["".join(line[x].data for x in range(COLUMNS)) for line in emulated.history.top] + list(
        emulated.display
    )
    return [row.rstrip() for row in rows if row.strip()]


def stream_words(replies: MarkdownReplies | PlainReplies, text: str) -> None:
    replies.begin()
    for word in text.split(" "):
        replies.add(word + " ")
    replies.end()


def test_a_long_reply_shows_every_line_once_in_order(terminal: Terminal) -> None:
    # Three screens of list items, streamed word by word and redrawn at every word.
    items = [f"- item **{i}** of the list" for i in range(60)]
    replies = MarkdownReplies(terminal, interval=0)
    stream_words(replies, "Here is the list:\n\n" + "\n".join(items))
    replies.status("[Tokens: 1 | This: $0.000000 | Total: $0.000000]")
    shown = screen(terminal.getvalue())
    assert shown[0] == "Bot:"
    assert shown[1] == "Here is the list:"
    assert shown[2:62] == [f" • item {i} of the list" for i in range(60)]
    assert shown[62:] == ["[Tokens: 1 | This: $0.000000 | Total: $0.000000]"]
    assert "\x1b[1m" in terminal.getvalue()  # the numbers were bold


def test_a_tool_call_lands_after_the_text_before_it(terminal: Terminal) -> None:
    replies = MarkdownReplies(terminal, interval=0)
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
