"""The model table: encodings, exactness and context windows by model family."""

from __future__ import annotations

import pytest

from promptkit_async.errors import InvalidRequestError
from promptkit_async.prompt import FALLBACK_ENCODING, ModelInfo, lookup_model, register_model
from promptkit_async.prompt.models import model_table


@pytest.mark.parametrize(
    ("model", "encoding", "exact", "window"),
    [
        ("gpt-4o", "o200k_base", True, 128_000),
        ("gpt-4o-mini-2024-07-18", "o200k_base", True, 128_000),
        ("chatgpt-4o-latest", "o200k_base", True, 128_000),
        ("gpt-4.1-nano", "o200k_base", True, 1_047_576),
        ("gpt-5-mini", "o200k_base", True, 400_000),
        ("o1-mini", "o200k_base", True, 128_000),
        ("o3", "o200k_base", True, 200_000),
        ("o4-mini-2025-04-16", "o200k_base", True, 200_000),
        ("gpt-4", "cl100k_base", True, 8_192),
        ("gpt-4-0613", "cl100k_base", True, 8_192),
        ("gpt-4-turbo-2024-04-09", "cl100k_base", True, 128_000),
        ("gpt-3.5-turbo", "cl100k_base", True, 16_385),
        ("openai/gpt-4o", "o200k_base", True, 128_000),
        ("ft:gpt-4o-mini:acme::x1", "o200k_base", True, 128_000),
        ("claude-sonnet-4-5-20250929", FALLBACK_ENCODING, False, 200_000),
        ("gemini-2.5-pro", FALLBACK_ENCODING, False, 1_048_576),
        ("models/gemini-1.5-pro-002", FALLBACK_ENCODING, False, 2_097_152),
        ("llama3.1:8b", FALLBACK_ENCODING, False, None),
        ("ollama", FALLBACK_ENCODING, False, None),  # not an o-series model
        ("o1x", FALLBACK_ENCODING, False, None),
        (None, FALLBACK_ENCODING, False, None),
    ],
)
def test_lookup(model: str | None, encoding: str, exact: bool, window: int | None) -> None:
    info = lookup_model(model)
    assert (info.encoding, info.exact, info.context_window) == (encoding, exact, window)


def test_prompt_budget_respects_input_caps() -> None:
    assert lookup_model("gpt-4o").prompt_budget(4096) == 128_000 - 4096
    assert lookup_model("gpt-5").prompt_budget(4096) == 272_000
    assert lookup_model("unknown-model").prompt_budget(4096) is None


def test_register_model() -> None:
    # A name no other test uses: registrations last for the process.
    register_model("acme-test-chat", ModelInfo(context_window=32_000))
    assert lookup_model("acme-test-chat-v2").context_window == 32_000
    assert lookup_model("acme-test-chat-v2").exact is False
    with pytest.raises(InvalidRequestError, match="o200k_base"):
        register_model("x", ModelInfo(encoding="p50k_base"))


def test_table_view_is_read_only() -> None:
    with pytest.raises(TypeError):
        model_table()["gpt-4o"] = ModelInfo()  # type: ignore[index]
