"""What the library knows about each model family: its tokenizer and its context window.

A model name is matched like the price table matches it (:mod:`promptkit_async.pricing`):
an exact entry, else the longest known name that the model starts with, followed by
``-``, ``.``, ``:`` or ``@`` (so ``gpt-4o-mini-2024-07-18`` is a ``gpt-4o``, and
``gpt-4.1`` is not a ``gpt-4``). Vendor prefixes (``openai/``, ``models/``) and the
fine-tune prefix ``ft:`` are ignored.

OpenAI's chat models are counted exactly with their own tiktoken encoding
(``o200k_base`` for gpt-4o, gpt-4.1, gpt-4.5, the o-series and gpt-5; ``cl100k_base``
for gpt-4 and gpt-3.5). Every other model (Claude, Gemini, Llama, an unknown name) is
counted with :data:`FALLBACK_ENCODING` and its counts are *estimated*: other vendors'
tokenizers differ, typically by 5-20% on English text and more on code or other
languages. :class:`~promptkit_async.pipeline.middleware.ContextWindowMiddleware` leaves a
safety margin for such counts.

Context windows are as published by each vendor on :data:`WINDOWS_AS_OF`;
:func:`register_model` adds or overrides an entry for the whole process.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from types import MappingProxyType

from ..errors import InvalidRequestError
from ._bpe import SUPPORTED_ENCODINGS

__all__ = [
    "FALLBACK_ENCODING",
    "WINDOWS_AS_OF",
    "ModelInfo",
    "lookup_model",
    "model_table",
    "register_model",
]

#: The encoding used for models whose own tokenizer is not available (counts estimated).
#: o200k_base: the newest, most multilingual OpenAI vocabulary, closest on average to
#: other vendors' modern tokenizers.
FALLBACK_ENCODING = "o200k_base"

#: The date on which the built-in context windows were copied from the vendors' docs.
WINDOWS_AS_OF = date(2026, 11, 1)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """Token facts about one model family.

    Attributes:
        encoding: the tiktoken encoding counts are made with.
        exact: True when ``encoding`` is the model's own tokenizer; False means counts
            are estimates.
        context_window: tokens the model accepts, prompt and reply together (``None``
            when unknown).
        max_input_tokens: a separate cap on the prompt, for models that have one
            (gpt-5: a 400k window but at most 272k input tokens).
    """

    encoding: str = FALLBACK_ENCODING
    exact: bool = False
    context_window: int | None = None
    max_input_tokens: int | None = None

    def prompt_budget(self, reserve_output_tokens: int) -> int | None:
        """The most prompt tokens that leave ``reserve_output_tokens`` for the reply."""
        if self.context_window is None:
            return None
        budget = self.context_window - reserve_output_tokens
        if self.max_input_tokens is not None:
            budget = min(budget, self.max_input_tokens)
        return budget


def _openai(encoding: str, window: int, max_input: int | None = None) -> ModelInfo:
    return ModelInfo(encoding, True, window, max_input)


def _other(window: int) -> ModelInfo:
    return ModelInfo(FALLBACK_ENCODING, False, window)


_O200K, _CL100K = "o200k_base", "cl100k_base"
_TABLE: dict[str, ModelInfo] = {
    # OpenAI, o200k_base
    "gpt-4o": _openai(_O200K, 128_000),
    "chatgpt-4o": _openai(_O200K, 128_000),
    "gpt-4.1": _openai(_O200K, 1_047_576),
    "gpt-4.5": _openai(_O200K, 128_000),
    "gpt-5": _openai(_O200K, 400_000, 272_000),
    "o1": _openai(_O200K, 200_000),
    "o1-mini": _openai(_O200K, 128_000),
    "o1-preview": _openai(_O200K, 128_000),
    "o3": _openai(_O200K, 200_000),
    "o3-mini": _openai(_O200K, 200_000),
    "o4-mini": _openai(_O200K, 200_000),
    # OpenAI, cl100k_base
    "gpt-4": _openai(_CL100K, 8_192),
    "gpt-4-32k": _openai(_CL100K, 32_768),
    "gpt-4-turbo": _openai(_CL100K, 128_000),
    "gpt-4-1106-preview": _openai(_CL100K, 128_000),
    "gpt-4-0125-preview": _openai(_CL100K, 128_000),
    "gpt-3.5-turbo": _openai(_CL100K, 16_385),
    "gpt-3.5-turbo-instruct": _openai(_CL100K, 4_096),
    "gpt-35-turbo": _openai(_CL100K, 16_385),  # Azure's spelling
    # Anthropic (standard window; some models offer 1M in beta)
    "claude": _other(200_000),
    # Google
    "gemini-1.5-pro": _other(2_097_152),
    "gemini-1.5-flash": _other(1_048_576),
    "gemini-2.0-flash": _other(1_048_576),
    "gemini-2.5": _other(1_048_576),
}
_BY_LENGTH: list[str] = sorted(_TABLE, key=len, reverse=True)
_UNKNOWN = ModelInfo()


def model_table() -> MappingProxyType[str, ModelInfo]:
    """A read-only view of the current table."""
    return MappingProxyType(_TABLE)


def register_model(model: str, info: ModelInfo) -> None:
    """Add or replace ``model`` (a name or name prefix) for this process.

    Example: ``register_model("llama3.1", ModelInfo(context_window=128_000))`` makes a
    local Llama's default budget known (its counts stay estimated).
    """
    if info.encoding not in SUPPORTED_ENCODINGS:
        raise InvalidRequestError(
            f"encoding {info.encoding!r} is not available offline; use one of: "
            + ", ".join(sorted(SUPPORTED_ENCODINGS))
        )
    _TABLE[model] = info
    _BY_LENGTH[:] = sorted(_TABLE, key=len, reverse=True)


def lookup_model(model: str | None) -> ModelInfo:
    """What is known about ``model``; an unknown (or ``None``) model gets the fallback.

    The fallback counts with :data:`FALLBACK_ENCODING`, is not exact, and has no known
    context window.
    """
    if not model:
        return _UNKNOWN
    found = _TABLE.get(model)
    if found is not None:
        return found
    name = model.rsplit("/", 1)[-1].lower()
    if name.startswith("ft:"):
        name = name[3:]
    found = _TABLE.get(name)
    if found is not None:
        return found
    for known in _BY_LENGTH:
        if name.startswith(known) and name[len(known)] in "-.:@":
            return _TABLE[known]
    return _UNKNOWN
