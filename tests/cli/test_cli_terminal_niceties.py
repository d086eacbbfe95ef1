"""On a real terminal: line editing, input history across runs, Markdown replies; plain
output when piped, and plain everything when prompt_toolkit and rich are missing."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pexpect
import pytest

Spawn = Callable[..., pexpect.spawn]

ROOT = Path(__file__).resolve().parents[2]
# A terminal that can do everything; the test's pty does not answer cursor position
# requests, so prompt_toolkit is told not to ask.
XTERM = {"TERM": "xterm-256color", "PROMPT_TOOLKIT_NO_CPR": "1"}
TOKENS = re.compile(r"\[Tokens: (\d+) \| This: \$(\d+\.\d{6}) \| Total: \$(\d+\.\d{6})\]")
UP, LEFT, BACKSPACE = "\x1b[A", "\x1b[D", "\x7f"


def reply(child: pexpect.spawn, line: str) -> str:
    """Type ``line`` at the prompt; return what was printed between ``Bot:`` and the
    token line."""
    child.expect_exact("You:")
    child.send(line + "\r")
    child.expect_exact("Bot:")
    child.expect(TOKENS)
    return str(child.before)


def quit_chat(child: pexpect.spawn) -> str:
    child.expect_exact("You:")
    child.send("exit\r")
    child.expect(r"Total cost this session: \$\d+\.\d{6}")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    return str(child.logfile_read.getvalue())


def test_line_editing_and_history_across_runs(spawn_chat: Spawn, tmp_path: Path) -> None:
    child = spawn_chat("--store", "memory", env=XTERM)
    assert "Hello Alice!" in reply(child, "My name is Alice")
    assert "Pizza is delicious" in reply(child, "I love pizza")
    quit_chat(child)
    history = tmp_path / "input_history"  # beside the SQLite file (PROMPTKIT_CHAT_DB)
    assert "+I love pizza" in history.read_text()
    assert stat.S_IMODE(history.stat().st_mode) == 0o600  # private to its owner

    # A new run (and a new conversation): Up recalls the earlier run's lines, newest
    # first ("exit", then "I love pizza").
    child = spawn_chat("--store", "memory", env=XTERM)
    child.expect_exact("You:")
    child.send(UP + UP)
    child.expect_exact("I love pizza")
    child.send("\r")
    child.expect_exact("Bot:")
    child.expect_exact("Pizza is delicious")
    # Editing keys edit: "Bxob", two steps left, delete the x.
    text = reply(child, "My name is Bxob" + LEFT + LEFT + BACKSPACE)
    assert "Hello Bob!" in text
    quit_chat(child)


def test_no_history_keeps_no_file(spawn_chat: Spawn, tmp_path: Path) -> None:
    child = spawn_chat("--store", "memory", "--no-history", env=XTERM)
    assert "Hello Alice!" in reply(child, "My name is Alice")
    quit_chat(child)
    assert not (tmp_path / "input_history").exists()


def test_ctrl_c_at_the_prompt_and_mid_reply(spawn_chat: Spawn) -> None:
    child = spawn_chat("--store", "memory", "--demo-chunk-delay", "3600", env=XTERM)
    child.expect_exact("You:")
    child.send("half a line")
    child.sendintr()
    child.expect_exact("(Type 'exit' or press Ctrl-D to quit.)")
    # The half line is gone; the next line is read afresh. The reply is cut after its
    # first word (the next comes in an hour).
    child.expect_exact("You:")
    child.send("My name is Carol\r")
    child.expect_exact("Bot:")
    child.expect_exact("Hello")
    child.sendintr()
    child.expect_exact("[Reply cancelled; nothing of this turn was saved]")
    child.expect_exact("You:")
    child.send("/history\r")
    child.expect_exact("[No messages yet]")
    child.expect_exact("You:")
    child.sendeof()
    child.expect_exact("Goodbye!")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_markdown_on_a_terminal(spawn_chat: Spawn, fake_openai: Any) -> None:
    env = {**XTERM, "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": fake_openai.url}
    child = spawn_chat("--store", "memory", env=env)
    text = reply(child, "Say **bold** and `code` please")
    # The upstream echoes the line: rendered, the markers are gone and the word is bold.
    assert "\x1b[1mbold\x1b[0m" in text
    assert "**" not in text
    assert "`" not in text
    assert "please" in text
    assert child.match.group(0) == "[Tokens: 1100 | This: $0.000210 | Total: $0.000210]"
    quit_chat(child)


def test_piped_output_is_the_plain_stream(chat_env: dict[str, str], fake_openai: Any) -> None:
    # A capable TERM, but stdout is a pipe: exactly the text the model streamed.
    env = {**chat_env, **XTERM, "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": fake_openai.url}
    done = subprocess.run(
        [sys.executable, "-m", "promptkit_async", "--store", "memory"],
        input="Say **bold** please\n",
        env=env,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert (
        "You: \nBot: You sent 1 message(s); the first: Say **bold** please\n\n"
        "[Tokens: 1100 | This: $0.000210 | Total: $0.000210]\n\n"
    ) in done.stdout
    assert "\x1b" not in done.stdout
    assert "Tip:" not in done.stdout


def test_streamed_reasoning_shows_dimmed_above_the_answer(
    spawn_chat: Spawn, fake_openai: Any, chat_env: dict[str, str]
) -> None:
    fake_openai.reasoning = "Weighing the options carefully."
    env = {**XTERM, "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": fake_openai.url}
    child = spawn_chat("--store", "memory", env=env)
    text = reply(child, "Pick one")
    thought = text.find("Weighing the options carefully.")
    answer = text.find("You sent 1 message(s)")
    assert 0 <= thought < answer  # the reasoning first, then the answer
    assert "\x1b[2m" in text[:thought]  # dimmed
    quit_chat(child)

    # Piped, the output is the answer alone, as before.
    done = subprocess.run(
        [sys.executable, "-m", "promptkit_async", "--store", "memory"],
        input="Pick one\n",
        env={**chat_env, **env},
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "Bot: You sent 1 message(s); the first: Pick one\n" in done.stdout
    assert "Weighing" not in done.stdout


@pytest.fixture
def without_chat_extra(tmp_path: Path) -> dict[str, str]:
    """An environment in which ``import prompt_toolkit`` and ``import rich`` fail."""
    stubs = tmp_path / "stubs"
    for name in ("prompt_toolkit", "rich"):
        (stubs / name).mkdir(parents=True)
        (stubs / name / "__init__.py").write_text(f"raise ImportError('no {name} here')\n")
    return {**XTERM, "PYTHONPATH": os.pathsep.join([str(stubs), str(ROOT)])}


@pytest.mark.parametrize("how", ["missing", "--plain"])
def test_plain_terminal_without_the_extra_or_with_plain(
    spawn_chat: Spawn, fake_openai: Any, without_chat_extra: dict[str, str], how: str
) -> None:
    keys = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": fake_openai.url}
    if how == "missing":
        child = spawn_chat("--store", "memory", env={**without_chat_extra, **keys})
        child.expect_exact(
            "Tip:     pip install 'promptkit_async[chat]' (prompt_toolkit and rich) "
            "for line editing, input history and Markdown replies."
        )
    else:
        child = spawn_chat("--store", "memory", "--plain", env={**XTERM, **keys})
    child.expect_exact("You: ")
    child.sendline("Say **bold** please")
    child.expect_exact("\r\nBot: You sent 1 message(s); the first: Say **bold** please\r\n")
    child.expect_exact("[Tokens: 1100 | This: $0.000210 | Total: $0.000210]")
    child.expect_exact("You: ")
    child.sendline("exit")
    child.expect(pexpect.EOF)
    transcript = child.logfile_read.getvalue()
    assert "\x1b[" not in transcript  # no cursor movement, no styles
    if how == "--plain":
        assert "Tip:" not in transcript


# Blocks rich and prompt_toolkit, noting which module asked for them. (httpx asks for
# rich itself, for its own command line, and carries on without it.)
_BLOCKER = """
import sys

asked = []


class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] not in ("rich", "prompt_toolkit"):
            return None
        frame = sys._getframe(1)
        while frame.f_globals.get("__name__", "").startswith(("importlib", "_frozen")):
            frame = frame.f_back
        asked.append(frame.f_globals.get("__name__"))
        raise ImportError(f"{name} is blocked")


sys.meta_path.insert(0, Blocker())
import promptkit_async, promptkit_async.cli, promptkit_async.cli._chat

print(sorted({m for m in asked if m.startswith("promptkit_async")}))
"""


def test_importing_the_library_imports_neither() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _BLOCKER],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "[]"


def test_history_that_cannot_be_kept_is_said_not_fatal(spawn_chat: Spawn, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    env = {**XTERM, "PROMPTKIT_CHAT_DB": str(blocker / "chat.db")}
    child = spawn_chat("--store", "memory", env=env)
    child.expect_exact("Note:    the input history is not kept (")
    assert "Hello Alice!" in reply(child, "My name is Alice")
    quit_chat(child)
