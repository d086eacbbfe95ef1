"""Content parts and reasoning on each provider's wire.

Per provider: every part kind and source in a request body checked against the vendor
SDK's types (``openai``, ``anthropic``, ``google-genai``); a part the provider cannot take
refused with a typed error before any request; reasoning read from the answer (streamed
and whole), kept on the response and in the assistant message, and replayed as the
provider requires; reasoning tokens in usage and cost.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import anthropic.types as anthropic_types
import google.genai.types as genai_types
import httpx
import pytest
from openai.types import CompletionUsage
from openai.types.completion_usage import CompletionTokensDetails

from promptkit_async.errors import (
    APIResponseError,
    InvalidMessageError,
    InvalidRequestError,
    UnsupportedContentError,
)
from promptkit_async.pricing import calculate_cost, lookup_pricing
from promptkit_async.providers import ProviderRequest
from promptkit_async.types import (
    AudioPart,
    DocumentPart,
    ImagePart,
    Message,
    ProviderResponse,
    StreamChunk,
    TextPart,
    ThinkingPart,
    ToolCall,
    Usage,
)
from tests.statestore._records import PDF, PNG, WAV


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def sent(route: Any, index: int = -1) -> dict[str, Any]:
    return json.loads(route.calls[index].request.content)


async def collect(provider: Any, request: ProviderRequest) -> list[StreamChunk]:
    return [chunk async for chunk in provider.stream(request)]


async def answer(provider: Any, request: ProviderRequest, stream: bool) -> ProviderResponse:
    if not stream:
        return await provider.complete(request)  # type: ignore[no-any-return]
    chunks = await collect(provider, request)
    response = chunks[-1].response
    assert response is not None
    return response


async def refused(provider: Any, route: Any, request: ProviderRequest, error: Any, words: str):
    """Both APIs raise ``error`` (matching ``words``) and nothing was sent."""
    with pytest.raises(error, match=words):
        await provider.complete(request)
    with pytest.raises(error, match=words):
        await collect(provider, request)
    assert not route.called


# --- the data model ---------------------------------------------------------------------


def test_usage_reasoning_tokens_are_checked_and_summed() -> None:
    total = Usage(10, 50, reasoning_tokens=30) + Usage(5, 20, reasoning_tokens=12)
    assert total == Usage(15, 70, 85, reasoning_tokens=42)
    assert Usage().reasoning_tokens == 0
    for bad in (-1, 1.0, True, "3", 2**53 + 1):
        with pytest.raises(InvalidRequestError, match="reasoning_tokens"):
            Usage(1, 1, reasoning_tokens=bad)  # type: ignore[arg-type]


def test_reasoning_is_priced_once_as_output() -> None:
    price = lookup_pricing("gpt-4o-mini")
    assert price is not None
    plain = Usage(100, 50)
    reasoning = Usage(100, 50, reasoning_tokens=40)  # 40 of the 50 output tokens
    assert calculate_cost(reasoning, price) == calculate_cost(plain, price)
    assert calculate_cost(reasoning, price).output_cost == pytest.approx(
        50 * price.output_per_mtok / 1e6
    )


def test_to_message_puts_thinking_first_and_text_only_stays_a_str() -> None:
    plain = ProviderResponse("Hi", tool_calls=(ToolCall("c1", "f"),)).to_message()
    assert plain == Message("assistant", "Hi", (ToolCall("c1", "f"),))
    assert type(plain.content) is str
    thought = ThinkingPart("Let me see.", "sig", provider="anthropic")
    message = ProviderResponse("Hi", thinking=(thought,)).to_message()
    assert message.content == (thought, TextPart("Hi"))
    assert message.text == "Hi"
    calls_only = ProviderResponse(tool_calls=(ToolCall("c1", "f"),), thinking=(thought,))
    assert calls_only.to_message().content == (thought,)


# --- OpenAI -------------------------------------------------------------------------------


def openai_usage(prompt: int, completion: int, reasoning: int) -> CompletionUsage:
    return CompletionUsage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=reasoning),
    )


def openai_reply(fakes: Any, stream: bool, usage: CompletionUsage | None = None) -> Any:
    if not stream:
        return httpx.Response(200, json=fakes.completion(usage_=usage))
    return fakes.sse_response(
        fakes.sse(
            fakes.chunk("Hi", role="assistant"),
            fakes.chunk(finish_reason="stop"),
            fakes.chunk(usage_=usage or fakes.usage()),
        )
    )


@pytest.mark.parametrize("stream", [True, False])
async def test_openai_user_parts_on_the_wire(provider, router, fakes, stream) -> None:
    route = router.post(fakes.CHAT_URL).mock(return_value=openai_reply(fakes, stream))
    question = Message(
        "user",
        [
            "Compare these.",
            ImagePart(PNG, detail="low"),
            ImagePart(url="https://example.com/cat.jpg"),
            AudioPart(WAV, "wav"),
            DocumentPart(PDF),
            DocumentPart(file_id="file-abc", filename="report.pdf"),
        ],
    )
    await answer(provider, ProviderRequest([Message("system", "Be brief."), question]), stream)

    body = sent(route)
    fakes.validate_request(body, stream=stream)
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Compare these."},
                {
                    "type": "image_url",
                    "image_url": {"url": f"data:image/png;base64,{b64(PNG)}", "detail": "low"},
                },
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                {"type": "input_audio", "input_audio": {"data": b64(WAV), "format": "wav"}},
                {
                    "type": "file",
                    "file": {
                        "file_data": f"data:application/pdf;base64,{b64(PDF)}",
                        "filename": "document.pdf",  # the API wants a name with the data
                    },
                },
                {"type": "file", "file": {"file_id": "file-abc", "filename": "report.pdf"}},
            ],
        },
    ]


async def test_openai_sends_text_parts_of_other_roles_as_text_and_drops_thinking(
    provider, router, fakes
) -> None:
    route = router.post(fakes.CHAT_URL).mock(return_value=openai_reply(fakes, True))
    thought = ThinkingPart("Use the tool.", "sig-A", provider="anthropic")
    history = [
        Message("system", ["Be ", TextPart("brief.")]),
        Message("user", "Weather?"),
        Message("assistant", [thought], [ToolCall("call_1", "weather", "{}")]),
        Message("tool", ["18", "C"], tool_call_id="call_1"),
        Message("assistant", [thought, TextPart("It is 18C.")]),
        Message("user", [thought, TextPart("Thanks")]),
    ]
    await collect(provider, ProviderRequest(history))
    body = sent(route)
    fakes.validate_request(body, stream=True)
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "content": "18C", "tool_call_id": "call_1"},
        {"role": "assistant", "content": "It is 18C."},
        {"role": "user", "content": [{"type": "text", "text": "Thanks"}]},
    ]
    assert "sig-A" not in route.calls.last.request.content.decode()


@pytest.mark.parametrize(
    ("message", "error", "words"),
    [
        (Message("user", [ImagePart(file_id="file-1")]), UnsupportedContentError, "file_id"),
        (
            Message("user", [DocumentPart(url="https://example.com/a.pdf")]),
            UnsupportedContentError,
            "document by URL",
        ),
        (Message("user", [AudioPart(WAV, "ogg")]), UnsupportedContentError, "wav or mp3"),
        (
            Message("user", [ImagePart(blob_key="sha256-1")]),
            InvalidMessageError,
            "BlobOffloadStore",
        ),
        (
            Message("user", [AudioPart(blob_key="sha256-2")]),
            InvalidMessageError,
            "BlobOffloadStore",
        ),
        (Message("system", ["Look", ImagePart(PNG)]), UnsupportedContentError, "system messages"),
        (
            Message("tool", [ImagePart(PNG)], tool_call_id="c1"),
            UnsupportedContentError,
            "tool messages",
        ),
        (Message("assistant", [DocumentPart(PDF)]), UnsupportedContentError, "assistant"),
    ],
)
async def test_openai_refuses_what_it_cannot_take_before_sending(
    provider, router, fakes, message, error, words
) -> None:
    route = router.post(fakes.CHAT_URL).mock(return_value=openai_reply(fakes, True))
    await refused(provider, route, ProviderRequest([Message("user", "Hi"), message]), error, words)


@pytest.mark.parametrize("stream", [True, False])
async def test_openai_reasoning_tokens_in_usage_and_cost(provider, router, fakes, stream) -> None:
    router.post(fakes.CHAT_URL).mock(
        return_value=openai_reply(fakes, stream, openai_usage(100, 250, 200))
    )
    response = await answer(provider, ProviderRequest([Message("user", "Think.")]), stream)
    assert response.usage == Usage(100, 250, 350, reasoning_tokens=200)
    assert response.thinking == ()  # Chat Completions returns no reasoning text
    price = lookup_pricing("gpt-4o-mini")
    assert price is not None
    assert response.cost.output_cost == pytest.approx(250 * price.output_per_mtok / 1e6)


def compatible_reasoning(fakes: Any, field: str, stream: bool, value: Any = None) -> Any:
    """A compatible server's answer whose reasoning comes in ``field`` (DeepSeek and
    vLLM: ``reasoning_content``; OpenRouter, newer vLLM: ``reasoning``), before the text:
    streamed in two pieces, or whole; ``value`` replaces the reasoning when given."""
    if not stream:
        body = {
            "id": "chatcmpl-r1",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "deepseek-reasoner",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": "9.11 < 9.9",
                        field: "Compare 11 and 90 hundredths." if value is None else value,
                    },
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 30, "total_tokens": 40},
        }
        return httpx.Response(200, json=body)
    first, second = ("Compare 11 and ", "90 hundredths.") if value is None else (value, "")
    return fakes.sse_response(
        fakes.sse(
            fakes.reasoning_chunk(first, field),
            fakes.reasoning_chunk(second, field),
            fakes.chunk("9.11 < 9.9"),
            fakes.chunk(finish_reason="stop"),
            fakes.chunk(usage_=openai_usage(10, 30, 0)),
        )
    )


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_a_compatible_servers_reasoning_text_is_kept_and_not_sent_back(
    provider, router, fakes, stream, field
) -> None:
    route = router.post(fakes.CHAT_URL).mock(
        return_value=compatible_reasoning(fakes, field, stream)
    )
    question = Message("user", "Which is larger, 9.11 or 9.9?")
    if stream:
        chunks = await collect(provider, ProviderRequest([question]))
        # The reasoning streams first, apart from the reply's text.
        assert [(c.thinking, c.delta) for c in chunks[:-1]] == [
            ("Compare 11 and ", ""),
            ("90 hundredths.", ""),
            ("", "9.11 < 9.9"),
        ]
        response = chunks[-1].response
        assert response is not None
    else:
        response = await provider.complete(ProviderRequest([question]))
    assert response.content == "9.11 < 9.9"
    assert response.thinking == (ThinkingPart("Compare 11 and 90 hundredths.", provider="openai"),)
    reply = response.to_message()
    assert reply.content == (
        ThinkingPart("Compare 11 and 90 hundredths.", provider="openai"),
        TextPart("9.11 < 9.9"),
    )
    # The next turn sends the reply's text only: DeepSeek refuses reasoning sent back.
    route.mock(return_value=openai_reply(fakes, stream))
    await answer(provider, ProviderRequest([question, reply, Message("user", "Why?")]), stream)
    body = sent(route)
    fakes.validate_request(body, stream=stream)
    assert body["messages"][1] == {"role": "assistant", "content": "9.11 < 9.9"}
    assert "hundredths" not in route.calls.last.request.content.decode()


@pytest.mark.parametrize("stream", [True, False])
async def test_reasoning_content_of_the_wrong_type_is_an_api_response_error(
    provider, router, fakes, stream
) -> None:
    router.post(fakes.CHAT_URL).mock(
        return_value=compatible_reasoning(fakes, "reasoning_content", stream, value=["not", "text"])
    )
    with pytest.raises(APIResponseError, match="reasoning_content is list"):
        await answer(provider, ProviderRequest([Message("user", "Think.")]), stream)


@pytest.mark.parametrize("stream", [True, False])
async def test_a_reasoning_object_is_ignored(provider, router, fakes, stream) -> None:
    # Some servers use "reasoning" for an object (effort, summary...): not text to keep.
    router.post(fakes.CHAT_URL).mock(
        return_value=compatible_reasoning(fakes, "reasoning", stream, value={"effort": "low"})
    )
    response = await answer(provider, ProviderRequest([Message("user", "Think.")]), stream)
    assert response.content == "9.11 < 9.9"
    assert response.thinking == ()
    assert response.to_message().content == "9.11 < 9.9"


# --- Anthropic ----------------------------------------------------------------------------


def a_message(*blocks: Any, stop_reason: str = "end_turn") -> dict[str, Any]:
    message = anthropic_types.Message(
        id="msg_01T",
        type="message",
        role="assistant",
        model="claude-sonnet-4-5-20250929",
        content=list(blocks),
        stop_reason=stop_reason,  # type: ignore[arg-type]
        stop_sequence=None,
        usage=anthropic_types.Usage(input_tokens=10, output_tokens=40),
    )
    return json.loads(message.model_dump_json())


SIGNATURE = "EqQBCkgIARABGAIiQL2Z+signature/of+the+thinking=="
REDACTED = "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlx"


def a_thinking_reply(afakes: Any, stream: bool) -> Any:
    if stream:
        return afakes.sse_response(
            afakes.start()
            + afakes.thinking_block(0, "The user wants ", "a greeting.", signature=SIGNATURE)
            + afakes.redacted_block(1, REDACTED)
            + afakes.text_block(2, "Hello", " there!")
            + afakes.finish("end_turn", 40)
        )
    return httpx.Response(
        200,
        json=a_message(
            anthropic_types.ThinkingBlock(
                type="thinking", thinking="The user wants a greeting.", signature=SIGNATURE
            ),
            anthropic_types.RedactedThinkingBlock(type="redacted_thinking", data=REDACTED),
            anthropic_types.TextBlock(type="text", text="Hello there!"),
        ),
    )


@pytest.mark.parametrize("stream", [True, False])
async def test_anthropic_parts_on_the_wire(anthropic_provider, router, afakes, stream) -> None:
    reply = afakes.sse_response(afakes.hello_stream()) if stream else None
    route = router.post(afakes.URL).mock(
        return_value=reply or httpx.Response(200, json=afakes.message())
    )
    history = [
        Message(
            "user",
            [
                "Read these.",
                ImagePart(PNG),
                ImagePart(url="https://example.com/cat.jpg"),
                ImagePart(file_id="file_011"),
                DocumentPart(PDF, filename="report.pdf"),
                DocumentPart(url="https://example.com/a.pdf"),
                DocumentPart(b"plain words", media_type="text/plain"),
                DocumentPart(file_id="file_022"),
            ],
        ),
        Message("assistant", "", [ToolCall("toolu_1", "chart", "{}")]),
        Message("tool", ["The chart:", ImagePart(PNG)], tool_call_id="toolu_1"),
    ]
    await answer(anthropic_provider, ProviderRequest(history), stream)
    body = sent(route)
    afakes.validate_request(body, stream=stream)
    png = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": b64(PNG)},
    }
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Read these."},
                png,
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                {"type": "image", "source": {"type": "file", "file_id": "file_011"}},
                {
                    "type": "document",
                    "source": {"type": "base64", "media_type": "application/pdf", "data": b64(PDF)},
                    "title": "report.pdf",
                },
                {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}},
                {
                    "type": "document",
                    "source": {"type": "text", "media_type": "text/plain", "data": "plain words"},
                },
                {"type": "document", "source": {"type": "file", "file_id": "file_022"}},
            ],
        },
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "chart", "input": {}}],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": "The chart:"}, png],
                }
            ],
        },
    ]


@pytest.mark.parametrize(
    ("message", "error", "words"),
    [
        (Message("user", ["Hear", AudioPart(WAV)]), UnsupportedContentError, "cannot carry audio"),
        (
            Message("user", [ImagePart(b"BM\x00\x00", media_type="image/bmp")]),
            UnsupportedContentError,
            "JPEG, PNG, GIF or WebP",
        ),
        (
            Message("user", [DocumentPart(b"PK\x03\x04", media_type="application/zip")]),
            UnsupportedContentError,
            "application/pdf or text/plain",
        ),
        (
            Message("user", [DocumentPart(blob_key="sha256-1")]),
            InvalidMessageError,
            "BlobOffloadStore",
        ),
        (Message("system", ["Look", ImagePart(PNG)]), UnsupportedContentError, "system messages"),
    ],
)
async def test_anthropic_refuses_what_it_cannot_take_before_sending(
    anthropic_provider, router, afakes, message, error, words
) -> None:
    route = router.post(afakes.URL).mock(return_value=httpx.Response(200, json=afakes.message()))
    request = ProviderRequest([message, Message("user", "Hi")])
    await refused(anthropic_provider, route, request, error, words)


@pytest.mark.parametrize("stream", [True, False])
async def test_anthropic_thinking_is_kept_on_the_response(
    anthropic_provider, router, afakes, stream
) -> None:
    router.post(afakes.URL).mock(return_value=a_thinking_reply(afakes, stream))
    request = ProviderRequest([Message("user", "Hi")])
    if stream:
        chunks = await collect(anthropic_provider, request)
        # Reasoning streams apart from the reply text, first.
        assert [c.delta for c in chunks[:-1] if c.delta] == ["Hello", " there!"]
        thinking = [c.thinking for c in chunks[:-1] if c.thinking]
        assert "".join(thinking) == "The user wants a greeting."
        assert chunks[len(thinking)].delta == "Hello"
        assert not any(c.thinking and c.delta for c in chunks)
        response = chunks[-1].response
        assert response is not None
    else:
        response = await anthropic_provider.complete(request)
    assert response.content == "Hello there!"
    assert response.thinking == (
        ThinkingPart("The user wants a greeting.", SIGNATURE, provider="anthropic"),
        ThinkingPart(redacted=REDACTED, provider="anthropic"),
    )
    assert response.to_message().content == (*response.thinking, TextPart("Hello there!"))
    assert response.usage.reasoning_tokens == 0  # Anthropic does not count it apart


async def test_anthropic_replays_only_its_own_signed_thinking_in_assistant_turns(
    anthropic_provider, router, afakes
) -> None:
    route = router.post(afakes.URL).mock(return_value=httpx.Response(200, json=afakes.message()))
    mine = ThinkingPart("Greet.", SIGNATURE, provider="anthropic")
    history = [
        Message("user", [ThinkingPart("a user's thought", "s", provider="anthropic"), "Hi"]),
        Message(
            "assistant",
            [
                mine,
                ThinkingPart(redacted=REDACTED, provider="anthropic"),
                ThinkingPart("Gemini's", "g-sig", provider="gemini"),
                ThinkingPart("unsigned"),
                TextPart("Hello!"),
            ],
        ),
        Message("user", "Again"),
    ]
    await anthropic_provider.complete(ProviderRequest(history))
    body = sent(route)
    afakes.validate_request(body, stream=False)
    assert body["messages"] == [
        {"role": "user", "content": "Hi"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Greet.", "signature": SIGNATURE},
                {"type": "redacted_thinking", "data": REDACTED},
                {"type": "text", "text": "Hello!"},
            ],
        },
        {"role": "user", "content": "Again"},
    ]


# --- Gemini -------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
async def test_gemini_parts_on_the_wire(gemini_provider, router, gfakes, stream) -> None:
    reply = gfakes.response(gfakes.text("Seen."))
    if stream:
        route = router.post(gfakes.STREAM_URL).mock(
            return_value=gfakes.sse_response(gfakes.sse(reply))
        )
    else:
        route = router.post(gfakes.URL).mock(return_value=httpx.Response(200, json=reply))
    question = Message(
        "user",
        [
            "Look.",
            ImagePart(PNG),
            ImagePart(url="https://example.com/cat.jpg", media_type="image/jpeg"),
            ImagePart(file_id="files/abc123", media_type="image/png"),
            ImagePart(url=f"data:image/png;base64,{b64(PNG)}"),
            DocumentPart(PDF, filename="report.pdf"),
            DocumentPart(url="gs://bucket/a.pdf"),
            AudioPart(WAV, "wav"),
            AudioPart(b"ID3\x03\x00", "mp3"),
        ],
    )
    await answer(gemini_provider, ProviderRequest([question]), stream)
    body = sent(route)
    gfakes.validate_request(body)
    files = "https://generativelanguage.googleapis.com/v1beta/files/abc123"
    png = {"inlineData": {"mimeType": "image/png", "data": b64(PNG)}}
    assert body["contents"] == [
        {
            "role": "user",
            "parts": [
                {"text": "Look."},
                png,
                {"fileData": {"fileUri": "https://example.com/cat.jpg", "mimeType": "image/jpeg"}},
                {"fileData": {"fileUri": files, "mimeType": "image/png"}},
                png,
                {"inlineData": {"mimeType": "application/pdf", "data": b64(PDF)}},
                {"fileData": {"fileUri": "gs://bucket/a.pdf", "mimeType": "application/pdf"}},
                {"inlineData": {"mimeType": "audio/wav", "data": b64(WAV)}},
                {"inlineData": {"mimeType": "audio/mp3", "data": b64(b"ID3\x03\x00")}},
            ],
        }
    ]


@pytest.mark.parametrize(
    ("message", "error", "words"),
    [
        (Message("user", [AudioPart(WAV, "opus")]), UnsupportedContentError, "not 'opus'"),
        (
            Message("user", [ImagePart(blob_key="sha256-1")]),
            InvalidMessageError,
            "BlobOffloadStore",
        ),
        (Message("system", ["Look", ImagePart(PNG)]), UnsupportedContentError, "system messages"),
        (
            Message("user", [ImagePart(url="data:image/png,raw")]),
            UnsupportedContentError,
            "base64",
        ),
    ],
)
async def test_gemini_refuses_what_it_cannot_take_before_sending(
    gemini_provider, router, gfakes, message, error, words
) -> None:
    route = router.route(host="generativelanguage.googleapis.com").mock(
        return_value=httpx.Response(200, json=gfakes.response(gfakes.text("x")))
    )
    request = ProviderRequest([message, Message("user", "Hi")])
    await refused(gemini_provider, route, request, error, words)


async def test_gemini_refuses_media_in_a_tool_result(gemini_provider, router, gfakes) -> None:
    route = router.route(host="generativelanguage.googleapis.com").mock(
        return_value=httpx.Response(200, json=gfakes.response(gfakes.text("x")))
    )
    history = [
        Message("user", "Chart?"),
        Message("assistant", "", [ToolCall("c1", "chart", "{}")]),
        Message("tool", [ImagePart(PNG)], tool_call_id="c1", name="chart"),
    ]
    await refused(gemini_provider, route, ProviderRequest(history), UnsupportedContentError, "tool")


THOUGHT_SIG = b"thought-signature-\xff\xfe"
TEXT_SIG = b"text-signature-\x00\x01\xfb"


def sig(data: bytes) -> str:
    """A signature as the fake Gemini sends it (google-genai dumps bytes URL-safe)."""
    return base64.urlsafe_b64encode(data).decode("ascii")


@pytest.mark.parametrize("stream", [True, False])
async def test_gemini_thoughts_and_signatures_are_kept_and_replayed(
    gemini_provider, router, gfakes, stream
) -> None:
    usage = gfakes.usage(10, 5, thoughts=30)
    if stream:
        body = gfakes.sse(
            gfakes.response(gfakes.text("Let me ", thought=True), finish=None),
            gfakes.response(
                genai_types.Part(text="think.", thought=True, thought_signature=THOUGHT_SIG),
                finish=None,
            ),
            gfakes.response(gfakes.text("Hello"), finish=None),
            gfakes.response(gfakes.text(" there")),
            # Gemini may send the answer's signature last, on an empty part.
            gfakes.response(genai_types.Part(text="", thought_signature=TEXT_SIG), usage_=usage),
        )
        route = router.post(gfakes.STREAM_URL).mock(return_value=gfakes.sse_response(body))
    else:
        payload = gfakes.response(
            gfakes.text("Let me think.", thought=True),
            genai_types.Part(thought_signature=THOUGHT_SIG, thought=True),
            genai_types.Part(text="Hello there", thought_signature=TEXT_SIG),
            usage_=usage,
        )
        route = router.post(gfakes.URL).mock(return_value=httpx.Response(200, json=payload))
    request = ProviderRequest([Message("user", "Hi")])
    if stream:
        chunks = await collect(gemini_provider, request)
        assert "".join(c.delta for c in chunks) == "Hello there"  # thoughts are not text
        response = chunks[-1].response
        assert response is not None
    else:
        response = await gemini_provider.complete(request)
    assert response.content == "Hello there"
    assert response.thinking == (
        ThinkingPart("Let me think.", sig(THOUGHT_SIG), provider="gemini"),
        ThinkingPart("", sig(TEXT_SIG), provider="gemini"),
    )
    assert response.usage == Usage(10, 35, 45, reasoning_tokens=30)

    # The next request sends the thought back, and the text's signature on the text.
    history = [Message("user", "Hi"), response.to_message(), Message("user", "Again")]
    if stream:
        await collect(gemini_provider, ProviderRequest(history))
    else:
        route.mock(return_value=httpx.Response(200, json=gfakes.response(gfakes.text("x"))))
        await gemini_provider.complete(ProviderRequest(history))
    body = sent(route)
    gfakes.validate_request(body)
    assert body["contents"][1] == {
        "role": "model",
        "parts": [
            {"text": "Let me think.", "thought": True, "thoughtSignature": sig(THOUGHT_SIG)},
            {"text": "Hello there", "thoughtSignature": sig(TEXT_SIG)},
        ],
    }


async def test_gemini_signature_after_the_calls_goes_back_on_the_first_call(
    gemini_provider, router, gfakes
) -> None:
    body = gfakes.sse(
        gfakes.response(gfakes.call("get_weather", {"city": "Paris"}), finish=None),
        gfakes.response(gfakes.call("get_weather", {"city": "Oslo"}), finish=None),
        gfakes.response(genai_types.Part(text="", thought_signature=TEXT_SIG)),
    )
    route = router.post(gfakes.STREAM_URL).mock(return_value=gfakes.sse_response(body))
    chunks = await collect(gemini_provider, ProviderRequest([Message("user", "Weather?")]))
    response = chunks[-1].response
    assert response is not None
    assert response.thinking == ()
    history = [
        Message("user", "Weather?"),
        response.to_message(),
        *(
            Message("tool", "18C", tool_call_id=call.id, name=call.name)
            for call in response.tool_calls
        ),
    ]
    await collect(gemini_provider, ProviderRequest(history))
    replay = sent(route)
    gfakes.validate_request(replay)
    assert replay["contents"][1]["parts"] == [
        {
            "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
            "thoughtSignature": sig(TEXT_SIG),
        },
        {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}},
    ]


async def test_gemini_leaves_other_providers_thinking_out(gemini_provider, router, gfakes) -> None:
    route = router.post(gfakes.URL).mock(
        return_value=httpx.Response(200, json=gfakes.response(gfakes.text("x")))
    )
    history = [
        Message("user", [ThinkingPart("mine?", "s", provider="gemini"), TextPart("Hi")]),
        Message("assistant", [ThinkingPart("Claude's", SIGNATURE, provider="anthropic"), "Hello"]),
        Message("user", "Again"),
    ]
    await gemini_provider.complete(ProviderRequest(history))
    body = sent(route)
    gfakes.validate_request(body)
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "Hi"}]},
        {"role": "model", "parts": [{"text": "Hello"}]},
        {"role": "user", "parts": [{"text": "Again"}]},
    ]


async def test_gemini_a_lone_signature_goes_back_where_it_came(gemini_provider, router, gfakes):
    # The first call has its own signature, so the empty part's goes back as it came:
    # an empty part after the calls.
    body = gfakes.sse(
        gfakes.response(gfakes.call("f", {}, signature=THOUGHT_SIG), finish=None),
        gfakes.response(genai_types.Part(text="", thought_signature=TEXT_SIG)),
    )
    route = router.post(gfakes.STREAM_URL).mock(return_value=gfakes.sse_response(body))
    response = (await collect(gemini_provider, ProviderRequest([Message("user", "Go")])))[-1]
    assert response.response is not None
    reply = response.response.to_message()
    assert reply.content == (ThinkingPart("", sig(TEXT_SIG), provider="gemini"),)
    call = reply.tool_calls[0]
    history = [Message("user", "Go"), reply, Message("tool", "ok", tool_call_id=call.id, name="f")]
    await collect(gemini_provider, ProviderRequest(history))
    replay = sent(route)
    gfakes.validate_request(replay)
    assert replay["contents"][1]["parts"] == [
        {"functionCall": {"name": "f", "args": {}}, "thoughtSignature": sig(THOUGHT_SIG)},
        {"text": "", "thoughtSignature": sig(TEXT_SIG)},
    ]


# --- reasoning of the wrong shape ---------------------------------------------------------


@pytest.mark.parametrize(
    "block",
    [
        b'event: content_block_start\ndata: {"type": "content_block_start", "index": 0, '
        b'"content_block": {"type": "redacted_thinking"}}\n\n',
        b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, '
        b'"delta": {"type": "thinking_delta", "thinking": 42}}\n\n',
        b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, '
        b'"delta": {"type": "signature_delta", "signature": ["x"]}}\n\n',
    ],
)
async def test_anthropic_thinking_of_the_wrong_shape_is_an_api_response_error(
    anthropic_provider, router, afakes, block
) -> None:
    router.post(afakes.URL).mock(
        return_value=afakes.sse_response(afakes.start() + block + afakes.finish())
    )
    with pytest.raises(APIResponseError, match="does not have the expected shape"):
        await collect(anthropic_provider, ProviderRequest([Message("user", "Hi")]))


async def test_gemini_a_thought_of_the_wrong_shape_is_an_api_response_error(
    gemini_provider, router, gfakes
) -> None:
    payload = gfakes.response(gfakes.text("x"))
    payload["candidates"][0]["content"]["parts"] = [{"text": 7, "thought": True}]
    router.post(gfakes.URL).mock(return_value=httpx.Response(200, json=payload))
    with pytest.raises(APIResponseError, match="thought part's text is int"):
        await gemini_provider.complete(ProviderRequest([Message("user", "Hi")]))
