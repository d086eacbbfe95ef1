"""The chatbot driven through a real pseudo-terminal: typing, Ctrl-C, Ctrl-D, restarts."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

import pexpect
import pytest

Spawn = Callable[..., pexpect.spawn]

TOKENS = re.compile(r"\[Tokens: (\d+) \| This: \$(\d+\.\d{6}) \| Total: \$(\d+\.\d{6})\]")


def say(child: pexpect.spawn, text: str, reply: str) -> int:
    """Type ``text`` at the prompt, wait for ``reply`` and its token line; return tokens."""
    child.expect_exact("You: ")
    child.sendline(text)
    child.expect_exact(f"Bot: {reply}")
    child.expect(TOKENS)
    return int(child.match.group(1))


def finish(child: pexpect.spawn, how: str = "exit") -> str:
    """Quit with ``exit`` or Ctrl-D; return what was printed after the last prompt."""
    child.expect_exact("You: ")
    if how == "exit":
        child.sendline("exit")
    else:
        child.sendeof()
    child.expect(r"Total cost this session: \$\d+\.\d{6}")
    child.expect_exact("Goodbye!")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    return str(child.before)


def test_tutorial_conversation_remembers_name_and_food(spawn_chat: Spawn) -> None:
    child = spawn_chat("--store", "memory", "--session", "tutorial")
    child.expect_exact("Session: tutorial (new)")
    child.expect_exact("demo")  # the banner says it is a demo model...
    child.expect_exact("OPENAI_API_KEY")  # ...and how to use a real one
    first = say(child, "My name is Alice", "Hello Alice! It's nice to meet you.")
    second = say(child, "What's my name?", "Your name is Alice.")
    say(child, "I love pizza", "That's great! Pizza is delicious.")
    fourth = say(child, "What food do I love?", "You mentioned that you love pizza!")
    # Each turn sends the whole history, so token counts grow with the conversation.
    assert first < second < fourth
    finish(child)


def test_token_line_shows_running_total_for_a_priced_model(spawn_chat: Spawn) -> None:
    # The demo model is free; a priced model name makes the running total visible.
    child = spawn_chat("--store", "memory", "--model", "gpt-4o-mini")
    child.expect_exact("You: ")
    child.sendline("Hello")
    child.expect(TOKENS)
    this1, total1 = float(child.match.group(2)), float(child.match.group(3))
    child.expect_exact("You: ")
    child.sendline("My name is Bob")
    child.expect(TOKENS)
    this2, total2 = float(child.match.group(2)), float(child.match.group(3))
    assert this1 > 0
    assert this2 > 0
    assert total1 == this1
    assert total2 == pytest.approx(this1 + this2, abs=2e-6)
    child.expect_exact("You: ")
    child.sendeof()
    child.expect(r"Total cost this session: \$(\d+\.\d{6})")
    assert float(child.match.group(1)) == pytest.approx(total2, abs=1e-6)
    child.expect(pexpect.EOF)


@pytest.mark.parametrize("command", ["clear", "/clear"])
def test_clear_forgets_the_conversation(spawn_chat: Spawn, command: str) -> None:
    child = spawn_chat("--store", "memory")
    say(child, "My name is Alice", "Hello Alice!")
    child.expect_exact("You: ")
    child.sendline(command)
    child.expect_exact("[Conversation cleared]")
    say(child, "What's my name?", "I don't know your name yet.")
    finish(child)


def test_history_and_help(spawn_chat: Spawn) -> None:
    child = spawn_chat("--store", "memory")
    child.expect_exact("You: ")
    child.sendline("/history")
    child.expect_exact("[No messages yet]")
    say(child, "I love sushi", "That's great! Sushi is delicious.")
    child.expect_exact("You: ")
    child.sendline("/history")
    child.expect_exact("[2 message(s) in session ")
    child.expect_exact("You: I love sushi")
    child.expect_exact("Bot: That's great! Sushi is delicious.")
    child.expect_exact("You: ")
    child.sendline("/help")
    for command in ("exit", "/clear", "/history", "/system <prompt>", "/help"):
        child.expect_exact(command)
    child.expect_exact("You: ")
    child.sendline("/nonsense")
    child.expect_exact("Unknown command /nonsense")
    finish(child)


def test_system_prompt_from_option_and_command(spawn_chat: Spawn) -> None:
    child = spawn_chat("--store", "memory", "--system", "You are a helpful assistant")
    child.expect_exact("Persona: You are a helpful assistant")
    say(child, "My name is Alice", "Hello Alice!")
    child.expect_exact("You: ")
    child.sendline("/system You speak like a pirate")
    child.expect_exact("[System prompt set]")
    # The demo model turns piratical when the system prompt asks for it.
    say(child, "What's my name?", "Arr! Your name is Alice.")
    child.expect_exact("You: ")
    child.sendline("/system")
    child.expect_exact("System prompt: You speak like a pirate")
    child.expect_exact("You: ")
    child.sendline("/system off")
    child.expect_exact("[System prompt removed]")
    say(child, "What's my name?", "Your name is Alice.")
    # The persona is sent, never stored in the history.
    child.expect_exact("You: ")
    child.sendline("/history")
    child.expect_exact("[6 message(s)")
    finish(child)


def test_ctrl_c_mid_reply_cancels_only_that_reply(spawn_chat: Spawn) -> None:
    # One word now, the next in an hour: the reply is certainly unfinished at Ctrl-C.
    child = spawn_chat("--store", "memory", "--demo-chunk-delay", "3600")
    child.expect_exact("You: ")
    child.sendline("My name is Alice")
    child.expect_exact("Bot: Hello ")  # the first streamed chunk is on screen
    child.sendintr()
    child.expect_exact("[Reply cancelled; nothing of this turn was saved]")
    # The program is still running, and nothing of the turn was stored.
    child.expect_exact("You: ")
    child.sendline("/history")
    child.expect_exact("[No messages yet]")
    finish(child)


def test_ctrl_c_at_the_prompt_keeps_running(spawn_chat: Spawn) -> None:
    child = spawn_chat("--store", "memory")
    child.expect_exact("You: ")
    child.send("half a line")
    child.sendintr()
    child.expect_exact("(Type 'exit' or press Ctrl-D to quit.)")
    say(child, "My name is Carol", "Hello Carol!")
    finish(child)


def test_ctrl_d_exits_with_the_session_total(spawn_chat: Spawn) -> None:
    child = spawn_chat("--store", "memory")
    say(child, "Hello", "Hello!")
    finish(child, how="eof")


def test_session_id_from_environment_and_default(spawn_chat: Spawn) -> None:
    child = spawn_chat("--store", "memory", env={"SESSION_ID": "from-env"})
    child.expect_exact("Session: from-env (new)")
    finish(child)
    child = spawn_chat("--store", "memory", env={"USER": "dana", "LOGNAME": "dana"})
    child.expect(r"Session: chat-dana-\d{4}-\d{2}-\d{2} \(new\)")
    finish(child)


def test_redis_unreachable_falls_back_and_says_why(spawn_chat: Spawn, closed_port: int) -> None:
    url = f"redis://:s3cret@127.0.0.1:{closed_port}/0"
    child = spawn_chat("--store", "redis", "--redis-url", url)
    child.expect_exact(f"Redis unavailable at redis://:***@127.0.0.1:{closed_port}/0")
    child.expect_exact("using the embedded SQLite store")
    child.expect_exact("Store:   ")
    text = finish(child)
    assert "s3cret" not in text


def test_provider_without_key_is_a_clear_usage_error(spawn_chat: Spawn) -> None:
    child = spawn_chat("--provider", "openai")
    child.expect_exact("--provider openai needs an API key: set OPENAI_API_KEY")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 2


@pytest.mark.redis
def test_restart_with_same_session_continues_on_redis(spawn_chat: Spawn, redis_server: Any) -> None:
    session = f"redis-{uuid.uuid4().hex}"  # the server is shared with other tests
    args = ("--store", "redis", "--session", session)
    child = spawn_chat(*args, env={"REDIS_URL": redis_server.url})
    child.expect_exact(f"Store:   redis at {redis_server.url}")
    say(child, "My name is Alice", "Hello Alice!")
    say(child, "I love pizza", "That's great! Pizza is delicious.")
    finish(child)

    # --redis-url instead of REDIS_URL, and Ctrl-D to quit.
    child = spawn_chat(*args, "--redis-url", redis_server.url)
    child.expect_exact(f"Session: {session} (continuing, 4 message(s))")
    say(child, "What's my name?", "Your name is Alice.")
    say(child, "What food do I love?", "You mentioned that you love pizza!")
    child.expect_exact("You: ")
    child.sendline("clear")
    child.expect_exact("[Conversation cleared]")
    finish(child, how="eof")

    child = spawn_chat(*args, env={"REDIS_URL": redis_server.url})
    child.expect_exact(f"Session: {session} (new)")
    finish(child)


def test_restart_with_same_session_continues_on_sqlite(spawn_chat: Spawn) -> None:
    # No --store: the embedded SQLite store is the default.
    child = spawn_chat("--session", "alice")
    child.expect_exact("Store:   sqlite at ")
    say(child, "My name is Alice", "Hello Alice!")
    say(child, "I love pizza", "That's great! Pizza is delicious.")
    finish(child)

    child = spawn_chat("--session", "alice")
    child.expect_exact("Session: alice (continuing, 4 message(s))")
    say(child, "What's my name?", "Your name is Alice.")
    say(child, "What food do I love?", "You mentioned that you love pizza!")
    finish(child, how="eof")

    # Another session in the same file knows nothing of Alice.
    child = spawn_chat("--session", "bob")
    child.expect_exact("Session: bob (new)")
    say(child, "What's my name?", "I don't know your name yet.")
    finish(child)


def test_cancelled_reply_is_not_there_after_restart(spawn_chat: Spawn) -> None:
    child = spawn_chat("--session", "s")
    say(child, "My name is Alice", "Hello Alice!")
    finish(child)

    child = spawn_chat("--session", "s", "--demo-chunk-delay", "3600")
    child.expect_exact("You: ")
    child.sendline("I love pizza")
    child.expect_exact("Bot: That's ")
    child.sendintr()
    child.expect_exact("[Reply cancelled; nothing of this turn was saved]")
    finish(child)

    child = spawn_chat("--session", "s")
    child.expect_exact("Session: s (continuing, 2 message(s))")
    say(child, "What food do I love?", "You haven't told me what you love yet.")
    say(child, "What's my name?", "Your name is Alice.")
    finish(child)


def test_persona_survives_a_restart(spawn_chat: Spawn) -> None:
    child = spawn_chat("--session", "p", "--system", "Talk like a pirate")
    say(child, "My name is Alice", "Arr! Hello Alice!")
    finish(child)
    child = spawn_chat("--session", "p")
    child.expect_exact("Persona: Talk like a pirate")
    say(child, "What's my name?", "Arr! Your name is Alice.")
    finish(child)


def test_real_provider_over_http_with_key_from_environment(
    spawn_chat: Spawn, fake_openai: Any
) -> None:
    key = "sk-test-do-not-print-0123456789"
    env = {"OPENAI_API_KEY": key, "OPENAI_BASE_URL": fake_openai.url}
    # No --provider: a key in the environment selects OpenAI.
    child = spawn_chat("--store", "memory", env=env)
    child.expect_exact("Model:   gpt-4o-mini via openai")
    child.expect_exact("You: ")
    child.sendline("My name is Alice")
    child.expect_exact("Bot: You sent 1 message(s); the first: My name is Alice")
    # 1000 prompt + 100 completion tokens at gpt-4o-mini prices: $0.000150 + $0.000060.
    child.expect_exact("[Tokens: 1100 | This: $0.000210 | Total: $0.000210]")
    child.expect_exact("You: ")
    child.sendline("What's my name?")
    child.expect_exact("Bot: You sent 3 message(s); the first: My name is Alice")
    child.expect_exact("[Tokens: 1100 | This: $0.000210 | Total: $0.000420]")
    finish(child)
    assert fake_openai.auth == [f"Bearer {key}"] * 2
    assert [m["role"] for m in fake_openai.requests[1]["messages"]] == [
        "user",
        "assistant",
        "user",
    ]
    assert fake_openai.requests[0]["stream"] is True
    transcript = child.logfile_read.getvalue()
    assert "You sent 3 message(s)" in transcript
    assert key not in transcript
