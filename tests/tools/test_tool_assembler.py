"""ToolCallAssembler: streamed tool-call fragments become whole calls."""

from __future__ import annotations

from promptkit_async import ToolCall, ToolCallAssembler, ToolCallDelta


def test_interleaved_fragments_of_two_calls() -> None:
    assembler = ToolCallAssembler()
    assert not assembler
    # OpenAI style: id and name first, then argument pieces; two calls interleaved.
    assembler.add([ToolCallDelta(0, "call_a", "get_weather", "")])
    assembler.add([ToolCallDelta(1, "call_b", "get_time", '{"tz"')])
    assembler.add([ToolCallDelta(0, arguments='{"city":'), ToolCallDelta(1, arguments=': "UTC"}')])
    assembler.add([ToolCallDelta(0, arguments=' "Paris"}')])

    assert assembler
    assert assembler.calls() == (
        ToolCall("call_a", "get_weather", '{"city": "Paris"}'),
        ToolCall("call_b", "get_time", '{"tz": "UTC"}'),
    )


def test_first_id_and_name_win_and_missing_arguments_are_an_empty_object() -> None:
    assembler = ToolCallAssembler()
    assembler.add([ToolCallDelta(3, "x", "now"), ToolCallDelta(3, "y", "later")])
    assembler.add([ToolCallDelta(1, None, "first")])

    assert assembler.calls() == (ToolCall("", "first", "{}"), ToolCall("x", "now", "{}"))
