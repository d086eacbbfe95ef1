"""The stored-record fixtures in ``data/`` and the messages they must decode to.

``records_v0.jsonl``: version 0, the unversioned record of PromptKit's Go runtime
(OpenAI-style ``tool_calls`` with a nested ``function``; ``content`` may be null).
``records_v1.jsonl``: version 1, frozen as first written by this library.
Both must load forever: never edit these files, add a new one for a new version.
"""

from __future__ import annotations

from pathlib import Path

from promptkit_async import Message, ToolCall

DATA = Path(__file__).parent / "data"


def raw_records(version: int) -> list[str]:
    """The raw JSON lines of a fixture file."""
    return (DATA / f"records_v{version}.jsonl").read_text("utf-8").splitlines()


EXPECTED = {
    0: [
        Message("system", "You are a helpful assistant."),
        Message("user", "What's the weather in Paris?"),
        Message("assistant", "", (ToolCall("call_abc123", "get_weather", '{"city":"Paris"}'),)),
        Message("tool", '{"temp_c": 18}', tool_call_id="call_abc123", name="get_weather"),
        Message("assistant", "It is 18 °C in Paris."),
    ],
    1: [
        Message("system", "You are a helpful assistant."),
        Message(
            "user",
            "Wie ist das Wetter in Zürich?",
            name="alice",
            metadata={"client": "cli", "ts": 1717171717},
        ),
        Message("assistant", "", (ToolCall("call_1", "get_weather", '{"city":"Zürich"}'),)),
        Message("tool", '{"temp_c": 21}', tool_call_id="call_1", name="get_weather"),
        Message("assistant", "Es sind 21 °C. ☀️"),
    ],
}


def check_loaded(loaded: list[Message], version: int) -> None:
    """Assert ``loaded`` equals the expected messages, metadata included."""
    expected = EXPECTED[version]
    assert loaded == expected
    assert [m.metadata for m in loaded] == [m.metadata for m in expected]
