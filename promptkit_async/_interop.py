"""Messages from and to the OpenAI chat format and Anthropic's Messages format.

Reached through :meth:`Message.from_openai <promptkit_async.types.Message.from_openai>`,
``to_openai``, ``from_openai_list``, ``to_openai_list``, ``from_anthropic``,
``to_anthropic``, ``from_anthropic_list`` and ``to_anthropic_list``.

OpenAI chat format (``{"role", "content", "name", "tool_calls", "tool_call_id"}``):

* ``content`` may be ``None`` (becomes ``""``), a string, or a list of parts: ``text``,
  ``image_url`` (a ``data:`` URL becomes :class:`ImagePart` bytes), ``input_audio``
  and ``file`` (``file_data`` as a ``data:`` URL, or ``file_id``).
* Fields the library does not model (``refusal``, ``audio``, the ``developer`` role, a
  tool message's ``name``...) are kept in ``metadata["promptkit.openai"]`` and written
  back by ``to_openai``, so a history round-trips unchanged.
* ``to_openai`` writes an assistant message's empty content as ``null`` when it calls
  tools, and leaves :class:`ThinkingPart` out (the chat format has no place for it).
  An image by ``file_id``, a document by URL and audio other than wav or mp3 raise
  :class:`~promptkit_async.errors.UnsupportedContentError` (the format has no such part).

Anthropic Messages format (``messages`` entries plus the top-level ``system``):

* ``text``, ``image``, ``document`` blocks become parts; ``thinking`` and
  ``redacted_thinking`` become :class:`ThinkingPart` (``provider="anthropic"``);
  ``tool_use`` becomes a :class:`ToolCall` (``input`` as JSON text).
* A user entry's ``tool_result`` blocks become one ``tool`` message each (``is_error``
  kept in ``metadata["promptkit.anthropic"]``); other blocks of that entry become a user
  message marked to be joined back. ``to_anthropic`` puts consecutive tool messages in
  one user entry, as the API requires.
* An assistant entry of one text block plus ``tool_use`` blocks gives a ``str`` content.
* Not carried: ``cache_control``, ``citations`` and a document's ``context``; names;
  an image's ``detail`` (dropped), and thinking written by another provider (dropped:
  its signature is not valid for Anthropic). :class:`AudioPart`, images other than
  JPEG/PNG/GIF/WebP and documents other than PDF or UTF-8 text raise
  :class:`~promptkit_async.errors.UnsupportedContentError`.

Parts held in a blob store (``blob_key``) must be resolved before export
(``InvalidMessageError``). The providers build their requests with
:func:`openai_part` and :func:`anthropic_block`, so export and the wire agree.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .errors import InvalidMessageError, UnsupportedContentError
from .types import (
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
    "ANTHROPIC_IMAGE_TYPES",
    "ANTHROPIC_KEY",
    "OPENAI_AUDIO_FORMATS",
    "OPENAI_KEY",
    "anthropic_block",
    "from_anthropic",
    "from_openai",
    "openai_part",
    "to_anthropic",
    "to_openai",
    "unresolved",
]

#: Metadata key of OpenAI fields kept for the way back.
OPENAI_KEY = "promptkit.openai"
#: Metadata key of Anthropic facts kept for the way back.
ANTHROPIC_KEY = "promptkit.anthropic"

_OPENAI_FIELDS = frozenset(("role", "content", "name", "tool_calls", "tool_call_id"))
_OPENAI_ROLES = {"system": "system", "developer": "system", "user": "user"}
_OPENAI_ROLES.update(assistant="assistant", tool="tool")
#: The ``input_audio`` formats of the OpenAI chat format.
OPENAI_AUDIO_FORMATS = frozenset(("wav", "mp3"))
#: The image media types Anthropic takes.
ANTHROPIC_IMAGE_TYPES = frozenset(("image/jpeg", "image/png", "image/gif", "image/webp"))


def _bad(what: str) -> InvalidMessageError:
    return InvalidMessageError(what)


def _b64decode(text: object, where: str) -> bytes:
    if not isinstance(text, str):
        raise _bad(f"{where}: base64 data must be a string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _bad(f"{where}: invalid base64 ({exc})") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _parse_data_url(url: str) -> tuple[str, bytes] | None:
    """``(media_type, bytes)`` of a base64 ``data:`` URL, else ``None``."""
    if not url.startswith("data:"):
        return None
    head, sep, payload = url[5:].partition(",")
    if not sep or not head.endswith(";base64"):
        return None
    return head[: -len(";base64")], _b64decode(payload, "data URL")


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _bad(f"{where} must be an object, not {type(value).__name__}")
    return value


def _str(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise _bad(f"{where} must be a string, not {type(value).__name__}")
    return value


def unresolved(part: object) -> InvalidMessageError:
    """The error for a part whose bytes are still in a blob store (``blob_key``)."""
    return _bad(
        f"{type(part).__name__} is held in a blob store (blob_key); load it through the "
        "BlobOffloadStore with resolve=True (or resolve_blobs) before exporting or "
        "sending it to a provider"
    )


# --- OpenAI --------------------------------------------------------------------------------


def _openai_part(raw: object) -> ContentPart:
    part = _mapping(raw, "an OpenAI content part")
    kind = part.get("type")
    if kind == "text":
        return TextPart(_str(part.get("text"), "text part 'text'"))
    if kind == "image_url":
        image = _mapping(part.get("image_url"), "image_url")
        url = _str(image.get("url"), "image_url.url")
        detail = image.get("detail")
        parsed = _parse_data_url(url)
        if parsed is not None:
            media_type, data = parsed
            return ImagePart(data, media_type=media_type or None, detail=detail)
        return ImagePart(url=url, detail=detail)
    if kind == "input_audio":
        audio = _mapping(part.get("input_audio"), "input_audio")
        data = _b64decode(audio.get("data"), "input_audio.data")
        return AudioPart(data, _str(audio.get("format"), "input_audio.format"))
    if kind == "file":
        file = _mapping(part.get("file"), "file")
        filename = file.get("filename")
        if file.get("file_id") is not None:
            return DocumentPart(file_id=_str(file["file_id"], "file.file_id"), filename=filename)
        file_data = _str(file.get("file_data"), "file.file_data")
        parsed = _parse_data_url(file_data)
        if parsed is None:
            return DocumentPart(_b64decode(file_data, "file.file_data"), filename=filename)
        media_type, data = parsed
        return DocumentPart(data, media_type=media_type or "application/pdf", filename=filename)
    raise _bad(
        f"unsupported OpenAI content part type {kind!r}; supported: text, image_url, "
        "input_audio, file"
    )


def from_openai(message: Mapping[str, Any]) -> Message:
    """A :class:`Message` from one OpenAI chat-format message dict."""
    message = _mapping(message, "an OpenAI message")
    raw_role = message.get("role")
    role = _OPENAI_ROLES.get(raw_role) if isinstance(raw_role, str) else None
    if role is None:
        raise _bad(
            f"unsupported OpenAI role {raw_role!r}; use system, developer, user, assistant "
            "or tool (the deprecated 'function' role: convert it to 'tool')"
        )
    extras = {k: v for k, v in message.items() if k not in _OPENAI_FIELDS}
    if raw_role != role:
        extras["role"] = raw_role
    name = message.get("name")
    if role == "tool" and name is not None:
        extras["name"] = name  # OpenAI's tool messages have no name; keep it only to give it back
        name = None
    content = message.get("content")
    if content is None and not (role == "assistant" and message.get("tool_calls")):
        extras["content"] = None  # e.g. a refusal: give back null, not ""
    if isinstance(content, list):
        content = tuple(_openai_part(p) for p in content)
    elif content is not None and not isinstance(content, str):
        raise _bad(f"OpenAI message content must be a string, a list or null, not {content!r}")
    return Message(
        role,  # type: ignore[arg-type]
        content,  # type: ignore[arg-type]
        message.get("tool_calls") or (),
        message.get("tool_call_id"),
        name,
        {OPENAI_KEY: extras} if extras else {},
    )


def openai_part(part: ContentPart) -> dict[str, Any] | None:
    """One part in the OpenAI chat format; ``None`` for a :class:`ThinkingPart`.

    Raises:
        UnsupportedContentError: an image by ``file_id``, a document by URL, or audio
            in a format other than wav or mp3.
        InvalidMessageError: a part still held in a blob store.
    """
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    if isinstance(part, ImagePart):
        if part.data is not None:
            url = f"data:{part.media_type};base64,{_b64(part.data)}"
        elif part.url is not None:
            url = part.url
        elif part.blob_key is not None:
            raise unresolved(part)
        else:
            raise UnsupportedContentError(
                "OpenAI chat messages cannot refer to an uploaded image by file_id; pass "
                "ImagePart(data=...) or an https URL"
            )
        image: dict[str, Any] = {"url": url}
        if part.detail is not None:
            image["detail"] = part.detail
        return {"type": "image_url", "image_url": image}
    if isinstance(part, AudioPart):
        if part.data is None:
            raise unresolved(part)
        if part.format not in OPENAI_AUDIO_FORMATS:
            raise UnsupportedContentError(
                f"OpenAI chat takes audio as wav or mp3, not {part.format!r}; convert the "
                "clip first"
            )
        return {
            "type": "input_audio",
            "input_audio": {"data": _b64(part.data), "format": part.format},
        }
    if isinstance(part, DocumentPart):
        file: dict[str, Any] = {}
        if part.file_id is not None:
            file["file_id"] = part.file_id
        elif part.data is not None:
            file["file_data"] = f"data:{part.media_type};base64,{_b64(part.data)}"
        elif part.blob_key is not None:
            raise unresolved(part)
        else:
            raise UnsupportedContentError(
                "OpenAI chat messages cannot refer to a document by URL; download it into "
                "DocumentPart(data=...) or upload it and use file_id"
            )
        if part.filename is not None:
            file["filename"] = part.filename
        return {"type": "file", "file": file}
    return None  # ThinkingPart: the chat format cannot carry it


def to_openai(message: Message) -> dict[str, Any]:
    """``message`` as an OpenAI chat-format dict."""
    content = message.content
    out: dict[str, Any] = {"role": message.role}
    if isinstance(content, str):
        out["content"] = content
    else:
        out["content"] = [p for p in map(openai_part, content) if p is not None]
    if message.role == "assistant" and message.tool_calls and not out["content"]:
        out["content"] = None  # what OpenAI itself sends for a message that only calls tools
    if message.name is not None:
        out["name"] = message.name
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    extras = message.metadata.get(OPENAI_KEY) if message.metadata else None
    if isinstance(extras, Mapping):
        for key, value in extras.items():
            if key != "content":
                out[key] = value
            elif value is None and not out["content"]:
                out["content"] = None
    return out


# --- Anthropic -----------------------------------------------------------------------------


def _source(raw: object, where: str) -> dict[str, Any]:
    source = _mapping(raw, f"{where}.source")
    kind = source.get("type")
    if kind == "base64":
        media_type = _str(source.get("media_type"), f"{where}.source.media_type")
        return {"data": _b64decode(source.get("data"), where), "media_type": media_type}
    if kind == "url":
        return {"url": _str(source.get("url"), f"{where}.source.url")}
    if kind == "file":
        return {"file_id": _str(source.get("file_id"), f"{where}.source.file_id")}
    if kind == "text" and where == "document":
        text = _str(source.get("data"), "document.source.data")
        return {"data": text.encode("utf-8"), "media_type": "text/plain"}
    raise _bad(f"unsupported {where} source type {kind!r}")


def _anthropic_part(block: Mapping[str, Any]) -> ContentPart:
    kind = block.get("type")
    if kind == "text":
        return TextPart(_str(block.get("text"), "text block 'text'"))
    if kind == "image":
        return ImagePart(**_source(block.get("source"), "image"))
    if kind == "document":
        return DocumentPart(**_source(block.get("source"), "document"), filename=block.get("title"))
    if kind == "thinking":
        return ThinkingPart(
            _str(block.get("thinking"), "thinking block 'thinking'"),
            block.get("signature"),
            provider="anthropic",
        )
    if kind == "redacted_thinking":
        data = _str(block.get("data"), "redacted_thinking block 'data'")
        return ThinkingPart(redacted=data, provider="anthropic")
    raise _bad(
        f"unsupported Anthropic content block type {kind!r}; supported: text, image, "
        "document, thinking, redacted_thinking, tool_use, tool_result"
    )


def _tool_result(block: Mapping[str, Any], joined: bool) -> Message:
    raw = block.get("content")
    content: str | tuple[ContentPart, ...]
    if raw is None or isinstance(raw, str):
        content = raw or ""
    elif isinstance(raw, list):
        content = tuple(_anthropic_part(_mapping(b, "tool_result block")) for b in raw)
    else:
        raise _bad("tool_result content must be a string or a list of blocks")
    facts: dict[str, Any] = {}
    if block.get("is_error") is not None:
        facts["is_error"] = block["is_error"]
    if joined:
        facts["joined"] = True
    return Message(
        "tool",
        content,
        tool_call_id=_str(block.get("tool_use_id"), "tool_result.tool_use_id"),
        metadata={ANTHROPIC_KEY: facts} if facts else {},
    )


def from_anthropic(
    messages: Iterable[Mapping[str, Any]], *, system: str | Sequence[Any] | None = None
) -> list[Message]:
    """Messages from Anthropic's ``messages`` list and ``system`` field."""
    out: list[Message] = []
    if isinstance(system, str):
        out.append(Message("system", system))
    elif system is not None:
        parts = [_anthropic_part(_mapping(b, "system block")) for b in system]
        out.append(Message("system", parts))
    for raw in messages:
        entry = _mapping(raw, "an Anthropic message")
        role = entry.get("role")
        if role not in ("user", "assistant"):
            raise _bad(f"unsupported Anthropic role {role!r}; use user or assistant")
        content = entry.get("content")
        if isinstance(content, str):
            out.append(Message(role, content))
            continue
        if not isinstance(content, list):
            raise _bad("Anthropic message content must be a string or a list of blocks")
        blocks = [_mapping(b, "a content block") for b in content]
        results = [b for b in blocks if b.get("type") == "tool_result"]
        calls = [b for b in blocks if b.get("type") == "tool_use"]
        rest = [b for b in blocks if b.get("type") not in ("tool_result", "tool_use")]
        for i, block in enumerate(results):
            out.append(_tool_result(block, joined=i > 0))
        if results and not rest:
            continue
        tool_calls = tuple(
            ToolCall(
                _str(b.get("id"), "tool_use.id"),
                _str(b.get("name"), "tool_use.name"),
                json.dumps(b.get("input", {}), ensure_ascii=False, separators=(",", ":")),
            )
            for b in calls
        )
        body: str | tuple[ContentPart, ...] = tuple(_anthropic_part(b) for b in rest)
        if tool_calls and not body:
            body = ""
        elif tool_calls and len(body) == 1 and isinstance(body[0], TextPart):
            body = body[0].text
        metadata = {ANTHROPIC_KEY: {"joined": True}} if results else {}
        out.append(Message(role, body, tool_calls, metadata=metadata))
    return out


