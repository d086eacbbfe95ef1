"""Token counting with tiktoken: texts, messages and whole chat requests.

How a chat request is counted (OpenAI's published formula for its chat models, from the
"How to count tokens with tiktoken" cookbook)::

    request  = sum(message) + 3              # reply priming: <|start|>assistant<|message|>
    message  = 3                             # <|start|>{role}<|message|> ... <|end|>
             + tokens(role) + tokens(content)
             + tokens(name) + 1              # only when the message has a name
             + sum(tool_call)                # assistant messages that call tools
    tool_call = 3 + tokens(name) + tokens(arguments)

Content parts count as follows (``tokens(content)`` above is their sum):

* text: its tokens; thinking: its text's tokens (a redacted block: 1 token per 4 chars);
* image: OpenAI's published formula (:func:`image_tokens`): ``detail="low"`` costs 85;
  otherwise the image is scaled to fit 2048x2048, then its shortest side to 768, and
  costs ``85 + 170 * tiles`` (512-pixel tiles). ``"auto"`` and no detail count as high
  (an upper bound). The size is read from the bytes' header (PNG, JPEG, GIF, WebP) or
  from ``width``/``height``; otherwise (a URL, a blob key) it is taken to be
  :data:`DEFAULT_IMAGE_SIZE` (1024x1024: 765 tokens);
* document (estimate): a text document its text's tokens; a PDF
  :data:`DOCUMENT_TOKENS_PER_PAGE` per page (pages counted in the file; when they cannot
  be, :data:`DEFAULT_DOCUMENT_PAGES` pages);
* audio (estimate): :data:`AUDIO_TOKENS_PER_SECOND` per second (OpenAI bills 1 token per
  100 ms of input audio); the length is exact for WAV, read at 128 kbit/s for MP3 and
  other formats, and :data:`DEFAULT_AUDIO_SECONDS` without bytes.

The tool-call term is our approximation (OpenAI does not publish how calls are rendered);
tool-call ids are not counted. Tool *definitions* sent with a request are not counted
here either. Special-token text in content (``<|endoftext|>``) is counted as the plain
text it is sent as.

Per-message counts are cached: first in the message's own metadata when it carries a
count written by :meth:`Tokenizer.annotate` (``ContextWindowMiddleware`` stores every new
message that way, so histories loaded from a store are never re-tokenized), then in a
bounded per-process LRU keyed by ``(encoding, message)`` (messages are frozen and
hashable, metadata excluded), so trimming the same history turn after turn tokenizes only
the new messages.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import tiktoken

from .._media import audio_seconds, pdf_pages
from ..types import (
    AudioPart,
    ContentPart,
    DocumentPart,
    ImageDetail,
    ImagePart,
    Message,
    TextPart,
    ThinkingPart,
)
from ._bpe import aget_encoding, get_encoding, is_loaded
from .models import lookup_model

__all__ = [
    "AUDIO_TOKENS_PER_SECOND",
    "DEFAULT_AUDIO_SECONDS",
    "DEFAULT_DOCUMENT_PAGES",
    "DEFAULT_IMAGE_SIZE",
    "DOCUMENT_TOKENS_PER_PAGE",
    "MESSAGE_CACHE_SIZE",
    "REPLY_PRIMING_TOKENS",
    "TOKENS_METADATA_KEY",
    "TOKENS_PER_MESSAGE",
    "TOKENS_PER_NAME",
    "TOKENS_PER_TOOL_CALL",
    "TokenCount",
    "Tokenizer",
    "aget_tokenizer",
    "count_message_tokens",
    "count_tokens",
    "get_tokenizer",
    "image_tokens",
    "measure_tokens",
]

#: Fixed tokens around every message (``<|start|>{role}<|message|>...<|end|>``).
TOKENS_PER_MESSAGE = 3
#: Extra tokens for a message that carries a ``name``.
TOKENS_PER_NAME = 1
#: Our estimate of the fixed tokens around one tool call in an assistant message.
TOKENS_PER_TOOL_CALL = 3
#: Tokens that prime the reply, added once per request.
REPLY_PRIMING_TOKENS = 3
#: Message metadata key under which per-encoding token counts are stored.
TOKENS_METADATA_KEY = "promptkit.tokens"
#: Entries in the per-process message-count LRU (about 100 bytes each plus the message,
#: which it keeps alive while cached).
MESSAGE_CACHE_SIZE = 32_768
#: The size assumed for an image whose size is unknown (a URL without width/height).
DEFAULT_IMAGE_SIZE = (1024, 1024)
#: Estimated tokens per PDF page (text plus page image; Anthropic quotes 1,500-3,000).
DOCUMENT_TOKENS_PER_PAGE = 1500
#: Pages assumed for a PDF whose pages cannot be counted (a URL, a blob key).
DEFAULT_DOCUMENT_PAGES = 4
#: Estimated tokens per second of audio.
AUDIO_TOKENS_PER_SECOND = 10
#: Seconds assumed for audio whose bytes are not at hand.
DEFAULT_AUDIO_SECONDS = 30.0


def image_tokens(width: int, height: int, detail: ImageDetail | None = "auto") -> int:
    """Tokens of an image by OpenAI's published formula (``"auto"``/``None`` count as high).

    ``detail="low"``: 85. Otherwise the image is scaled down to fit in 2048x2048, then
    so that its shortest side is at most 768, and costs 85 + 170 per 512-pixel tile::

        >>> image_tokens(1024, 1024)
        765
        >>> image_tokens(4096, 8192)
        1105
    """
    if detail == "low":
        return 85
    w, h = float(width), float(height)
    if max(w, h) > 2048:
        scale = 2048 / max(w, h)
        w, h = w * scale, h * scale
    if min(w, h) > 768:
        scale = 768 / min(w, h)
        w, h = w * scale, h * scale
    tiles = math.ceil(w / 512) * math.ceil(h / 512)
    return 85 + 170 * tiles


def _part_tokens(encode: Callable[[str], list[int]], part: ContentPart) -> int:
    if isinstance(part, TextPart):
        return len(encode(part.text))
    if isinstance(part, ImagePart):
        width, height = part.size() or DEFAULT_IMAGE_SIZE
        return image_tokens(width, height, part.detail)
    if isinstance(part, DocumentPart):
        data = part.data
        if data is not None and part.media_type.startswith("text/"):
            return len(encode(data.decode("utf-8", "replace")))
        pages = pdf_pages(data) if data is not None else None
        return (pages or DEFAULT_DOCUMENT_PAGES) * DOCUMENT_TOKENS_PER_PAGE
    if isinstance(part, AudioPart):
        if part.data is None:
            seconds = DEFAULT_AUDIO_SECONDS
        else:
            seconds = audio_seconds(part.data, part.format) or len(part.data) * 8 / 128_000
        return math.ceil(seconds * AUDIO_TOKENS_PER_SECOND)
    if isinstance(part, ThinkingPart):
        tokens = len(encode(part.text))
        if part.redacted:
            tokens += (len(part.redacted) + 3) // 4
        return tokens
    raise TypeError(f"not a content part: {part!r}")  # pragma: no cover - Message checks


def _content_size(content: str | Sequence[ContentPart]) -> int:
    """A cheap fingerprint of the content's size (``len`` for text), for cached counts."""
    if isinstance(content, str):
        return len(content)
    size = len(content)
    for part in content:
        if isinstance(part, (TextPart, ThinkingPart)):
            size += len(part.text)
        else:
            data = part.data
            size += len(data) if data is not None else 1
    return size


