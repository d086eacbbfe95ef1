"""``/image``, ``/file`` and ``/audio``: files read into content parts, shown, sent, stored."""

from __future__ import annotations

import base64
import os
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pexpect
import pytest

from promptkit_async import (
    AudioPart,
    DocumentPart,
    ImagePart,
    InvalidRequestError,
    Message,
    TextPart,
)
from promptkit_async.cli._attach import (
    ATTACHMENTS_KEY,
    AttachmentError,
    describe_content,
    describe_part,
    read_attachment,
)

Spawn = Callable[..., pexpect.spawn]

# A 1x1 PNG.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201e221bc330000000049454e44ae426082"
)
PDF = b"%PDF-1.4\n1 0 obj << /Type /Page >> endobj\n2 0 obj << /Type /Page >> endobj\n%%EOF\n"


def wav(seconds: float = 0.5, rate: int = 8000) -> bytes:
    """A silent 8-bit mono WAV file."""
    samples = b"\x80" * int(seconds * rate)
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate, 1, 8)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt
    chunks += b"data" + struct.pack("<I", len(samples)) + samples
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


# --- reading files ---------------------------------------------------------------------


async def test_image_file_becomes_an_image_part(tmp_path: Path) -> None:
    (tmp_path / "cat.png").write_bytes(PNG)
    attachment = await read_attachment("image", str(tmp_path / "cat.png"))
    assert attachment.part == ImagePart(PNG, media_type="image/png")
    assert attachment.name == "cat.png"
    assert attachment.describe() == "image: cat.png, image/png, 71 bytes, 1x1"


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("photo.png", PNG, ImagePart(PNG, media_type="image/png")),
        ("report.pdf", PDF, DocumentPart(PDF, filename="report.pdf")),
        (
            "notes.md",
            "# Notes\nCafé".encode(),
            DocumentPart("# Notes\nCafé".encode(), media_type="text/plain", filename="notes.md"),
        ),
        ("hello.wav", wav(), AudioPart(wav(), format="wav")),
        ("song.mp3", b"ID3\x04" + bytes(64), AudioPart(b"ID3\x04" + bytes(64), format="mp3")),
    ],
)
async def test_file_takes_whatever_the_bytes_are(
    tmp_path: Path, name: str, data: bytes, expected: Any
) -> None:
    (tmp_path / name).write_bytes(data)
    attachment = await read_attachment("file", str(tmp_path / name))
    assert attachment.part == expected


async def test_paths_as_a_terminal_pastes_them(tmp_path: Path, monkeypatch: Any) -> None:
    spaced = tmp_path / "my cat.png"
    spaced.write_bytes(PNG)
    for typed in (f"'{spaced}'", f'"{spaced}"', str(spaced).replace(" ", "\\ "), str(spaced)):
        assert (await read_attachment("image", f"  {typed} ")).name == "my cat.png"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert (await read_attachment("image", "~/my\\ cat.png")).name == "my cat.png"


@pytest.mark.parametrize(
    ("kind", "setup", "message"),
    [
        ("image", lambda d: None, r"no such file: .*missing\.png"),
        ("image", lambda d: (d / "missing.png").mkdir(), r"is a directory; name a file in it"),
        ("file", lambda d: (d / "missing.png").write_bytes(b""), r"is empty; nothing to attach"),
        (
            "image",
            lambda d: (d / "missing.png").write_text("not an image"),
            r"is not a PNG, JPEG, GIF or WebP image; /file attaches other kinds",
        ),
        (
            "audio",
            lambda d: (d / "missing.png").write_bytes(PNG),
            r"is not WAV, MP3, OGG or FLAC audio",
        ),
        (
            "file",
            lambda d: (d / "missing.png").write_bytes(b"\x00\x01\x02binary"),
            r"cannot tell what kind of file .* is; attach a PNG",
        ),
        (
            "file",
            lambda d: (d / "missing.png").write_bytes(b"\xff" * 2048),
            r"is 2 KB; attachments are limited to 1 KB",
        ),
    ],
)
async def test_bad_files_are_refused_with_a_reason(
    tmp_path: Path, kind: Any, setup: Callable[[Path], object], message: str
) -> None:
    setup(tmp_path)
    with pytest.raises(AttachmentError, match=message) as caught:
        await read_attachment(kind, str(tmp_path / "missing.png"), limit=1024)
    assert isinstance(caught.value, InvalidRequestError)  # a typed error of the library's tree


