"""The provider layer's public names are exported where the API promises."""

from __future__ import annotations

import promptkit_async
import promptkit_async.providers as providers
from promptkit_async.providers import presets
from promptkit_async.providers.openai import OpenAIProvider


def test_public_names() -> None:
    for name in ("OpenAIProvider", "RetryPolicy", "AiohttpTransport", "GenerationConfig"):
        assert name in providers.__all__
        assert name in promptkit_async.__all__
        assert getattr(promptkit_async, name) is getattr(providers, name)
    assert promptkit_async.OpenAIProvider is OpenAIProvider
    assert "presets" in providers.__all__
    assert set(presets.__all__) == {"groq", "ollama", "openrouter", "together", "vllm"}
    assert promptkit_async.__all__ == sorted(promptkit_async.__all__)
