"""Files attached with ``/image``, ``/file`` and ``/audio``: read, checked, described.

A file becomes a content part (:class:`~promptkit_async.types.ImagePart`,
:class:`~promptkit_async.types.DocumentPart` or :class:`~promptkit_async.types.AudioPart`)
only when it is readable, not empty, at most :data:`MAX_ATTACHMENT_BYTES` long and of a
kind the chat can name; otherwise :class:`AttachmentError` says what is wrong and nothing
is attached.
"""

from __future__ import annotations

import asyncio
import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .._media import image_media_type, image_size, pdf_pages
from ..errors import InvalidRequestError
from ..types import AudioPart, ContentPart, DocumentPart, ImagePart, TextPart, ThinkingPart

__all__ = [
    "ATTACHMENTS_KEY",
    "MAX_ATTACHMENT_BYTES",
    "Attachment",
    "AttachmentError",
    "Kind",
    "describe_part",
    "read_attachment",
]

#: The largest file the chat attaches (OpenAI's per-image limit; PDFs may be larger at
#: some providers, but a bigger file would be read into every later turn's history).
MAX_ATTACHMENT_BYTES = 20 * 1024 * 1024
#: Message metadata naming a user message's attachments (never sent to the model), so
#: ``/history`` can show file names after a restart.
ATTACHMENTS_KEY = "promptkit_chat.attachments"

Kind = Literal["image", "file", "audio"]
_IMAGES = "a PNG, JPEG, GIF or WebP image"
_AUDIO = "WAV, MP3, OGG or FLAC audio"


class AttachmentError(InvalidRequestError):
    """A file cannot be attached: missing, unreadable, empty, too large or of an unknown kind.

    Raised before anything is attached or sent; the message names the file and what to do.
    """


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file read for the next message: its part and its name (for display)."""

    part: ContentPart
    name: str

    def describe(self) -> str:
        """``image: cat.png, image/png, 34 KB, 640x480`` and the like."""
        return describe_part(self.part, self.name)


def _audio_format(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    # An ID3 tag, or an MPEG audio frame sync (11 set bits) with layer III.
    if data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE6 == 0xE2):
        return "mp3"
    if data[:4] == b"OggS":
        return "ogg"
    if data[:4] == b"fLaC":
        return "flac"
    return None


def _text(data: bytes) -> bool:
    if b"\x00" in data[:8192]:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _part(kind: Kind, data: bytes, name: str, shown: str) -> ContentPart:
    image = image_media_type(data)
    if kind == "image":
        if image is None:
            raise AttachmentError(f"{shown} is not {_IMAGES}; /file attaches other kinds")
        return ImagePart(data, media_type=image)
    audio = _audio_format(data)
    if kind == "audio":
        if audio is None:
            raise AttachmentError(f"{shown} is not {_AUDIO}; /file attaches other kinds")
        return AudioPart(data, format=audio)
    # /file: whatever the bytes say it is.
    if image is not None:
        return ImagePart(data, media_type=image)
    if data.startswith(b"%PDF"):
        return DocumentPart(data, media_type="application/pdf", filename=name)
    if audio is not None:
        return AudioPart(data, format=audio)
    if _text(data):
        return DocumentPart(data, media_type="text/plain", filename=name)
    raise AttachmentError(
        f"cannot tell what kind of file {shown} is; attach {_IMAGES}, a PDF, a UTF-8 "
        f"text file or {_AUDIO}"
    )


def _path(argument: str) -> str:
    """The path typed after the command: quotes and, on POSIX, backslash escapes (as a
    terminal pastes a dropped file) are undone when they make one word."""
    text = argument.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if os.name == "nt":  # backslashes separate directories there
        return text
    try:
        words = shlex.split(text)
    except ValueError:
        return text
    return words[0] if len(words) == 1 else text


def _read(typed: str, limit: int) -> tuple[Path, bytes]:
    path = Path(typed).expanduser()
    try:
        with path.open("rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size > limit:
                raise AttachmentError(
                    f"{path} is {_size(size)}; attachments are limited to {_size(limit)}: "
                    "send a smaller or compressed file"
                )
            data = file.read(limit + 1)  # bounded even if the file grows meanwhile
    except FileNotFoundError:
        raise AttachmentError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise AttachmentError(f"{path} is a directory; name a file in it") from None
    except PermissionError:
        raise AttachmentError(f"cannot read {path}: permission denied") from None
    except OSError as exc:
        raise AttachmentError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise AttachmentError(f"{path} is larger than {_size(limit)}; send a smaller file")
    if not data:
        raise AttachmentError(f"{path} is empty; nothing to attach")
    return path, data


async def read_attachment(
    kind: Kind, argument: str, *, limit: int = MAX_ATTACHMENT_BYTES
) -> Attachment:
    """Read the file named by ``argument`` (as typed after ``/image``, ``/file``, ``/audio``).

    The file is read in a worker thread (a slow disk does not stall the chat).

    Raises:
        AttachmentError: no path, a missing, unreadable, empty or too large file, or
            bytes of a kind ``kind`` does not take.
    """
    typed = _path(argument.strip())
    if not typed:
        raise AttachmentError(f"/{kind} needs a file: /{kind} PATH")
    path, data = await asyncio.to_thread(_read, typed, limit)
    return Attachment(_part(kind, data, path.name, str(path)), path.name)


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    if n < 1024 * 1024:
        return f"{round(n / 1024)} KB"
    return f"{n / (1024 * 1024):.1f} MB"


def describe_part(part: ContentPart, name: str | None = None) -> str:
    """A one-line description of a part: ``image: cat.png, image/png, 34 KB, 640x480``."""
    facts: list[str] = []
    label: str
    data: bytes | None
    if isinstance(part, ImagePart):
        label, data = "image", part.data
        facts.append(part.media_type or "image")
        width, height = part.width, part.height
        if (width is None or height is None) and data is not None:
            width, height = image_size(data) or (None, None)
        if width and height:
            facts.append(f"{width}x{height}")
    elif isinstance(part, DocumentPart):
        label, data = "document", part.data
        name = name or part.filename
        facts.append(part.media_type)
        pages = pdf_pages(data) if data is not None else None
        if pages:
            facts.append(f"{pages} page{'s' if pages != 1 else ''}")
    elif isinstance(part, AudioPart):
        label, data = "audio", part.data
        facts.append(part.format)
    else:
        return type(part).__name__
    if data is not None:
        facts.insert(1, _size(len(data)))
    elif url := getattr(part, "url", None):
        facts.append(str(url))
    return f"{label}: " + ", ".join([*([name] if name else []), *facts])


def describe_content(parts: Sequence[ContentPart], metadata: Mapping[str, Any]) -> str:
    """A stored message's content for ``/history``: its text, then ``[image: ...]`` per
    attachment (named from the message's :data:`ATTACHMENTS_KEY` metadata)."""
    names = metadata.get(ATTACHMENTS_KEY)
    names = list(names) if isinstance(names, list) else []
    text: list[str] = []
    shown: list[str] = []
    for part in parts:
        if isinstance(part, TextPart):
            text.append(part.text)
            continue
        if isinstance(part, ThinkingPart):
            continue  # the model's reasoning is not part of the conversation shown
        name = names.pop(0) if names and isinstance(names[0], str) else None
        shown.append(f"[{describe_part(part, name)}]")
    return " ".join(filter(None, ["".join(text), *shown]))
