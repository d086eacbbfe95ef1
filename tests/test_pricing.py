"""Prices and cost arithmetic."""

from __future__ import annotations

import logging

import pytest

from promptkit_async import (
    MockProvider,
    ModelPricing,
    Pipeline,
    ProviderMiddleware,
    Usage,
    calculate_cost,
    lookup_pricing,
)
from promptkit_async.pricing import PRICES_AS_OF, pricing_table, register_pricing


def test_gpt_4o_mini_cost_is_usage_times_table_prices() -> None:
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=500_000, cached_tokens=200_000)
    cost = calculate_cost(usage, lookup_pricing("gpt-4o-mini"))
    # 800k uncached input at $0.15/M, 200k cached at $0.075/M, 500k output at $0.60/M
    assert cost.input_cost == pytest.approx(0.12)
    assert cost.cached_cost == pytest.approx(0.015)
    assert cost.output_cost == pytest.approx(0.30)
    assert cost.total_cost == pytest.approx(0.435)
    assert cost.priced


def test_dated_snapshots_and_vendor_prefixes_resolve_to_the_base_model() -> None:
    assert lookup_pricing("gpt-4o-mini-2024-07-18") == lookup_pricing("gpt-4o-mini")
    assert lookup_pricing("openai/gpt-4o") == lookup_pricing("gpt-4o")
    assert lookup_pricing("gpt-4o-2024-08-06") == lookup_pricing("gpt-4o")
    assert lookup_pricing("gpt-4o-mini") != lookup_pricing("gpt-4o")
    assert lookup_pricing("gpt-4omega") is None
    assert PRICES_AS_OF.year >= 2025
    assert "claude-sonnet-4-5" in pricing_table()


def test_unknown_model_costs_zero_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "promptkit_async.pricing"):
        cost = calculate_cost(Usage(10, 10), None, model="my-local-llama")
    assert cost.total_cost == 0
    assert not cost.priced
    assert "my-local-llama" in caplog.text


def test_cache_writes_are_priced_separately() -> None:
    price = ModelPricing(3.0, 15.0, cached_input_per_mtok=0.3, cache_write_per_mtok=3.75)
    cost = calculate_cost(
        Usage(prompt_tokens=3_000_000, cached_tokens=1_000_000, cache_write_tokens=1_000_000),
        price,
    )
    assert cost.input_cost == pytest.approx(3.0)
    assert cost.cached_cost == pytest.approx(0.3)
    assert cost.cache_write_cost == pytest.approx(3.75)
    assert cost.total_cost == pytest.approx(7.05)


async def test_provider_defaults_override_the_table() -> None:
    custom = ModelPricing(input_per_mtok=1_000_000, output_per_mtok=0)
    provider = MockProvider(["hi"], model="gpt-4o-mini", pricing=custom)
    result = await Pipeline(ProviderMiddleware(provider)).execute("s", "user", "hello")
    assert result.cost.total_cost == result.usage.prompt_tokens


def test_register_pricing_adds_a_model() -> None:
    register_pricing("test-model-xyz", ModelPricing(1.0, 2.0))
    assert lookup_pricing("test-model-xyz-001") == ModelPricing(1.0, 2.0)
