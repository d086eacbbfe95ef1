"""Message <-> OpenAI chat format and Anthropic Messages format: examples and round trips.

Round trips are property tests both ways: a provider-format history (in the shapes the
provider itself sends) -> messages -> the same history, and messages (in the shapes the
format can carry) -> provider format -> equal messages.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from promptkit_async import (
    AudioPart,
    DocumentPart,
    ImagePart,
    InvalidMessageError,
    Message,
    TextPart,
    ThinkingPart,
    ToolCall,
)
from tests._strategies import json_objects
from tests.statestore._records import PDF, PNG, WAV

PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

text = st.text(max_size=30)
word = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12)
blob = st.binary(max_size=40)
json_object = json_objects(text)
image_types = st.sampled_from(["image/png", "image/jpeg", "image/gif", "image/webp"])
urls = word.map(lambda w: f"https://example.com/{w}")
details = st.none() | st.sampled_from(["auto", "low", "high"])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def canonical_arguments(args: dict[str, Any]) -> str:
    return json.dumps(args, ensure_ascii=False, separators=(",", ":"))


# --- examples: the case, and each part kind ----------------------------------------


def test_an_openai_response_message_is_accepted_as_is() -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
    }
    message = Message(role="assistant", content=None, tool_calls=[call])  # type: ignore[arg-type,list-item]
    assert message.content == ""
    assert message.tool_calls == (ToolCall("call_1", "get_weather", '{"city":"Paris"}'),)
    assert Message.from_openai({"role": "assistant", "content": None, "tool_calls": [call]}) == (
        message
    )
    assert message.to_openai() == {"role": "assistant", "content": None, "tool_calls": [call]}


def test_openai_parts_map_to_part_types() -> None:
    history = [
        {"role": "developer", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {
                    "type": "image_url",
                    "image_url": {"url": f"data:image/png;base64,{b64(PNG)}", "detail": "low"},
                },
                {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
                {"type": "input_audio", "input_audio": {"data": b64(WAV), "format": "wav"}},
                {
                    "type": "file",
                    "file": {
                        "file_data": f"data:application/pdf;base64,{b64(PDF)}",
                        "filename": "a.pdf",
                    },
                },
                {"type": "file", "file": {"file_id": "file-1"}},
            ],
        },
        {"role": "assistant", "content": None, "refusal": "I can't help with that."},
    ]
    system, user, assistant = Message.from_openai_list(history)
    assert system == Message("system", "Be brief.")
    assert user.content == (
        TextPart("What is this?"),
        ImagePart(PNG, media_type="image/png", detail="low"),
        ImagePart(url="https://example.com/a.jpg"),
        AudioPart(WAV, "wav"),
        DocumentPart(PDF, filename="a.pdf"),
        DocumentPart(file_id="file-1"),
    )
    assert user.text == "What is this?"
    assert assistant.content == ""
    assert Message.to_openai_list([system, user, assistant]) == history


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"role": "function", "name": "f", "content": "x"}, "role 'function'"),
        ({"role": "user", "content": [{"type": "video"}]}, "part type 'video'"),
        ({"role": "user", "content": 42}, "string, a list or null"),
        ({"role": "user", "content": [{"type": "text"}]}, "must be a string"),
        (
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "data:;base64,AAAA"}}],
            },
            "not a PNG",
        ),
        (
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "!"}}]},
            "invalid base64",
        ),
        ({"role": "assistant", "tool_calls": [{"id": "a", "type": "x"}]}, "unsupported tool"),
        ({"role": "assistant", "tool_calls": [{"id": 1, "function": {"name": "f"}}]}, "str 'id'"),
        ({"role": "assistant", "tool_calls": "call"}, "sequence of tool calls"),
        ({"role": "tool", "content": "x"}, "tool_call_id"),
        ("not a dict", "must be an object"),
    ],
)
def test_bad_openai_shapes_raise_a_typed_error(raw: Any, match: str) -> None:
    with pytest.raises(InvalidMessageError, match=match):
        Message.from_openai(raw)


def test_what_openai_cannot_carry_is_refused_or_left_out() -> None:
    with pytest.raises(InvalidMessageError, match="blob store"):
        Message("user", [ImagePart(blob_key="k", media_type="image/png")]).to_openai()
    with pytest.raises(InvalidMessageError, match="by URL"):
        Message("user", [DocumentPart(url="https://x/a.pdf")]).to_openai()
    thinking = Message("assistant", [ThinkingPart("hm", "sig"), TextPart("Hi")])
    assert thinking.to_openai() == {
        "role": "assistant",
        "content": [{"type": "text", "text": "Hi"}],
    }


def test_anthropic_tool_results_split_into_tool_messages_and_join_back() -> None:
    request = {
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Two calls.", "signature": "sig=="},
                    {"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "t2", "name": "weather", "input": {"city": "Rome"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "18 C"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "t2",
                        "content": "boom",
                        "is_error": True,
                    },
                    {"type": "text", "text": "Also, thanks!"},
                ],
            },
        ],
    }
    history = Message.from_anthropic_list(request["messages"], system=request["system"])  # type: ignore[arg-type]
    assert [m.role for m in history] == ["system", "user", "assistant", "tool", "tool", "user"]
    assert history[2].content == (ThinkingPart("Two calls.", "sig==", provider="anthropic"),)
    assert history[2].tool_calls == (
        ToolCall("t1", "weather", '{"city":"Paris"}'),
        ToolCall("t2", "weather", '{"city":"Rome"}'),
    )
    assert history[3] == Message("tool", "18 C", tool_call_id="t1")
    assert history[5].content == (TextPart("Also, thanks!"),)
    assert Message.to_anthropic_list(history) == request


def test_our_own_tool_loop_history_exports_to_anthropic() -> None:
    # Tool messages written by the tool runner (with names, no marks) share one user entry.
    history = [
        Message("user", "Hi"),
        Message("assistant", "Checking.", [ToolCall("a", "f", "{}"), ToolCall("b", "g", "{}")]),
        Message("tool", "1", tool_call_id="a", name="f"),
        Message("tool", "2", tool_call_id="b", name="g"),
        Message("assistant", "Done."),
    ]
    out = Message.to_anthropic_list(history)
    assert "system" not in out
    assert out["messages"][1]["content"][0] == {"type": "text", "text": "Checking."}
    assert out["messages"][2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "a", "content": "1"},
            {"type": "tool_result", "tool_use_id": "b", "content": "2"},
        ],
    }


def test_what_anthropic_cannot_carry_is_refused_or_left_out() -> None:
    with pytest.raises(InvalidMessageError, match="audio"):
        Message("user", [AudioPart(WAV)]).to_anthropic()
    with pytest.raises(InvalidMessageError, match="not JSON"):
        Message("assistant", "", [ToolCall("a", "f", "{oops")]).to_anthropic()
    with pytest.raises(InvalidMessageError, match="to_anthropic_list"):
        Message("system", "x").to_anthropic()
    other = Message("assistant", [ThinkingPart("hm", "gemini-sig", provider="gemini"), "Hi"])
    assert other.to_anthropic() == {
        "role": "assistant",
        "content": [{"type": "text", "text": "Hi"}],
    }
    with pytest.raises(InvalidMessageError, match="from_anthropic_list"):
        Message.from_anthropic(
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "a"},
                    {"type": "text", "text": "x"},
                ],
            }
        )
    with pytest.raises(InvalidMessageError, match="block type 'server_tool_use'"):
        Message.from_anthropic({"role": "assistant", "content": [{"type": "server_tool_use"}]})


# --- OpenAI round trips ---------------------------------------------------------------------


openai_part_dicts = st.one_of(
    text.map(lambda t: {"type": "text", "text": t}),
    st.builds(
        lambda mt, data, detail: {
            "type": "image_url",
            "image_url": {"url": f"data:{mt};base64,{b64(data)}"}
            | ({} if detail is None else {"detail": detail}),
        },
        image_types,
        blob,
        details,
    ),
    st.builds(
        lambda url, detail: {
            "type": "image_url",
            "image_url": {"url": url} | ({} if detail is None else {"detail": detail}),
        },
        urls,
        details,
    ),
    st.builds(
        lambda data, fmt: {
            "type": "input_audio",
            "input_audio": {"data": b64(data), "format": fmt},
        },
        blob,
        st.sampled_from(["wav", "mp3"]),
    ),
    st.builds(
        lambda data, name: {
            "type": "file",
            "file": {"file_data": f"data:application/pdf;base64,{b64(data)}"}
            | ({} if name is None else {"filename": name}),
        },
        blob,
        st.none() | word,
    ),
    word.map(lambda i: {"type": "file", "file": {"file_id": i}}),
)
openai_tool_calls = st.lists(
    st.builds(
        lambda i, n, a: {"id": i, "type": "function", "function": {"name": n, "arguments": a}},
        word,
        word,
        text,
    ),
    min_size=1,
    max_size=3,
)


@st.composite
def openai_messages(draw: st.DrawFn) -> dict[str, Any]:
    role = draw(st.sampled_from(["system", "developer", "user", "assistant", "tool"]))
    out: dict[str, Any] = {"role": role}
    if role == "assistant" and draw(st.booleans()):
        out["content"] = draw(
            st.none() | text.filter(bool) | st.lists(openai_part_dicts, min_size=1)
        )
        if draw(st.booleans()):
            out["tool_calls"] = draw(openai_tool_calls)
        if draw(st.booleans()):
            out["refusal"] = draw(text)
    else:
        out["content"] = draw(text | st.lists(openai_part_dicts, min_size=1, max_size=4))
    if draw(st.booleans()):
        out["name"] = draw(word)
    if role == "tool":
        out["tool_call_id"] = draw(word)
    return out


@PROPS
@given(st.lists(openai_messages(), max_size=6))
def test_openai_history_round_trips_unchanged(history: list[dict[str, Any]]) -> None:
    messages = Message.from_openai_list(history)
    assert Message.to_openai_list(messages) == history
    # ... and through the stored record, as a store would keep it.
    from promptkit_async.statestore.records import decode_message, encode_message

    stored = [decode_message(encode_message(m)) for m in messages]
    assert Message.to_openai_list(stored) == history


openai_parts = st.one_of(
    text.map(TextPart),
    st.builds(
        lambda d, mt, det: ImagePart(d, media_type=mt, detail=det), blob, image_types, details
    ),
    st.builds(lambda u, det: ImagePart(url=u, detail=det), urls, details),
    st.builds(AudioPart, blob, st.sampled_from(["wav", "mp3"])),
    st.builds(lambda d, f: DocumentPart(d, filename=f), blob, st.none() | word),
    st.builds(lambda i, f: DocumentPart(file_id=i, filename=f), word, st.none() | word),
)


@st.composite
def messages_for_openai(draw: st.DrawFn) -> Message:
    role = draw(st.sampled_from(["system", "user", "assistant", "tool"]))
    content = draw(text | st.lists(openai_parts, min_size=1, max_size=4).map(tuple))
    calls: list[ToolCall] = []
    if role == "assistant":
        calls = draw(st.lists(st.builds(ToolCall, word, word, text), max_size=2))
    return Message(
        role,  # type: ignore[arg-type]
        content,
        calls,
        draw(word) if role == "tool" else None,
        None if role == "tool" else draw(st.none() | word),
    )


@PROPS
@given(st.lists(messages_for_openai(), max_size=6))
def test_messages_round_trip_through_the_openai_format(messages: list[Message]) -> None:
    wire = json.loads(json.dumps(Message.to_openai_list(messages)))  # JSON-safe, too
    assert Message.from_openai_list(wire) == messages


# --- Anthropic round trips ------------------------------------------------------------------


def source_dicts(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    media = image_types if kind == "image" else st.just("application/pdf")
    options = [
        st.builds(lambda mt, d: {"type": "base64", "media_type": mt, "data": b64(d)}, media, blob),
        urls.map(lambda u: {"type": "url", "url": u}),
        word.map(lambda i: {"type": "file", "file_id": i}),
    ]
    if kind == "document":
        options.append(
            st.text(st.characters(exclude_categories=("Cs",)), max_size=20).map(
                lambda t: {"type": "text", "media_type": "text/plain", "data": t}
            )
        )
    return st.one_of(options)


nonempty = text.filter(bool)
text_blocks = nonempty.map(lambda t: {"type": "text", "text": t})
user_blocks = st.one_of(
    text_blocks,
    source_dicts("image").map(lambda s: {"type": "image", "source": s}),
    st.builds(
        lambda s, title: (
            {"type": "document", "source": s} | ({} if title is None else {"title": title})
        ),
        source_dicts("document"),
        st.none() | word,
    ),
)
thinking_blocks = st.one_of(
    st.builds(lambda t, s: {"type": "thinking", "thinking": t, "signature": s}, text, word),
    word.map(lambda d: {"type": "redacted_thinking", "data": d}),
)
tool_use_blocks = st.builds(
    lambda i, n, args: {"type": "tool_use", "id": i, "name": n, "input": args},
    word,
    word,
    json_object,
)
tool_results = st.builds(
    lambda i, content, err: (
        {"type": "tool_result", "tool_use_id": i}
        | ({} if content is None else {"content": content})
        | ({} if err is None else {"is_error": err})
    ),
    word,
    st.none() | nonempty | st.lists(st.one_of(text_blocks, user_blocks), min_size=1, max_size=2),
    st.none() | st.booleans(),
)


@st.composite
def anthropic_requests(draw: st.DrawFn) -> dict[str, Any]:
    request: dict[str, Any] = {}
    system = draw(st.none() | text | st.lists(text_blocks, min_size=1, max_size=2))
    if system is not None:
        request["system"] = system
    entries: list[dict[str, Any]] = []
    for i in range(draw(st.integers(0, 6))):
        if i % 2 == 0:
            content: Any = draw(text | st.lists(user_blocks, min_size=1, max_size=3))
            if i and draw(st.booleans()):  # tool results answer the assistant before
                results = draw(st.lists(tool_results, min_size=1, max_size=2))
                content = results + draw(st.lists(user_blocks, max_size=2))
            entries.append({"role": "user", "content": content})
        else:
            blocks = draw(st.lists(st.one_of(thinking_blocks, text_blocks), max_size=3))
            calls = draw(st.lists(tool_use_blocks, max_size=2))
            if not blocks and not calls:
                entries.append({"role": "assistant", "content": draw(text)})
            else:
                entries.append({"role": "assistant", "content": blocks + calls})
    request["messages"] = entries
    return request


@PROPS
@given(anthropic_requests())
def test_anthropic_request_round_trips_unchanged(request: dict[str, Any]) -> None:
    messages = Message.from_anthropic_list(request["messages"], system=request.get("system"))
    assert Message.to_anthropic_list(messages) == request
    from promptkit_async.statestore.records import decode_message, encode_message

    stored = [decode_message(encode_message(m)) for m in messages]
    assert Message.to_anthropic_list(stored) == request


anthropic_user_parts = st.one_of(
    text.map(TextPart),
    st.builds(lambda d, mt: ImagePart(d, media_type=mt), blob, image_types),
    urls.map(lambda u: ImagePart(url=u)),
    word.map(lambda i: ImagePart(file_id=i)),
    st.builds(lambda d, f: DocumentPart(d, filename=f), blob, st.none() | word),
    urls.map(lambda u: DocumentPart(url=u)),
    word.map(lambda i: DocumentPart(file_id=i)),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=20).map(
        lambda t: DocumentPart(t.encode(), media_type="text/plain")
    ),
)
anthropic_thinking = st.one_of(
    st.builds(lambda t, s: ThinkingPart(t, s, provider="anthropic"), text, st.none() | word),
    word.map(lambda d: ThinkingPart(redacted=d, provider="anthropic")),
)


@st.composite
def messages_for_anthropic(draw: st.DrawFn) -> list[Message]:
    out: list[Message] = []
    system = draw(st.none() | text | st.lists(text.map(TextPart), min_size=1, max_size=2))
    if system is not None:
        out.append(Message("system", system))
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["user", "assistant", "tools"]))
        if kind == "user":
            out.append(Message("user", draw(text | st.lists(anthropic_user_parts, min_size=1))))
        elif kind == "assistant":
            calls = draw(
                st.lists(
                    st.builds(ToolCall, word, word, json_object.map(canonical_arguments)),
                    max_size=2,
                )
            )
            parts = draw(st.lists(anthropic_thinking | text.map(TextPart), max_size=3))
            content: Any = parts
            if not parts or (calls and len(parts) == 1 and isinstance(parts[0], TextPart)):
                content = parts[0].text if parts else draw(text)  # the format's shape
            if calls and isinstance(content, str) and not content:
                content = ""
            out.append(Message("assistant", content, calls))
        else:
            for _ in range(draw(st.integers(1, 2))):
                body = draw(text | st.lists(text.map(TextPart) | anthropic_user_parts, min_size=1))
                out.append(Message("tool", body, tool_call_id=draw(word)))
            out.append(Message("assistant", "ok"))  # tool results end before the next user
    return out


@PROPS
@given(messages_for_anthropic())
def test_messages_round_trip_through_the_anthropic_format(messages: list[Message]) -> None:
    wire = json.loads(json.dumps(Message.to_anthropic_list(messages)))
    assert Message.from_anthropic_list(wire["messages"], system=wire.get("system")) == messages
