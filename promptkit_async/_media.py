"""Facts read from the first bytes of media files: image type and size, PDF pages, audio length.

No image library is needed: each format's header is a few fixed fields. Every function
returns ``None`` when it cannot tell (truncated or unknown data), never raises.
"""

from __future__ import annotations

import re
import struct

__all__ = ["audio_seconds", "image_media_type", "image_size", "pdf_pages"]


def image_media_type(data: bytes) -> str | None:
    """``"image/png"``, ``"image/jpeg"``, ``"image/gif"`` or ``"image/webp"`` from the magic."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


# JPEG start-of-frame markers carry the size (C4 DHT, C8 JPG and CC DAC are not frames).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i, n = 2, len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        if marker == 0xD9:  # end of image before any frame
            return None
        if marker in _SOF:
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        i += 2 + length
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30:
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25:
        (bits,) = struct.unpack("<I", data[21:25])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    return None


def image_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` in pixels of a PNG, JPEG, GIF or WebP image, else ``None``."""
    kind = image_media_type(data)
    try:
        if kind == "image/png" and len(data) >= 24:
            width, height = struct.unpack(">II", data[16:24])
            return width, height
        if kind == "image/gif" and len(data) >= 10:
            width, height = struct.unpack("<HH", data[6:10])
            return width, height
        if kind == "image/jpeg":
            return _jpeg_size(data)
        if kind == "image/webp":
            return _webp_size(data)
    except struct.error:
        return None
    return None


# A page object: "/Type /Page" but not "/Type /Pages".
_PDF_PAGE = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")


def pdf_pages(data: bytes) -> int | None:
    """The number of pages of a PDF (its page objects), else ``None``.

    Page objects inside compressed object streams are not seen; such a file counts as
    ``None`` when no page is found.
    """
    if not data.startswith(b"%PDF"):
        return None
    pages = len(_PDF_PAGE.findall(data))
    return pages or None


def audio_seconds(data: bytes, audio_format: str) -> float | None:
    """The length of an audio clip in seconds: exact for WAV, by bitrate for MP3.

    MP3 is read as 128 kbit/s (the common rate); other formats give ``None``.
    """
    if audio_format == "wav" and data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        # Walk the chunks to "fmt " (byte rate) and "data" (length).
        i, rate, size = 12, 0, None
        while i + 8 <= len(data):
            tag = data[i : i + 4]
            (length,) = struct.unpack("<I", data[i + 4 : i + 8])
            if tag == b"fmt " and i + 20 <= len(data):
                (rate,) = struct.unpack("<I", data[i + 16 : i + 20])
            elif tag == b"data":
                size = min(length, len(data) - i - 8)
                break
            i += 8 + length + (length & 1)
        if rate and size is not None:
            return float(size) / int(rate)
        return None
    if audio_format == "mp3":
        return len(data) * 8 / 128_000
    return None