@dataclass(frozen=True, slots=True)
class TokenCount:
    """A token count and how far to trust it.

    Attributes:
        tokens: the count.
        encoding: the tiktoken encoding it was made with.
        estimated: True when that encoding is not the model's own tokenizer (non-OpenAI
            or unknown models), so the provider's count will differ somewhat.
    """

    tokens: int
    encoding: str
    estimated: bool


def _compute(encoding: tiktoken.Encoding, message: Message) -> int:
    encode = encoding.encode_ordinary
    content = message.content
    if isinstance(content, str):
        body = len(encode(content))
    else:
        body = sum(_part_tokens(encode, part) for part in content)
    tokens = TOKENS_PER_MESSAGE + len(encode(message.role)) + body
    if message.name:
        tokens += len(encode(message.name)) + TOKENS_PER_NAME
    for call in message.tool_calls:
        tokens += TOKENS_PER_TOOL_CALL + len(encode(call.name)) + len(encode(call.arguments))
    return tokens


@lru_cache(maxsize=MESSAGE_CACHE_SIZE)
def _cached_count(encoding_name: str, message: Message) -> int:
    return _compute(get_encoding(encoding_name), message)


class Tokenizer:
    """Counts tokens for one model; get one with :func:`get_tokenizer`/:func:`aget_tokenizer`.

    Attributes:
        model: the model name it was made for (``None``: no model, fallback encoding).
        encoding_name: the tiktoken encoding used.
        estimated: True when counts are estimates (not the model's own tokenizer).

    Immutable and safe to share between threads and tasks.
    """

    __slots__ = ("_encoding", "encoding_name", "estimated", "model")

    def __init__(self, model: str | None, encoding: tiktoken.Encoding, *, estimated: bool) -> None:
        self.model = model
        self.encoding_name: str = encoding.name
        self.estimated = estimated
        self._encoding = encoding

    def __repr__(self) -> str:
        kind = "estimated" if self.estimated else "exact"
        return f"Tokenizer(model={self.model!r}, encoding={self.encoding_name!r}, {kind})"

    def count(self, text: str) -> int:
        """Tokens in ``text`` (no chat overhead)."""
        return len(self._encoding.encode_ordinary(text))

    def count_part(self, part: ContentPart) -> int:
        """Tokens of one content part (see the module docs for how each kind is counted)."""
        return _part_tokens(self._encoding.encode_ordinary, part)

    def count_message(self, message: Message) -> int:
        """Tokens ``message`` takes in a chat request, overhead included (cached)."""
        metadata = message.metadata
        if metadata:
            stored = metadata.get(TOKENS_METADATA_KEY)
            content = message.content
            size = len(content) if type(content) is str else _content_size(content)
            if isinstance(stored, Mapping) and stored.get("chars") == size:
                tokens = stored.get(self.encoding_name)
                if type(tokens) is int:
                    return tokens
        return _cached_count(self.encoding_name, message)

    def count_messages(self, messages: Iterable[Message]) -> int:
        """Tokens of a whole request made of ``messages`` (0 for no messages)."""
        count = self.count_message
        total = 0
        empty = True
        for message in messages:
            total += count(message)
            empty = False
        return total if empty else total + REPLY_PRIMING_TOKENS

    def measure(self, messages: Iterable[Message] | str) -> TokenCount:
        """Like :meth:`count_messages` (or :meth:`count` for a str), with its trust level."""
        tokens = (
            self.count(messages) if isinstance(messages, str) else self.count_messages(messages)
        )
        return TokenCount(tokens, self.encoding_name, self.estimated)

    def annotate(self, message: Message) -> Message:
        """A copy of ``message`` whose metadata records its token count.

        Stored messages carrying the count are never tokenized again. The record is
        ``metadata["promptkit.tokens"] = {"chars": len(content), "<encoding>": count}``
        (for parts, ``chars`` is a size fingerprint of them); it is ignored if the content
        length no longer matches.
        """
        tokens = self.count_message(message)
        metadata: dict[str, Any] = dict(message.metadata)
        stored = metadata.get(TOKENS_METADATA_KEY)
        size = _content_size(message.content)
        record: dict[str, Any] = {"chars": size}
        if isinstance(stored, Mapping) and stored.get("chars") == size:
            record.update(stored)
        if record.get(self.encoding_name) == tokens:
            return message
        record[self.encoding_name] = tokens
        metadata[TOKENS_METADATA_KEY] = record
        return replace(message, metadata=metadata)


