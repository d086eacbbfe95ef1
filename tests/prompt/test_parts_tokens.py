"""Token counts and trimming for messages with content parts."""

from __future__ import annotations

import struct

import pytest

from promptkit_async import (
    AudioPart,
    DocumentPart,
    ImagePart,
    Message,
    TextPart,
    ThinkingPart,
    TokenBudgetExceededError,
)
from promptkit_async.prompt import (
    AUDIO_TOKENS_PER_SECOND,
    DEFAULT_AUDIO_SECONDS,
    DEFAULT_DOCUMENT_PAGES,
    DOCUMENT_TOKENS_PER_PAGE,
    TOKENS_PER_MESSAGE,
    count_message_tokens,
    get_tokenizer,
    image_tokens,
    truncate_messages,
)
from promptkit_async.statestore.records import decode_message, encode_message
from tests.statestore._records import PDF, PNG, WAV

MODEL = "gpt-4o"


def png(width: int, height: int) -> bytes:
    # Only the header matters for counting.
    return PNG[:16] + struct.pack(">II", width, height) + PNG[24:]


@pytest.mark.parametrize(
    ("size", "detail", "tokens"),
    [
        # OpenAI's published examples (vision guide, "Calculating costs").
        ((1024, 1024), "high", 765),
        ((2048, 4096), "high", 1105),
        ((4096, 8192), "low", 85),
        # Small images are not scaled up: one tile.
        ((100, 100), "high", 255),
        ((100, 100), "auto", 255),
        ((100, 100), None, 255),
        # Only the 2048 fit applies when the short side is already <= 768.
        ((4000, 500), "high", 85 + 170 * 4 * 1),
    ],
)
def test_image_formula(size: tuple[int, int], detail: str | None, tokens: int) -> None:
    assert image_tokens(*size, detail) == tokens  # type: ignore[arg-type]


def test_a_message_with_parts_counts_text_plus_each_part() -> None:
    tok = get_tokenizer(MODEL)
    text = "What is in this image?"
    message = Message("user", [TextPart(text), ImagePart(png(1024, 1024), detail="high")])
    expected = TOKENS_PER_MESSAGE + tok.count("user") + tok.count(text) + 765
    assert tok.count_message(message) == expected
    assert count_message_tokens([message], MODEL) == expected + 3
    # The same image, low detail.
    low = Message("user", [TextPart(text), ImagePart(png(1024, 1024), detail="low")])
    assert tok.count_message(low) == expected - 765 + 85


def test_each_part_kind_has_a_documented_count() -> None:
    tok = get_tokenizer(MODEL)
    assert tok.count_part(ImagePart(url="https://x/a.png")) == 765  # DEFAULT_IMAGE_SIZE
    assert tok.count_part(ImagePart(url="https://x/a.png", width=2048, height=4096)) == 1105
    assert tok.count_part(ImagePart(png(2, 3))) == 255
    assert tok.count_part(DocumentPart(PDF)) == DOCUMENT_TOKENS_PER_PAGE
    assert tok.count_part(DocumentPart(url="https://x/a.pdf")) == (
        DEFAULT_DOCUMENT_PAGES * DOCUMENT_TOKENS_PER_PAGE
    )
    notes = "Meeting notes: ship it."
    assert tok.count_part(DocumentPart(notes.encode(), media_type="text/plain")) == tok.count(notes)
    assert tok.count_part(AudioPart(WAV)) == 1  # 16 samples at 8 kHz: ceil(0.002 s * 10)
    assert tok.count_part(AudioPart(bytes(160_000), "mp3")) == 10 * AUDIO_TOKENS_PER_SECOND
    assert (
        tok.count_part(AudioPart(blob_key="k")) == DEFAULT_AUDIO_SECONDS * AUDIO_TOKENS_PER_SECOND
    )
    assert tok.count_part(ThinkingPart("let me think")) == tok.count("let me think")
    assert tok.count_part(ThinkingPart(redacted="x" * 40)) == 10


def test_the_stored_annotation_follows_the_parts() -> None:
    tok = get_tokenizer(MODEL)
    message = Message("user", [TextPart("hi"), ImagePart(png(1024, 1024))])
    annotated = decode_message(encode_message(tok.annotate(message)))
    assert tok.count_message(annotated) == tok.count_message(message)
    # The annotation is trusted only while the parts are unchanged.
    forged = dict(annotated.metadata)
    forged["promptkit.tokens"] = dict(forged["promptkit.tokens"], o200k_base=1)
    assert tok.count_message(Message("user", message.content, metadata=forged)) == 1
    changed = [TextPart("hi"), ImagePart(png(1024, 1024) + b"x")]
    assert tok.count_message(Message("user", changed, metadata=forged)) > 1


def test_trimming_keeps_or_drops_a_message_with_parts_whole() -> None:
    big = Message("user", [TextPart("old photo"), ImagePart(png(2048, 2048))])
    history = [
        Message("system", "sys"),
        big,
        Message("assistant", "nice"),
        Message("user", "and now?"),
    ]
    tok = get_tokenizer(MODEL)
    everything = count_message_tokens(history, MODEL)
    assert truncate_messages(history, everything, model=MODEL) == history
    kept = truncate_messages(history, everything - 1, model=MODEL)
    # The image message cannot be cut down: it goes, whole, with the reply after it
    # (a kept run never starts on an assistant message when a user message follows).
    assert kept == [history[0], history[3]]
    assert big.content[1] not in [p for m in kept for p in m.parts]
    assert tok.count_message(big) > 700


def test_a_huge_part_in_the_current_turn_says_what_to_do() -> None:
    turn = Message("user", [TextPart("read this"), DocumentPart(PDF * 1, filename="a.pdf")])
    with pytest.raises(TokenBudgetExceededError, match="DocumentPart content, counted whole"):
        truncate_messages([Message("system", "sys"), turn], 500, model=MODEL)
    with pytest.raises(TokenBudgetExceededError) as info:
        truncate_messages([Message("user", "x" * 5000)], 500, model=MODEL)
    assert "counted whole" not in str(info.value)


def test_the_summary_transcript_names_media_without_their_bytes() -> None:
    from promptkit_async.prompt._summary import render_transcript

    transcript = render_transcript(
        [
            Message("user", ["Look:", ImagePart(PNG), DocumentPart(PDF, filename="q3.pdf")]),
            Message("assistant", [ThinkingPart("secret plan"), TextPart("A chart.")]),
            Message("tool", [AudioPart(WAV)], tool_call_id="c1"),
        ]
    )
    assert transcript == (
        "user: Look: [image] [document q3.pdf]\nassistant: A chart.\ntool result (c1): [audio]"
    )
