"""Token counts: exact against tiktoken's own encodings, offline, cached, estimated when unsure."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import tiktoken

from promptkit_async.prompt import (
    REPLY_PRIMING_TOKENS,
    TOKENS_METADATA_KEY,
    TOKENS_PER_MESSAGE,
    TOKENS_PER_NAME,
    TOKENS_PER_TOOL_CALL,
    TokenCount,
    _bpe,
    aget_tokenizer,
    count_message_tokens,
    count_tokens,
    get_tokenizer,
    measure_tokens,
)
from promptkit_async.statestore.records import decode_message, encode_message
from promptkit_async.types import Message, ToolCall

ENCODINGS = ["cl100k_base", "o200k_base"]

TEXTS = [
    "hello world",
    "tiktoken is great!",
    "",
    "antidisestablishmentarianism",
    "Hello, 世界! 👋🏽 Ça va? Привет",
    "def f(x):\n    return x ** 2  # squares\n\n\n",
    "   leading and trailing spaces   ",
    "special token text <|endoftext|> and <|endofprompt|> is plain text here",
    "1234567890 3.14159 1e-9",
]

MODELS = {
    "gpt-4o": "o200k_base",
    "gpt-4o-mini-2024-07-18": "o200k_base",
    "gpt-4.1-mini": "o200k_base",
    "gpt-5": "o200k_base",
    "o3-mini": "o200k_base",
    "o1": "o200k_base",
    "gpt-4": "cl100k_base",
    "gpt-4-turbo": "cl100k_base",
    "gpt-3.5-turbo-0125": "cl100k_base",
}

# OpenAI cookbook "How to count tokens with tiktoken": these messages were counted by the
# API itself at 129 prompt tokens for gpt-4 / gpt-3.5-turbo and 124 for gpt-4o(-mini).
COOKBOOK = [
    Message(
        "system",
        "You are a helpful, pattern-following assistant that translates corporate jargon "
        "into plain English.",
    ),
    Message("system", "New synergies will help drive top-line growth.", name="example_user"),
    Message(
        "system",
        "Things working well together will increase revenue.",
        name="example_assistant",
    ),
    Message(
        "system",
        "Let's circle back when we have more bandwidth to touch base on opportunities for "
        "increased leverage.",
        name="example_user",
    ),
    Message(
        "system",
        "Let's talk later when we're less busy about how to do better.",
        name="example_assistant",
    ),
    Message(
        "user",
        "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    ),
]


@pytest.mark.parametrize("name", ENCODINGS)
def test_encodings_are_built_like_tiktokens_own(
    name: str, reference: dict[str, tiktoken.Encoding]
) -> None:
    ours = _bpe.get_encoding(name)
    theirs = reference[name]
    assert ours.name == theirs.name
    assert ours._pat_str == theirs._pat_str
    assert ours._special_tokens == theirs._special_tokens
    assert ours.n_vocab == theirs.n_vocab
    for text in TEXTS:
        assert ours.encode_ordinary(text) == theirs.encode_ordinary(text)
        assert ours.encode(text, disallowed_special=()) == theirs.encode(
            text, disallowed_special=()
        )


@pytest.mark.parametrize(("model", "encoding"), sorted(MODELS.items()))
@pytest.mark.parametrize("text", TEXTS)
def test_count_tokens_is_exact_for_openai_models(
    model: str, encoding: str, text: str, reference: dict[str, tiktoken.Encoding]
) -> None:
    assert count_tokens(text, model) == len(reference[encoding].encode_ordinary(text))
    measured = measure_tokens(text, model)
    assert measured == TokenCount(count_tokens(text, model), encoding, estimated=False)


def test_literal_known_counts() -> None:
    assert count_tokens("hello world", "gpt-4o") == 2
    assert count_tokens("hello world", "gpt-4") == 2
    assert count_tokens("tiktoken is great!", "gpt-4") == 6  # tiktoken's README example
    assert count_tokens("tiktoken is great!", "gpt-4o") == 6
    assert count_tokens("Hello, 世界! 👋🏽", "gpt-4o") == 8
    assert count_tokens("Hello, 世界! 👋🏽", "gpt-4") == 12
    assert count_message_tokens(COOKBOOK, "gpt-4") == 129
    assert count_message_tokens(COOKBOOK, "gpt-3.5-turbo") == 129
    assert count_message_tokens(COOKBOOK, "gpt-4o") == 124
    assert count_message_tokens(COOKBOOK, "gpt-4o-mini") == 124


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_message_formula(encoding: str, reference: dict[str, tiktoken.Encoding]) -> None:
    model = "gpt-4o" if encoding == "o200k_base" else "gpt-4"
    enc = reference[encoding]

    def n(text: str) -> int:
        return len(enc.encode_ordinary(text))

    plain = Message("user", "What is the weather in Paris?")
    named = Message("user", "hi", name="alice")
    calls = Message(
        "assistant",
        "",
        (
            ToolCall("call_1", "get_weather", '{"city": "Paris"}'),
            ToolCall("call_2", "get_time", '{"tz": "Europe/Paris"}'),
        ),
    )
    result = Message("tool", "18C and sunny", tool_call_id="call_1", name="get_weather")
    expected = {
        plain: TOKENS_PER_MESSAGE + n("user") + n(plain.content),
        named: TOKENS_PER_MESSAGE + n("user") + n("hi") + n("alice") + TOKENS_PER_NAME,
        calls: TOKENS_PER_MESSAGE
        + n("assistant")
        + (TOKENS_PER_TOOL_CALL + n("get_weather") + n('{"city": "Paris"}'))
        + (TOKENS_PER_TOOL_CALL + n("get_time") + n('{"tz": "Europe/Paris"}')),
        result: TOKENS_PER_MESSAGE
        + n("tool")
        + n("18C and sunny")
        + n("get_weather")
        + TOKENS_PER_NAME,
    }
    tokenizer = get_tokenizer(model)
    for message, tokens in expected.items():
        assert tokenizer.count_message(message) == tokens
    everything = list(expected)
    assert count_message_tokens(everything, model) == sum(expected.values()) + REPLY_PRIMING_TOKENS
    assert count_message_tokens([], model) == 0


def test_tool_call_arguments_are_counted() -> None:
    short = Message("assistant", "", (ToolCall("c", "f", "{}"),))
    long = Message("assistant", "", (ToolCall("c", "f", json.dumps({"q": "word " * 50})),))
    assert count_message_tokens([long], "gpt-4o") - count_message_tokens([short], "gpt-4o") > 40


@pytest.mark.parametrize(
    "model", ["claude-sonnet-4-5", "gemini-2.5-flash", "llama3.1:8b", "mock-model", None]
)
def test_other_models_use_the_fallback_and_say_estimated(
    model: str | None, reference: dict[str, tiktoken.Encoding]
) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    measured = measure_tokens(text, model)
    assert measured.estimated is True
    assert measured.encoding == "o200k_base"
    assert measured.tokens == len(reference["o200k_base"].encode_ordinary(text))
    assert get_tokenizer(model).estimated is True
    assert measure_tokens([Message("user", text)], model).estimated is True


def test_vendor_prefixes_keep_openai_models_exact() -> None:
    assert measure_tokens("x", "openai/gpt-4o").estimated is False
    assert measure_tokens("x", "ft:gpt-4o-mini:acme::abc123").estimated is False
    assert measure_tokens("x", "gpt-4o").encoding == "o200k_base"


def test_stored_token_annotation_is_used_and_survives_the_codec() -> None:
    tokenizer = get_tokenizer("gpt-4o")
    message = Message("user", "a fairly ordinary sentence for counting")
    annotated = tokenizer.annotate(message)
    record = annotated.metadata[TOKENS_METADATA_KEY]
    assert record == {"chars": len(message.content), "o200k_base": tokenizer.count_message(message)}
    assert annotated == message  # metadata is not part of equality
    loaded = decode_message(encode_message(annotated))
    assert loaded.metadata[TOKENS_METADATA_KEY] == record
    # Annotating for a second encoding keeps the first count.
    both = get_tokenizer("gpt-4").annotate(loaded)
    assert set(both.metadata[TOKENS_METADATA_KEY]) == {"chars", "o200k_base", "cl100k_base"}

    # The stored count is what gets used (proved with a deliberately different number)...
    forged = Message(
        "user", message.content, metadata={TOKENS_METADATA_KEY: {"chars": 39, "o200k_base": 999}}
    )
    assert tokenizer.count_message(forged) == 999
    # ...unless it no longer matches the content's length.
    stale = Message(
        "user",
        message.content + "!",
        metadata={TOKENS_METADATA_KEY: {"chars": 39, "o200k_base": 999}},
    )
    assert tokenizer.count_message(stale) == tokenizer.count_message(Message("user", stale.content))


async def test_async_tokenizer_is_the_shared_one() -> None:
    assert await aget_tokenizer("gpt-4o-mini") is get_tokenizer("gpt-4o-mini")
    assert await aget_tokenizer("gpt-4") is get_tokenizer("gpt-4")


def test_encoding_loads_once_across_threads() -> None:
    got: list[tiktoken.Encoding] = []
    threads = [
        threading.Thread(target=lambda: got.append(_bpe.get_encoding("cl100k_base")))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8
    assert all(e is got[0] for e in got)


def test_unknown_encoding_is_a_clear_error() -> None:
    from promptkit_async.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="o200k_base"):
        _bpe.get_encoding("p50k_base")


def test_tiktoken_cache_dir_is_honoured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shipped: dict[str, tuple[str, str]]
) -> None:
    url, path = shipped["cl100k_base"]
    cached = tmp_path / hashlib.sha1(url.encode()).hexdigest()
    shutil.copyfile(path, cached)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    data, source = _bpe._read_ranks_file("cl100k_base")
    assert source == str(cached)
    # A corrupt cached copy is ignored in favour of the shipped file.
    cached.write_bytes(b"garbage")
    data2, source2 = _bpe._read_ranks_file("cl100k_base")
    assert source2 != str(cached)
    assert data2 == data


FIRST_LOAD = r"""
import asyncio, logging, socket, threading