_tokenizers: dict[str | None, Tokenizer] = {}


def _make(model: str | None, encoding: tiktoken.Encoding, exact: bool) -> Tokenizer:
    tokenizer = Tokenizer(model, encoding, estimated=not exact)
    if len(_tokenizers) >= 256:  # model names come from configuration; bound it anyway
        _tokenizers.clear()
    _tokenizers[model] = tokenizer
    return tokenizer


def get_tokenizer(model: str | None) -> Tokenizer:
    """The :class:`Tokenizer` for ``model`` (see :mod:`promptkit_async.prompt.models`).

    The first use of an encoding loads it synchronously (a fraction of a second, no
    network); in async code prefer :func:`aget_tokenizer`, which loads in a thread.
    """
    tokenizer = _tokenizers.get(model)
    if tokenizer is not None:
        return tokenizer
    info = lookup_model(model)
    return _make(model, get_encoding(info.encoding), info.exact)


async def aget_tokenizer(model: str | None) -> Tokenizer:
    """Like :func:`get_tokenizer`, but a first encoding load runs in a worker thread."""
    tokenizer = _tokenizers.get(model)
    if tokenizer is not None:
        return tokenizer
    info = lookup_model(model)
    if is_loaded(info.encoding):
        return _make(model, get_encoding(info.encoding), info.exact)
    return _make(model, await aget_encoding(info.encoding), info.exact)


def count_tokens(text: str, model: str | None = None) -> int:
    """Tokens in ``text`` for ``model`` (no chat overhead).

    Unknown and non-OpenAI models are counted with the fallback encoding; use
    :func:`measure_tokens` to learn whether a count is estimated. Loads the encoding
    synchronously on first use.
    """
    return get_tokenizer(model).count(text)


def count_message_tokens(messages: Sequence[Message], model: str | None = None) -> int:
    """Tokens a chat request made of ``messages`` takes for ``model``.

    OpenAI's published formula, plus our estimate for tool calls::

        request   = sum(message) + 3            # reply priming (0 for no messages)
        message   = 3 + tokens(role) + tokens(content)
                  + (tokens(name) + 1 if name) + sum(tool_call)
        tool_call = 3 + tokens(name) + tokens(arguments)

    Exact for OpenAI chat models without tools (it matches the API's prompt_tokens);
    tool definitions sent with a request are not included. Loads the encoding
    synchronously on first use; see :func:`measure_tokens` for whether it is estimated.
    """
    return get_tokenizer(model).count_messages(messages)


def measure_tokens(messages: Sequence[Message] | str, model: str | None = None) -> TokenCount:
    """Count ``messages`` (or a text) and say whether the count is exact or estimated."""
    return get_tokenizer(model).measure(messages)
