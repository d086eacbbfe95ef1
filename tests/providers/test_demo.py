"""DemoProvider: a stateless rule-based model whose memory is the pipeline's."""

from __future__ import annotations

import pytest

from promptkit_async import (
    DemoProvider,
    InMemoryStateStore,
    Message,
    Pipeline,
    ProviderMiddleware,
    ProviderRequest,
    StateMiddleware,
)
from promptkit_async.providers.demo import answer

TUTORIAL = [
    ("My name is Alice", "Hello Alice! It's nice to meet you."),
    ("What's my name?", "Your name is Alice."),
    ("I love pizza", "That's great! Pizza is delicious."),
    ("What food do I love?", "You mentioned that you love pizza!"),
]


async def test_tutorial_conversation_through_a_pipeline() -> None:
    store = InMemoryStateStore()
    async with Pipeline(StateMiddleware(store), ProviderMiddleware(DemoProvider())) as pipe:
        for said, expected in TUTORIAL:
            result = await pipe.execute("s", "user", said)
            assert result.response.content == expected
    assert len(await store.load("s")) == 8


async def test_memory_is_the_pipelines_not_the_models() -> None:
    provider = DemoProvider()
    # Without StateMiddleware nothing is remembered between turns...
    async with Pipeline(ProviderMiddleware(provider)) as pipe:
        await pipe.execute("s", "user", "My name is Alice")
        result = await pipe.execute("s", "user", "What's my name?")
    assert result.response.content.startswith("I don't know your name")
    # ...and the same messages always get the same answer: no hidden state.
    messages = [Message("user", "My name is Alice"), Message("user", "What's my name?")]
    first = await provider.complete(ProviderRequest(messages))
    again = await provider.complete(ProviderRequest(messages))
    assert first.content == again.content == "Your name is Alice."


@pytest.mark.parametrize(
    ("said", "asked", "expected"),
    [
        ("I live in Paris", "Where do I live?", "You told me you live in Paris."),
        ("I work as a teacher", "What do I do?", "You told me you work as a teacher."),
        ("I like jazz", "What do I like?", "You mentioned that you like jazz!"),
        (
            "My favourite colour is blue",
            "What's my favourite colour?",
            "Your favourite colour is blue.",
        ),
        ("Call me Ishmael.", "Who am I?", "Your name is Ishmael."),
    ],
)
def test_other_facts(said: str, asked: str, expected: str) -> None:
    assert answer([Message("user", said), Message("user", asked)]) == expected


def test_latest_statement_wins_and_questions_state_nothing() -> None:
    messages = [
        Message("user", "My name is Alice"),
        Message("user", "Is my name is Bob?"),
        Message("user", "My name is Carol"),
        Message("user", "What's my name?"),
    ]
    assert answer(messages) == "Your name is Carol."


def test_generic_reply_and_persona() -> None:
    reply = answer([Message("user", "What is the capital of France?")])
    assert "demo model" in reply
    persona = [Message("system", "You are a pirate."), Message("user", "hello")]
    assert answer(persona).startswith("Arr! Hello!")


async def test_stream_chunks_usage_and_cost() -> None:
    provider = DemoProvider(model="gpt-4o-mini")
    request = ProviderRequest([Message("user", "My name is Alice")])
    chunks = [chunk async for chunk in provider.stream(request)]
    *deltas, last = chunks
    assert [c.delta for c in deltas][:3] == ["Hello ", "Alice! ", "It's "]  # word by word
    assert "".join(c.delta for c in deltas) == "Hello Alice! It's nice to meet you."
    assert last.response is not None
    assert last.response.content == "Hello Alice! It's nice to meet you."
    assert last.response.usage.prompt_tokens > 0
    assert last.response.usage.completion_tokens > 0
    # Named after a priced model, it costs what that model would.
    assert last.response.cost.total_cost > 0
    assert last.response.time_to_first_chunk is not None


async def test_default_demo_model_is_free() -> None:
    response = await DemoProvider().complete(ProviderRequest([Message("user", "hi")]))
    assert response.cost.total_cost == 0
    assert response.cost.priced


def test_rejects_negative_delay() -> None:
    with pytest.raises(ValueError, match="chunk_delay"):
        DemoProvider(chunk_delay=-1)


def test_attachments_are_acknowledged_not_read() -> None:
    from promptkit_async import AudioPart, DocumentPart, ImagePart

    png = bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201e221bc330000000049454e44ae426082"
    )
    # A question the demo cannot answer: the acknowledgement is the whole reply.
    assert answer([Message("user", ["What is in this picture?", ImagePart(png)])]) == (
        "You sent me an image (PNG, 1x1). I'm an offline demo model, so I can't look "
        "inside it, but it stays in the conversation's history."
    )
    # A statement it understands: acknowledged, then answered as usual.
    reply = answer(
        [
            Message(
                "user",
                [
                    "My name is Bob",
                    DocumentPart(b"%PDF-1.4", filename="report.pdf"),
                    AudioPart(b"RIFF0000WAVE", format="wav"),
                ],
            )
        ]
    )
    assert reply.startswith("You sent me a document (report.pdf) and an audio clip (wav).")
    assert reply.endswith("Hello Bob! It's nice to meet you.")
    # Text alone: unchanged.
    assert answer([Message("user", "My name is Bob")]) == "Hello Bob! It's nice to meet you."
