"""OpenAI-compatible servers, preconfigured: each function returns an :class:`OpenAIProvider`.

::

    provider = presets.groq("llama-3.3-70b-versatile")            # key from GROQ_API_KEY
    provider = presets.ollama("llama3.2")                          # http://localhost:11434/v1
    provider = presets.vllm("Qwen/Qwen2.5-7B-Instruct", "http://gpu-box:8000/v1")

Each preset reads its own vendor's key variable (never ``OPENAI_API_KEY``, so an OpenAI key
is not sent to another vendor) and accepts every other :class:`OpenAIProvider` keyword
(``http_client``, ``timeout``, ``max_retries``, ``defaults``...). Local servers (Ollama,
vLLM) are priced at zero unless ``defaults`` carries a price.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

from ..pricing import ModelPricing
from .base import ProviderDefaults
from .openai import OpenAIProvider

__all__ = ["groq", "ollama", "openrouter", "together", "vllm"]

_FREE = ModelPricing(0.0, 0.0)


def _local_defaults(defaults: ProviderDefaults | None) -> ProviderDefaults:
    # Self-hosted models cost nothing per token; avoids "no price known" warnings.
    if defaults is None:
        return ProviderDefaults(pricing=_FREE)
    return defaults if defaults.pricing is not None else replace(defaults, pricing=_FREE)


def _ollama_url() -> str:
    host = os.environ.get("OLLAMA_HOST", "").strip().rstrip("/")
    if not host:
        return "http://localhost:11434/v1"
    if not host.startswith(("http://", "https://")):
        host = f"http://{host}"
    return f"{host}/v1"


def ollama(
    model: str,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    id: str = "ollama",
    defaults: ProviderDefaults | None = None,
    **kwargs: Any,
) -> OpenAIProvider:
    """A local Ollama server (``OLLAMA_HOST``, default ``http://localhost:11434``).

    No key is needed; ``OLLAMA_API_KEY`` is sent if set (for servers behind a proxy).
    """
    return OpenAIProvider(
        id,
        model,
        api_key,
        _local_defaults(defaults),
        base_url=base_url or _ollama_url(),
        api_key_env="OLLAMA_API_KEY",
        **kwargs,
    )


def vllm(
    model: str,
    base_url: str = "http://localhost:8000/v1",
    *,
    api_key: str | None = None,
    id: str = "vllm",
    defaults: ProviderDefaults | None = None,
    **kwargs: Any,
) -> OpenAIProvider:
    """A vLLM server's OpenAI-compatible API; ``VLLM_API_KEY`` if it was started with one."""
    return OpenAIProvider(
        id,
        model,
        api_key,
        _local_defaults(defaults),
        base_url=base_url,
        api_key_env="VLLM_API_KEY",
        **kwargs,
    )


def groq(
    model: str, *, api_key: str | None = None, id: str = "groq", **kwargs: Any
) -> OpenAIProvider:
    """GroqCloud (``https://api.groq.com/openai/v1``), key from ``GROQ_API_KEY``."""
    kwargs.setdefault("base_url", "https://api.groq.com/openai/v1")
    return OpenAIProvider(id, model, api_key, api_key_env="GROQ_API_KEY", **kwargs)


def together(
    model: str, *, api_key: str | None = None, id: str = "together", **kwargs: Any
) -> OpenAIProvider:
    """Together AI (``https://api.together.xyz/v1``), key from ``TOGETHER_API_KEY``."""
    kwargs.setdefault("base_url", "https://api.together.xyz/v1")
    return OpenAIProvider(id, model, api_key, api_key_env="TOGETHER_API_KEY", **kwargs)


def openrouter(
    model: str, *, api_key: str | None = None, id: str = "openrouter", **kwargs: Any
) -> OpenAIProvider:
    """OpenRouter (``https://openrouter.ai/api/v1``), key from ``OPENROUTER_API_KEY``.

    Model names carry the vendor (``"openai/gpt-4o-mini"``); prices are looked up
    without it. Pass ``default_headers={"HTTP-Referer": ..., "X-Title": ...}`` to
    identify your app.
    """
    kwargs.setdefault("base_url", "https://openrouter.ai/api/v1")
    return OpenAIProvider(id, model, api_key, api_key_env="OPENROUTER_API_KEY", **kwargs)