def no_network(*args, **kwargs):
    raise AssertionError("network used")

socket.socket.connect = no_network
socket.create_connection = no_network
threads = []

class Where(logging.Handler):
    def emit(self, record):
        threads.append(record.threadName)

log = logging.getLogger("promptkit_async.prompt")
log.setLevel(logging.DEBUG)
log.addHandler(Where())

from promptkit_async.prompt import aget_tokenizer, count_tokens

async def main():
    loop_thread = threading.current_thread().name
    tokenizer = await aget_tokenizer("gpt-4o")
    assert tokenizer.count("hello world") == 2
    return loop_thread

loop_thread = asyncio.run(main())
assert threads and loop_thread not in threads, (threads, loop_thread)
assert count_tokens("hello world", "gpt-4") == 2  # sync first use: loads in place
print("ok", threads)
"""


def test_first_async_load_runs_in_a_worker_thread_offline(tmp_path: Path) -> None:
    # A fresh interpreter, so the encodings are not loaded yet; sockets are disabled and
    # TIKTOKEN_CACHE_DIR points at an empty folder, so only the shipped files can work.
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path), "PYTHONPATH": os.getcwd()}
    done = subprocess.run(
        [sys.executable, "-c", FIRST_LOAD], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok")
    assert list(tmp_path.iterdir()) == []  # nothing was written to the cache folder