async def test_no_path_says_how(tmp_path: Path) -> None:
    with pytest.raises(AttachmentError, match=r"/image needs a file: /image PATH"):
        await read_attachment("image", "   ")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
async def test_unreadable_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(PNG)
    secret.chmod(0)
    with pytest.raises(AttachmentError, match="permission denied"):
        await read_attachment("image", str(secret))


def test_history_lines_name_each_attachment() -> None:
    message = Message(
        "user",
        [TextPart("Compare these"), ImagePart(PNG), DocumentPart(PDF, filename="r.pdf")],
        metadata={ATTACHMENTS_KEY: ["cat.png", "report.pdf"]},
    )
    assert describe_content(message.content, message.metadata) == (  # type: ignore[arg-type]
        "Compare these [image: cat.png, image/png, 71 bytes, 1x1] "
        "[document: report.pdf, application/pdf, 81 bytes, 2 pages]"
    )
    # Without the chat's metadata (a history written by other code): what the parts say.
    bare = Message("user", ["Hi", AudioPart(wav(), format="wav")])
    assert describe_content(bare.content, {}) == "Hi [audio: wav, 4 KB]"  # type: ignore[arg-type]
    assert describe_part(ImagePart(url="https://example.com/a.png")) == (
        "image: image, https://example.com/a.png"
    )


# --- in the chat -----------------------------------------------------------------------


def test_image_with_the_demo_model_and_history(spawn_chat: Spawn, tmp_path: Path) -> None:
    picture = tmp_path / "cat.png"
    picture.write_bytes(PNG)
    child = spawn_chat("--session", "pics")
    child.expect_exact("You: ")
    child.sendline(f"/image {picture}")
    child.expect_exact(
        "[Attached image: cat.png, image/png, 71 bytes, 1x1; it goes with your next message]"
    )
    child.expect_exact("You: ")
    child.sendline("What is in this picture?")
    child.expect_exact("Bot: You sent me an image (PNG, 1x1). I'm an offline demo model")
    child.expect(r"\[Tokens: \d+")
    # The attachment went with that message only.
    child.expect_exact("You: ")
    child.sendline("My name is Alice")
    child.expect_exact("Bot: Hello Alice! It's nice to meet you.")
    child.expect_exact("You: ")
    child.sendline("exit")
    child.expect(pexpect.EOF)

    # After a restart (SQLite), /history still names the file.
    child = spawn_chat("--session", "pics")
    child.expect_exact("(continuing, 4 message(s))")
    child.expect_exact("You: ")
    child.sendline("/history")
    child.expect_exact(
        "You: What is in this picture? [image: cat.png, image/png, 71 bytes, 1x1]\r\n"
    )
    child.expect_exact("Bot: You sent me an image")
    child.expect_exact("You: My name is Alice\r\n")
    child.expect_exact("You: ")
    child.sendline("exit")
    child.expect(pexpect.EOF)