def _source_out(part: ImagePart | DocumentPart) -> dict[str, Any]:
    if part.data is not None:
        if isinstance(part, DocumentPart):
            if part.media_type == "text/plain":
                try:
                    text = part.data.decode("utf-8")
                except UnicodeDecodeError:
                    raise UnsupportedContentError(
                        "a text/plain DocumentPart for Anthropic must be UTF-8 text"
                    ) from None
                return {"type": "text", "media_type": "text/plain", "data": text}
            if part.media_type != "application/pdf":
                raise UnsupportedContentError(
                    f"Anthropic takes documents as application/pdf or text/plain, not "
                    f"{part.media_type!r}; convert the document or send its text"
                )
        elif part.media_type not in ANTHROPIC_IMAGE_TYPES:
            raise UnsupportedContentError(
                f"Anthropic takes JPEG, PNG, GIF or WebP images, not {part.media_type!r}"
            )
        return {"type": "base64", "media_type": part.media_type, "data": _b64(part.data)}
    if part.url is not None:
        return {"type": "url", "url": part.url}
    if part.file_id is not None:
        return {"type": "file", "file_id": part.file_id}
    raise unresolved(part)


def anthropic_block(part: ContentPart) -> dict[str, Any] | None:
    """One part as an Anthropic content block; ``None`` for another provider's thinking.

    Raises:
        UnsupportedContentError: audio, an image type Anthropic does not take, or a
            document that is neither PDF nor UTF-8 text.
        InvalidMessageError: a part still held in a blob store.
    """
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    if isinstance(part, ImagePart):
        return {"type": "image", "source": _source_out(part)}
    if isinstance(part, DocumentPart):
        block: dict[str, Any] = {"type": "document", "source": _source_out(part)}
        if part.filename is not None:
            block["title"] = part.filename
        return block
    if isinstance(part, ThinkingPart):
        if part.provider not in (None, "anthropic"):
            return None  # another provider's signature is no use to Anthropic
        if part.redacted is not None:
            return {"type": "redacted_thinking", "data": part.redacted}
        thinking: dict[str, Any] = {"type": "thinking", "thinking": part.text}
        if part.signature is not None:
            thinking["signature"] = part.signature
        return thinking
    raise UnsupportedContentError(
        "Anthropic messages cannot carry audio; transcribe it, or send it to a provider "
        "that takes audio input (OpenAI, Gemini)"
    )


