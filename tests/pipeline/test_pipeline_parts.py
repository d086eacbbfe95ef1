"""pipe.execute / pipe.stream take content parts as well as a string."""

from __future__ import annotations

from typing import Any

import pytest

from promptkit_async import (
    ContextWindowMiddleware,
    DocumentPart,
    ImagePart,
    InMemoryStateStore,
    InvalidMessageError,
    Message,
    MockProvider,
    Pipeline,
    ProviderMiddleware,
    ProviderRequest,
    StateMiddleware,
    TextPart,
)
from tests.statestore._records import PDF, PNG

PARTS = [TextPart("What is this?"), ImagePart(PNG, detail="low"), DocumentPart(PDF)]


async def test_execute_stores_and_sends_the_parts(store: InMemoryStateStore) -> None:
    seen: list[Message] = []

    def handler(request: ProviderRequest) -> str:
        seen.extend(request.messages)
        return "a red square"

    pipe = Pipeline(StateMiddleware(store), ProviderMiddleware(MockProvider(handler=handler)))
    result = await pipe.execute("s", "user", PARTS)
    assert result.messages[0] == Message("user", tuple(PARTS))
    assert seen[-1].content == tuple(PARTS)
    assert await store.load("s") == [
        Message("user", tuple(PARTS)),
        Message("assistant", "a red square"),
    ]


async def test_stream_takes_parts_and_the_window_counts_them(store: InMemoryStateStore) -> None:
    pipe = Pipeline(
        StateMiddleware(store),
        ContextWindowMiddleware(max_tokens=100_000, model="gpt-4o"),
        ProviderMiddleware(MockProvider(handler=lambda r: "ok", model="gpt-4o")),
    )
    async with pipe.stream("s", "user", PARTS) as chunks:
        final = [c async for c in chunks][-1].final_result
    assert final is not None
    # Text, an 85-token low-detail image and a one-page PDF (1500) are all counted.
    assert final.estimated_prompt_tokens is not None
    assert final.estimated_prompt_tokens > 85 + 1500
    assert (await store.load("s"))[0].content == tuple(PARTS)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ([], "no parts"),
        ((), "no parts"),
        ({"type": "text", "text": "x"}, "str or a list of content parts, not dict"),
        (b"hi", "not bytes"),
        ([{"type": "text", "text": "x"}], "from_openai"),
        ([TextPart("ok"), 3], "not int"),
    ],
)
async def test_bad_parts_are_refused_before_any_io(
    pipeline: Pipeline, store: InMemoryStateStore, content: Any, match: str
) -> None:
    with pytest.raises(InvalidMessageError, match=match):
        await pipeline.execute("s", "user", content)
    with pytest.raises(InvalidMessageError, match=match):
        pipeline.stream("s", "user", content)
    assert await store.count("s") == 0