def test_file_audio_detach_and_bad_paths(spawn_chat: Spawn, tmp_path: Path) -> None:
    (tmp_path / "report.pdf").write_bytes(PDF)
    (tmp_path / "hello.wav").write_bytes(wav())
    child = spawn_chat("--store", "memory")
    child.expect_exact("You: ")
    child.sendline(f"/file {tmp_path / 'nope.pdf'}")
    child.expect_exact(f"[Not attached: no such file: {tmp_path / 'nope.pdf'}]")
    child.expect_exact("You: ")
    child.sendline(f"/image {tmp_path / 'report.pdf'}")
    child.expect_exact("is not a PNG, JPEG, GIF or WebP image; /file attaches other kinds]")
    child.expect_exact("You: ")
    child.sendline(f"/file {tmp_path / 'report.pdf'}")
    child.expect_exact("[Attached document: report.pdf, application/pdf, 81 bytes, 2 pages;")
    child.expect_exact("You: ")
    child.sendline("/detach")
    child.expect_exact("[Dropped: report.pdf]")
    # Nothing is attached any more: the demo answers the text alone.
    child.expect_exact("You: ")
    child.sendline("Hello")
    child.expect_exact("Bot: Hello! I'm the promptkit demo model.")
    child.expect_exact("You: ")
    child.sendline(f"/audio {tmp_path / 'hello.wav'}")
    child.expect_exact("[Attached audio: hello.wav, wav, 4 KB;")
    child.expect_exact("You: ")
    child.sendline(f"/file {tmp_path / 'report.pdf'}")
    child.expect_exact("[Attached document: report.pdf")
    child.expect_exact("You: ")
    child.sendline("Listen and read")
    child.expect_exact(
        "Bot: You sent me an audio clip (wav) and a document (report.pdf). I'm an offline"
    )
    child.expect_exact("You: ")
    child.sendline("/history")
    child.expect_exact(
        "You: Listen and read [audio: hello.wav, wav, 4 KB] "
        "[document: report.pdf, application/pdf, 81 bytes, 2 pages]"
    )
    child.expect_exact("You: ")
    child.sendline("exit")
    child.expect(pexpect.EOF)


def test_image_reaches_an_openai_compatible_upstream(
    spawn_chat: Spawn, fake_openai: Any, tmp_path: Path
) -> None:
    picture = tmp_path / "cat.png"
    picture.write_bytes(PNG)
    env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": fake_openai.url}
    child = spawn_chat("--store", "memory", env=env)
    child.expect_exact("You: ")
    child.sendline(f"/image {picture}")
    child.expect_exact("[Attached image: cat.png")
    child.expect_exact("You: ")
    child.sendline("What is this?")
    child.expect(r"\[Tokens: 1100 ")
    child.expect_exact("You: ")
    child.sendline("exit")
    child.expect(pexpect.EOF)
    [request] = fake_openai.requests
    content = request["messages"][0]["content"]
    assert content[0] == {"type": "text", "text": "What is this?"}
    url = content[1]["image_url"]["url"]
    assert content[1]["type"] == "image_url"
    assert url == "data:image/png;base64," + base64.b64encode(PNG).decode()


def test_a_provider_refusing_the_part_is_an_error_and_nothing_is_stored(
    spawn_chat: Spawn, fake_openai: Any, tmp_path: Path
) -> None:
    # OGG audio: OpenAI's chat API takes WAV and MP3 only (and, before providers map
    # parts at all, no binary part can be written): refused before any request.
    clip = tmp_path / "clip.ogg"
    clip.write_bytes(b"OggS" + bytes(200))
    env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": fake_openai.url}
    child = spawn_chat("--store", "memory", env=env)
    child.expect_exact("You: ")
    child.sendline(f"/audio {clip}")
    child.expect_exact("[Attached audio: clip.ogg, ogg, 204 bytes;")
    child.expect_exact("You: ")
    child.sendline("Transcribe this")
    child.expect(r"\r\nError: (.+)\r\n")
    assert re.search("audio|ogg|JSON", child.match.group(1), re.IGNORECASE)
    assert fake_openai.requests == []  # refused before anything was sent
    # The chat goes on; the failed turn was not stored, and the attachment is gone.
    child.expect_exact("You: ")
    child.sendline("/history")
    child.expect_exact("[No messages yet]")
    child.expect_exact("You: ")
    child.sendline("Hello")
    child.expect_exact("Bot: You sent 1 message(s); the first: Hello")
    child.expect_exact("You: ")
    child.sendline("exit")
    child.expect(pexpect.EOF)
    assert len(fake_openai.requests) == 1