def _blocks(content: str | Sequence[ContentPart]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return [b for b in map(anthropic_block, content) if b is not None]


def _facts(message: Message) -> Mapping[str, Any]:
    facts = message.metadata.get(ANTHROPIC_KEY) if message.metadata else None
    return facts if isinstance(facts, Mapping) else {}


def _arguments(call: ToolCall) -> Any:
    try:
        return json.loads(call.arguments)
    except ValueError:
        raise _bad(
            f"tool call {call.id!r} has arguments that are not JSON ({call.arguments[:50]!r}); "
            "Anthropic needs a JSON object as tool_use input"
        ) from None


def to_anthropic(messages: Iterable[Message]) -> dict[str, Any]:
    """``{"system": ..., "messages": [...]}`` for Anthropic (no ``system`` when none)."""
    system: list[Message] = []
    entries: list[dict[str, Any]] = []
    last_tool = False  # the previous entry is a user entry of tool results
    for message in messages:
        if message.role == "system":
            system.append(message)
            continue
        if message.role == "tool":
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id}
            content = message.content
            if isinstance(content, str):
                if content:
                    result["content"] = content
            else:
                result["content"] = _blocks(content)
            facts = _facts(message)
            if "is_error" in facts:
                result["is_error"] = facts["is_error"]
            if last_tool:
                entries[-1]["content"].append(result)
            else:
                entries.append({"role": "user", "content": [result]})
            last_tool = True
            continue
        if last_tool and message.role == "user" and _facts(message).get("joined"):
            entries[-1]["content"].extend(_blocks(message.content))
            last_tool = False
            continue
        last_tool = False
        body: str | list[dict[str, Any]]
        if message.tool_calls:
            body = _blocks(message.content)
            body.extend(
                {"type": "tool_use", "id": c.id, "name": c.name, "input": _arguments(c)}
                for c in message.tool_calls
            )
        elif isinstance(message.content, str):
            body = message.content
        else:
            body = _blocks(message.content)
        entries.append({"role": message.role, "content": body})
    out: dict[str, Any] = {}
    if len(system) == 1 and isinstance(system[0].content, str):
        out["system"] = system[0].content
    elif system:
        out["system"] = [b for m in system for b in _blocks(m.content)]
    out["messages"] = entries
    return out
