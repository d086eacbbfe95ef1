"""Prompts that fit: exact token counts, trimming that never breaks a conversation, summaries.

* Counting (tiktoken, offline): :func:`count_tokens`, :func:`count_message_tokens`,
  :func:`image_tokens` (content parts: images, documents, audio are counted too),
  :func:`measure_tokens` (which says whether a count is exact or estimated),
  :class:`Tokenizer` via :func:`get_tokenizer` / :func:`aget_tokenizer`.
* Trimming: :func:`truncate_messages` (by tokens) and :func:`keep_last_messages` (by
  count), with pinned system messages and whole tool groups.
* Planning a turn's view (what :class:`ContextWindowMiddleware` sends): :func:`fit_window`
  returns a :class:`Window`.
* Summaries: :func:`summarize_messages` folds older turns into a short text through any
  provider.
* Model facts (tokenizer, context window): :mod:`promptkit_async.prompt.models`.

In a pipeline, :class:`~promptkit_async.pipeline.middleware.ContextWindowMiddleware` does
all of this per turn.
"""

from ._summary import SUMMARY_INSTRUCTIONS, summarize_messages, summary_message
from ._tokens import (
    AUDIO_TOKENS_PER_SECOND,
    DEFAULT_AUDIO_SECONDS,
    DEFAULT_DOCUMENT_PAGES,
    DEFAULT_IMAGE_SIZE,
    DOCUMENT_TOKENS_PER_PAGE,
    REPLY_PRIMING_TOKENS,
    TOKENS_METADATA_KEY,
    TOKENS_PER_MESSAGE,
    TOKENS_PER_NAME,
    TOKENS_PER_TOOL_CALL,
    TokenCount,
    Tokenizer,
    aget_tokenizer,
    count_message_tokens,
    count_tokens,
    get_tokenizer,
    image_tokens,
    measure_tokens,
)
from ._truncation import PinSystem, Window, fit_window, keep_last_messages, truncate_messages
from .models import FALLBACK_ENCODING, ModelInfo, lookup_model, register_model

__all__ = [
    "AUDIO_TOKENS_PER_SECOND",
    "DEFAULT_AUDIO_SECONDS",
    "DEFAULT_DOCUMENT_PAGES",
    "DEFAULT_IMAGE_SIZE",
    "DOCUMENT_TOKENS_PER_PAGE",
    "FALLBACK_ENCODING",
    "REPLY_PRIMING_TOKENS",
    "SUMMARY_INSTRUCTIONS",
    "TOKENS_METADATA_KEY",
    "TOKENS_PER_MESSAGE",
    "TOKENS_PER_NAME",
    "TOKENS_PER_TOOL_CALL",
    "ModelInfo",
    "PinSystem",
    "TokenCount",
    "Tokenizer",
    "Window",
    "aget_tokenizer",
    "count_message_tokens",
    "count_tokens",
    "fit_window",
    "get_tokenizer",
    "image_tokens",
    "keep_last_messages",
    "lookup_model",
    "measure_tokens",
    "register_model",
    "summarize_messages",
    "summary_message",
    "truncate_messages",
]
