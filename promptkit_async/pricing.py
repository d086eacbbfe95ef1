"""Per-model prices and the cost of a call.

Prices are list prices in US dollars per million tokens, as published by each vendor on
:data:`PRICES_AS_OF`. They change: pass your own :class:`ModelPricing` through a provider's
``pricing=`` to override one model, or :func:`register_pricing` to
override or add one for the whole process.

A dated snapshot name (``gpt-4o-mini-2024-07-18``) is priced as its base model; the longest
matching name wins (``gpt-4o-mini`` before ``gpt-4o``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date
from types import MappingProxyType

from .types import Cost, Usage

__all__ = [
    "PRICES_AS_OF",
    "ModelPricing",
    "calculate_cost",
    "lookup_pricing",
    "pricing_table",
    "register_pricing",
]

logger = logging.getLogger("promptkit_async.pricing")

#: The date on which the built-in prices were copied from the vendors' price pages.
PRICES_AS_OF = date(2026, 11, 1)


@dataclass(frozen=True, slots=True)
class ModelPricing:
    """USD per million tokens for one model.

    ``cached_input_per_mtok`` (prompt-cache reads) defaults to the input price;
    ``cache_write_per_mtok`` (prompt-cache writes, Anthropic) defaults to the input price.
    """

    input_per_mtok: float
    output_per_mtok: float
    cached_input_per_mtok: float | None = None
    cache_write_per_mtok: float | None = None


_P = ModelPricing
_TABLE: dict[str, ModelPricing] = {
    # OpenAI
    "gpt-4o-mini": _P(0.15, 0.60, 0.075),
    "gpt-4o": _P(2.50, 10.00, 1.25),
    "gpt-4.1": _P(2.00, 8.00, 0.50),
    "gpt-4.1-mini": _P(0.40, 1.60, 0.10),
    "gpt-4.1-nano": _P(0.10, 0.40, 0.025),
    "gpt-5": _P(1.25, 10.00, 0.125),
    "gpt-5-mini": _P(0.25, 2.00, 0.025),
    "gpt-5-nano": _P(0.05, 0.40, 0.005),
    "o1": _P(15.00, 60.00, 7.50),
    "o3": _P(2.00, 8.00, 0.50),
    "o3-mini": _P(1.10, 4.40, 0.55),
    "o4-mini": _P(1.10, 4.40, 0.275),
    "gpt-4-turbo": _P(10.00, 30.00),
    "gpt-4": _P(30.00, 60.00),
    "gpt-3.5-turbo": _P(0.50, 1.50),
    # Anthropic (cache reads 0.1x input, 5-minute cache writes 1.25x input)
    "claude-opus-4-5": _P(5.00, 25.00, 0.50, 6.25),
    "claude-opus-4-1": _P(15.00, 75.00, 1.50, 18.75),
    "claude-opus-4": _P(15.00, 75.00, 1.50, 18.75),
    "claude-sonnet-4-5": _P(3.00, 15.00, 0.30, 3.75),
    "claude-sonnet-4": _P(3.00, 15.00, 0.30, 3.75),
    "claude-3-7-sonnet": _P(3.00, 15.00, 0.30, 3.75),
    "claude-haiku-4-5": _P(1.00, 5.00, 0.10, 1.25),
    "claude-3-5-haiku": _P(0.80, 4.00, 0.08, 1.00),
    "claude-3-haiku": _P(0.25, 1.25, 0.03, 0.30),
    # Google Gemini (prompts up to 200k tokens)
    "gemini-2.5-pro": _P(1.25, 10.00, 0.31),
    "gemini-2.5-flash": _P(0.30, 2.50, 0.075),
    "gemini-2.5-flash-lite": _P(0.10, 0.40, 0.025),
    "gemini-2.0-flash": _P(0.10, 0.40, 0.025),
    "gemini-2.0-flash-lite": _P(0.075, 0.30),
}
# Longest names first, so a prefix match finds the most specific model.
_BY_LENGTH: list[str] = sorted(_TABLE, key=len, reverse=True)
_warned: set[str] = set()


def pricing_table() -> MappingProxyType[str, ModelPricing]:
    """A read-only view of the current price table."""
    return MappingProxyType(_TABLE)


def register_pricing(model: str, pricing: ModelPricing) -> None:
    """Add or replace the price of ``model`` for this process."""
    _TABLE[model] = pricing
    _BY_LENGTH[:] = sorted(_TABLE, key=len, reverse=True)


def lookup_pricing(model: str) -> ModelPricing | None:
    """The price of ``model``: an exact match, else the longest known prefix, else None.

    Vendor prefixes such as ``openai/`` or ``models/`` are ignored.
    """
    found = _TABLE.get(model)
    if found is not None:
        return found
    name = model.rsplit("/", 1)[-1]
    for known in _BY_LENGTH:
        if name.startswith(known) and (len(name) == len(known) or name[len(known)] in "-@:."):
            return _TABLE[known]
    return None


def calculate_cost(usage: Usage, pricing: ModelPricing | None, *, model: str = "") -> Cost:
    """What ``usage`` costs at ``pricing``.

    Uncached input tokens are ``prompt_tokens - cached_tokens - cache_write_tokens``.
    Output is ``completion_tokens`` at the output rate; reasoning (thinking) tokens are
    billed as output by every provider and are already inside ``completion_tokens``, so
    ``usage.reasoning_tokens`` is not priced a second time. With no pricing the result
    is all zeros with ``priced=False`` (logged once per model).
    """
    if pricing is None:
        if model not in _warned:
            _warned.add(model)
            logger.warning(
                "no price known for model %r; costs are reported as 0 (priced=False). "
                "Pass pricing=ModelPricing(...) to the provider to price it.",
                model,
            )
        return Cost(priced=False)
    cached_price = (
        pricing.input_per_mtok
        if pricing.cached_input_per_mtok is None
        else pricing.cached_input_per_mtok
    )
    write_price = (
        pricing.input_per_mtok
        if pricing.cache_write_per_mtok is None
        else pricing.cache_write_per_mtok
    )
    uncached = max(usage.prompt_tokens - usage.cached_tokens - usage.cache_write_tokens, 0)
    input_cost = uncached * pricing.input_per_mtok / 1e6
    cached_cost = usage.cached_tokens * cached_price / 1e6
    write_cost = usage.cache_write_tokens * write_price / 1e6
    output_cost = usage.completion_tokens * pricing.output_per_mtok / 1e6
    return Cost(
        input_cost=input_cost,
        output_cost=output_cost,
        cached_cost=cached_cost,
        cache_write_cost=write_cost,
        total_cost=input_cost + cached_cost + write_cost + output_cost,
    )
