"""Content parts in Message: construction, normalisation, checks, and media headers."""

from __future__ import annotations

import struct
from dataclasses import FrozenInstanceError
from typing import Any

import pytest

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
from promptkit_async._media import audio_seconds, image_media_type, image_size, pdf_pages
from tests.statestore._records import PDF, PNG, WAV


def test_text_content_stays_a_plain_str() -> None:
    message = Message("user", "hi")
    assert type(message.content) is str
    assert message.parts == (TextPart("hi"),)
    assert Message("user").parts == ()


def test_parts_are_stored_as_a_tuple_and_strings_become_text_parts() -> None:
    parts: list[Any] = ["look:", ImagePart(PNG)]
    message = Message("user", parts)
    parts.append("changed later")
    assert message.content == (TextPart("look:"), ImagePart(PNG))
    assert message.text == "look:"
    assert hash(message) == hash(Message("user", (TextPart("look:"), ImagePart(PNG))))
    with pytest.raises(FrozenInstanceError):
        message.content = "x"  # type: ignore[misc]


def test_none_and_empty_content_become_empty_text() -> None:
    assert Message("assistant", None).content == ""  # type: ignore[arg-type]
    assert Message("assistant", []).content == ""


def test_dict_tool_calls_become_tool_calls() -> None:
    message = Message(
        "assistant",
        None,  # type: ignore[arg-type]
        [
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}},
            {"id": "b", "name": "g", "arguments": {"y": [1, "ü"]}},
            ToolCall("c", "h"),
        ],  # type: ignore[list-item]
    )
    assert message.tool_calls == (
        ToolCall("a", "f", '{"x":1}'),
        ToolCall("b", "g", '{"y":[1,"ü"]}'),
        ToolCall("c", "h"),
    )


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (42, "str or a sequence of content parts, not int"),
        (b"bytes", "not bytes"),
        ({"type": "text"}, "not dict"),
        ([{"type": "text", "text": "x"}], "Message.from_openai"),
        ([1.5], "not float"),
    ],
)
def test_bad_content_raises_a_typed_error(content: Any, match: str) -> None:
    with pytest.raises(InvalidMessageError, match=match):
        Message("user", content)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: ImagePart(), "exactly one of data, url, file_id, blob_key \\(none given\\)"),
        (lambda: ImagePart(PNG, url="https://x"), "several given"),
        (lambda: ImagePart(b"not an image"), "pass media_type"),
        (lambda: ImagePart("aGk=", media_type="image/png"), "must be bytes, not str"),
        (lambda: ImagePart(url="https://x", detail="ultra"), "detail"),
        (lambda: ImagePart(url="https://x", width=0, height=1), "positive int"),
        (lambda: DocumentPart(), "exactly one"),
        (lambda: DocumentPart(bytearray(PDF)), "must be bytes"),
        (lambda: AudioPart(WAV, ""), "format is empty"),
        (lambda: AudioPart(), "exactly one of data, blob_key"),
        (lambda: TextPart(None), "must be a str"),
        (lambda: ThinkingPart("x", signature=b"s"), "signature must be a str"),
    ],
)
def test_bad_parts_raise_a_typed_error(make: Any, match: str) -> None:
    with pytest.raises(InvalidMessageError, match=match):
        make()


def test_an_image_knows_its_type_and_size_from_its_bytes() -> None:
    image = ImagePart(PNG)
    assert image.media_type == "image/png"
    assert image.size() == (2, 3)
    assert ImagePart(url="https://x").size() is None
    assert ImagePart(url="https://x", width=640, height=480).size() == (640, 480)


def test_reprs_never_print_the_bytes() -> None:
    big = PNG + bytes(1_000_000)
    text = repr(Message("user", [ImagePart(big), DocumentPart(PDF), AudioPart(WAV)]))
    assert f"data=<{len(big)} bytes>" in text
    assert len(text) < 500


# --- media headers ------------------------------------------------------------------------


def jpeg(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + bytes(9)
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + bytes(3)
    return b"\xff\xd8" + app0 + b"\xff\xff" + sof + b"\xff\xd9"


def webp(chunk: bytes, body: bytes) -> bytes:
    return b"RIFF" + struct.pack("<I", 4 + 8 + len(body)) + b"WEBP" + chunk + bytes(4) + body


@pytest.mark.parametrize(
    ("data", "media_type", "size"),
    [
        (PNG, "image/png", (2, 3)),
        (b"GIF89a" + struct.pack("<HH", 300, 200) + bytes(8), "image/gif", (300, 200)),
        (jpeg(1920, 1080), "image/jpeg", (1920, 1080)),
        (
            webp(b"VP8 ", bytes(3) + b"\x9d\x01\x2a" + struct.pack("<HH", 800, 600)),
            "image/webp",
            (800, 600),
        ),
        (
            webp(b"VP8L", b"\x2f" + struct.pack("<I", (1023) | (767 << 14))),
            "image/webp",
            (1024, 768),
        ),
        (
            webp(b"VP8X", bytes(4) + (4095).to_bytes(3, "little") + (2047).to_bytes(3, "little")),
            "image/webp",
            (4096, 2048),
        ),
    ],
)
def test_image_headers_are_read_without_an_image_library(
    data: bytes, media_type: str, size: tuple[int, int]
) -> None:
    assert image_media_type(data) == media_type
    assert image_size(data) == size


@pytest.mark.parametrize("data", [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0\x00", b"nope"])
def test_truncated_or_unknown_images_have_no_size(data: bytes) -> None:
    assert image_size(data) is None


def test_pdf_pages_and_audio_length() -> None:
    assert pdf_pages(PDF) == 1
    two = PDF.replace(b"/Count 1>>", b"/Count 2>>") + b"4 0 obj<</Type/Page>>endobj"
    assert pdf_pages(two) == 2
    assert pdf_pages(b"not a pdf") is None
    assert audio_seconds(WAV, "wav") == 16 / 8000
    assert audio_seconds(bytes(16_000), "mp3") == 1.0
    assert audio_seconds(b"x", "flac") is None
