"""The stored record format of a message, shared by every persistent store.

A record is one compact JSON object per message::

    {"v": 1, "role": "assistant", "content": "...",
     "tool_calls": [{"id": "...", "name": "...", "arguments": "{...}"}],
     "tool_call_id": "...", "name": "...", "metadata": {...}}

``v`` is the schema version; empty optional fields are left out. Version 2 adds content
parts: ``content`` is then a list of part objects, each with a ``type`` and the part's
non-empty fields, bytes as base64::

    {"v": 2, "role": "user", "content": [{"type": "text", "text": "What is this?"},
     {"type": "image", "data": "iVBORw0K...", "media_type": "image/png", "detail": "low"}]}

Part types: ``text``, ``image``, ``document``, ``audio``, ``thinking`` (fields as the
classes in :mod:`promptkit_async.types`). A message is written in the oldest version that
can hold it: text messages stay version 1, byte for byte, so a process still running the
previous release keeps reading every text-only session. Records are ASCII-only
(non-ASCII is escaped), so they survive any byte-oriented transport. Any text round-trips,
NULs and lone surrogates included, with one exception JSON imposes (its ``\\uXXXX``
escapes are UTF-16 code units): a high surrogate directly followed by a low one, two
invalid code points in a ``str``, loads as the one character that pair encodes. Decoding accepts
every version this library ever wrote; a record from a newer version, or a corrupt one,
raises :class:`~promptkit_async.errors.StoreDataError` naming the session.

This module is the library's deliberate internal API for the record format: every
store, and any other package that reads or writes records, imports it as
``promptkit_async.statestore.records`` (never a private module). Its public names
(``SCHEMA_VERSION``, ``encode_message``, ``encode_messages``, ``decode_message``,
``decode_messages``) stay stable.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import InvalidMessageError, PromptKitError, StoreDataError
from ..types import (
    AudioPart,
    ContentPart,
    DocumentPart,
    ImagePart,
    Message,
    TextPart,
    ThinkingPart,
    ToolCall,
)

__all__ = [
    "SCHEMA_VERSION",
    "decode_message",
    "decode_messages",
    "encode_message",
    "encode_messages",
]

#: The record version this library writes.
SCHEMA_VERSION = 2

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode
_decode = json.JSONDecoder().decode


def encode_message(message: Message) -> str:
    """The JSON record of ``message``.

    Raises:
        InvalidMessageError: if its metadata is not JSON-serialisable.
    """
    content = message.content
    record: dict[str, Any]
    if isinstance(content, str):
        record = {"v": 1, "role": message.role, "content": content}
    else:
        record = {"v": 2, "role": message.role, "content": [_encode_part(p) for p in content]}
    if message.tool_calls:
        record["tool_calls"] = [
            {"id": c.id, "name": c.name, "arguments": c.arguments} for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        record["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        record["name"] = message.name
    if message.metadata:
        record["metadata"] = message.metadata
    try:
        return _dumps(record)
    except (TypeError, ValueError, RecursionError) as exc:  # RecursionError: too deep
        raise InvalidMessageError(
            f"message metadata is not JSON-serialisable ({exc}); store only JSON values"
        ) from exc


def decode_message(record: str | bytes, *, session_id: str = "?") -> Message:
    """Rebuild a :class:`Message` from its record."""
    try:
        # Decoding bytes here is cheaper than json.loads' encoding detection.
        data = _decode(record.decode("utf-8") if isinstance(record, bytes) else record)
        if not isinstance(data, dict):
            raise TypeError("record is not a JSON object")
        version = data.get("v", 0)
        if version == 1:
            return _from_v1(data)
        if version == 2:
            return _from_v1(data, parts=True)
        if version == 0:
            return _from_v0(data)
    except StoreDataError:
        raise
    except (ValueError, TypeError, KeyError, RecursionError, PromptKitError) as exc:
        raise StoreDataError(
            f"corrupt message record in session {session_id!r}: {exc}; delete or repair the session"
        ) from exc
    raise StoreDataError(
        f"message record in session {session_id!r} has schema version {version!r}, newer "
        f"than this library understands (max {SCHEMA_VERSION}); upgrade promptkit_async"
    )


def _tool_calls(raw: Any) -> tuple[ToolCall, ...]:
    if not raw:
        return ()
    return tuple(ToolCall(str(c["id"]), str(c["name"]), str(c.get("arguments", "{}"))) for c in raw)


def _metadata(raw: Any) -> Mapping[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise TypeError("metadata is not an object")
    return raw


def _from_v1(data: dict[str, Any], parts: bool = False) -> Message:
    # Versions 1 and 2 differ only in what content may be (2 adds a list of parts).
    content = data.get("content", "")
    if parts and isinstance(content, list):
        content = tuple(_decode_part(p) for p in content)
    elif not isinstance(content, str):
        raise TypeError("content is not a string" + (" or a list of parts" if parts else ""))
    return Message(
        data["role"],
        content,
        _tool_calls(data.get("tool_calls")),
        data.get("tool_call_id"),
        data.get("name"),
        _metadata(data.get("metadata")),
    )


# Per part type: the class and its fields, in record order; bytes fields are base64.
_PART_FIELDS: dict[str, tuple[type, tuple[str, ...]]] = {
    "text": (TextPart, ("text",)),
    "image": (
        ImagePart,
        ("data", "url", "file_id", "blob_key", "media_type", "detail", "width", "height"),
    ),
    "document": (DocumentPart, ("data", "url", "file_id", "blob_key", "media_type", "filename")),
    "audio": (AudioPart, ("data", "format", "blob_key")),
    "thinking": (ThinkingPart, ("text", "signature", "redacted", "provider")),
}
_PART_TYPE = {cls: (name, fields) for name, (cls, fields) in _PART_FIELDS.items()}


def _encode_part(part: ContentPart) -> dict[str, Any]:
    name, fields = _PART_TYPE[type(part)]
    out: dict[str, Any] = {"type": name}
    for field_name in fields:
        value = getattr(part, field_name)
        if value is None:
            continue
        out[field_name] = base64.b64encode(value).decode("ascii") if field_name == "data" else value
    return out


def _decode_part(raw: Any) -> ContentPart:
    if not isinstance(raw, dict):
        raise TypeError("a content part is not an object")
    kind = raw.get("type")
    if kind not in _PART_FIELDS:
        raise TypeError(f"unknown content part type {kind!r}")
    cls, fields = _PART_FIELDS[kind]
    unknown = raw.keys() - fields - {"type"}
    if unknown:
        raise TypeError(f"unknown fields {sorted(unknown)} in a {kind} part")
    kwargs = dict(raw)
    del kwargs["type"]
    data = kwargs.get("data")
    if data is not None:
        if not isinstance(data, str):
            raise TypeError("part data is not base64 text")
        try:
            kwargs["data"] = base64.b64decode(data, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"part data is not base64: {exc}") from None
    part: ContentPart = cls(**kwargs)
    return part


def _from_v0(data: dict[str, Any]) -> Message:
    # Version 0: the unversioned record of PromptKit's Go runtime, which stored
    # ``{"role", "content", "tool_calls": [{"id", "type", "function": {"name",
    # "arguments"}}], "tool_call_id", "name"}``. Kept readable for migrated data.
    calls = tuple(
        ToolCall(str(c["id"]), str(fn["name"]), str(fn.get("arguments", "{}")))
        for c in data.get("tool_calls") or ()
        for fn in (c["function"],)
    )
    content = data.get("content") or ""
    if not isinstance(content, str):
        raise TypeError("content is not a string")
    return Message(data["role"], content, calls, data.get("tool_call_id"), data.get("name"))


def encode_messages(messages: Iterable[Message]) -> list[str]:
    """Encode every message up front, so a bad one fails before any I/O."""
    out = []
    for m in messages:
        if not isinstance(m, Message):
            raise InvalidMessageError(f"expected Message, got {type(m).__name__}")
        out.append(encode_message(m))
    return out


# Decoded records without metadata, by record text. Such a Message is immutable all the
# way down (frozen, str and tuple fields), so one object can be handed to every load; a
# message with metadata carries a mutable dict and is decoded afresh each time. Every
# turn reloads the history it loaded the turn before, so most records hit. Bounded in
# entries and record size (at most _CACHE_ENTRIES * _CACHE_RECORD_BYTES of records).
_CACHE_ENTRIES = 8192
_CACHE_RECORD_BYTES = 2048
_cache: dict[str | bytes, Message] = {}


def decode_messages(records: Iterable[str | bytes], *, session_id: str = "?") -> list[Message]:
    """Decode a session's records, oldest first (reusing recently decoded messages)."""
    cache = _cache
    out = []
    for record in records:
        message = cache.get(record)
        if message is None:
            message = decode_message(record, session_id=session_id)
            if not message.metadata and len(record) <= _CACHE_RECORD_BYTES:
                if len(cache) >= _CACHE_ENTRIES:
                    # Drop the oldest entry (another thread may race us: harmless).
                    with contextlib.suppress(KeyError, RuntimeError, StopIteration):
                        del cache[next(iter(cache))]
                cache[record] = message
        out.append(message)
    return out
