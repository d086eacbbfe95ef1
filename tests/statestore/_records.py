"""The stored-record fixtures in ``data/`` and the messages they must decode to.

``records_v0.jsonl``: version 0, the unversioned record of PromptKit's Go runtime
(OpenAI-style ``tool_calls`` with a nested ``function``; ``content`` may be null).
``records_v1.jsonl``: version 1, frozen as first written by this library.
``records_v2.jsonl``: what version 2 of the codec writes: content parts (every part type
and source) as version-2 records, and text messages, which stay version-1 records.
All must load forever: never edit these files, add a new one for a new version.
"""

from __future__ import annotations

from pathlib import Path

from promptkit_async import (
    AudioPart,
    DocumentPart,
    ImagePart,
    Message,
    TextPart,
    ThinkingPart,
    ToolCall,
)

DATA = Path(__file__).parent / "data"


def raw_records(version: int) -> list[str]:
    """The raw JSON lines of a fixture file."""
    return (DATA / f"records_v{version}.jsonl").read_text("utf-8").splitlines()


#: A real 2x3 RGB PNG.
PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x02\x00\x00\x00\x03\x08\x02"
    b"\x00\x00\x006\x88I\xd6\x00\x00\x00\x10IDATx\xdac\xf8\xcf\xc0\x00D\x0c(\x14\x00D"
    b"\xd0\x05\xfbL\xceq\x0f\x00\x00\x00\x00IEND\xaeB`\x82"
)
#: A one-page PDF skeleton.
PDF = (
    b"%PDF-1.4\n1 0 obj<</Type /Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type /Pages/Kids[3 0 R]"
    b"/Count 1>>endobj\n3 0 obj<</Type /Page/Parent 2 0 R>>endobj\ntrailer<</Root 1 0 R>>\n"
    b"%%EOF\n"
)
#: 2 ms of 8 kHz mono 8-bit WAV.
WAV = (
    b"RIFF4\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00@\x1f\x00\x00@\x1f\x00"
    b"\x00\x01\x00\x08\x00data\x10\x00\x00\x00" + bytes(range(16))
)

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
    2: [
        Message("system", "You look at pictures and documents."),
        Message(
            "user",
            (
                TextPart("Was zeigt das Bild, und was steht im PDF?"),
                ImagePart(PNG, detail="high"),
                ImagePart(url="https://example.com/cat.jpg", detail="low", width=640, height=480),
                DocumentPart(PDF, filename="bericht.pdf"),
            ),
            name="alice",
            metadata={"client": "web"},
        ),
        Message(
            "user",
            (
                AudioPart(WAV, "wav"),
                ImagePart(blob_key="sha256-0f1e", media_type="image/png", width=2, height=3),
                DocumentPart(url="https://example.com/a.pdf"),
                DocumentPart(file_id="file-abc123", media_type="text/plain"),
            ),
        ),
        Message(
            "assistant",
            (
                ThinkingPart("Ein Bild einer Katze.", "EqQBCkgIARAB", provider="anthropic"),
                ThinkingPart(redacted="EmwKAhgBEgy3", provider="anthropic"),
                TextPart("Eine Katze; ich zeichne die Zahlen."),
            ),
            (ToolCall("call_9", "render_chart", '{"values":[1,2]}'),),
        ),
        Message(
            "tool",
            (TextPart("chart:"), ImagePart(PNG, media_type="image/png")),
            tool_call_id="call_9",
            name="render_chart",
        ),
        Message("assistant", "Hier ist das Diagramm."),
    ],
}


def check_loaded(loaded: list[Message], version: int) -> None:
    """Assert ``loaded`` equals the expected messages, metadata included."""
    expected = EXPECTED[version]
    assert loaded == expected
    assert [m.metadata for m in loaded] == [m.metadata for m in expected]
