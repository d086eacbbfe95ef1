"""OpenAI-compatible servers, preconfigured: each function returns an :class:`OpenAIProvider`.

::

    provider = presets.groq("llama-3.3-70b-versatile")            # key from GROQ_API_KEY
    provider = presets.ollama("llama3.2")                          # http://localhost:11434/v1
    provider = presets.vllm("Qwen/Qwen2.5-7B-Instruct", "http://gpu-box:8000/v1")

Each preset reads its own vendor's key variable (never ``OPENAI_API_KEY``, so an OpenAI key
is not sent to another vendor) and accepts every :class:`OpenAIProvider` keyword
(``name``, ``api_key``, ``generation``, ``http_client``, ``timeout``, ``max_retries``...).
Local servers (Ollama, vLLM) are priced at zero unless ``pricing`` is given.
"""

from __future__ import annotations

import os
from typing import Any

from ..pricing import ModelPricing
from .base import resolve_name
from .openai import OpenAIProvider

__all__ = ["groq", "ollama", "openrouter", "together", "vllm"]

_FREE = ModelPricing(0.0, 0.0)


def _ollama_url() -> str:
    host = os.environ.get("OLLAMA_HOST", "").strip().rstrip("/")
    if not host:
        return "http://localhost:11434/v1"
    if not host.startswith(("http://", "https://")):
        host = f"http://{host}"
    return f"{host}/v1"


def _preset(
    kind: str,
    model: str,
    key_env: str,
    base_url: str,
    options: dict[str, Any],
    *,
    local: bool = False,
) -> OpenAIProvider:
    options["name"] = resolve_name(kind, options.pop("name", None), options.pop("id", None), kind)
    if options.get("base_url") is None:
        options["base_url"] = base_url
    defaults = options.get("defaults")
    if local and options.get("pricing") is None and (defaults is None or not defaults.pricing):
        # Self-hosted models cost nothing per token; avoids "no price known" warnings.
        options["pricing"] = _FREE
    return OpenAIProvider(model=model, api_key_env=key_env, **options)


def ollama(model: str, **options: Any) -> OpenAIProvider:
    """A local Ollama server (``OLLAMA_HOST``, default ``http://localhost:11434``).

    No key is needed; ``OLLAMA_API_KEY`` is sent if set (for servers behind a proxy).
    """
    return _preset("ollama", model, "OLLAMA_API_KEY", _ollama_url(), options, local=True)


def vllm(model: str, base_url: str = "http://localhost:8000/v1", **options: Any) -> OpenAIProvider:
    """A vLLM server's OpenAI-compatible API; ``VLLM_API_KEY`` if it was started with one."""
    return _preset("vllm", model, "VLLM_API_KEY", base_url, options, local=True)


def groq(model: str, **options: Any) -> OpenAIProvider:
    """GroqCloud (``https://api.groq.com/openai/v1``), key from ``GROQ_API_KEY``."""
    return _preset("groq", model, "GROQ_API_KEY", "https://api.groq.com/openai/v1", options)


def together(model: str, **options: Any) -> OpenAIProvider:
    """Together AI (``https://api.together.xyz/v1``), key from ``TOGETHER_API_KEY``."""
    return _preset("together", model, "TOGETHER_API_KEY", "https://api.together.xyz/v1", options)


def openrouter(model: str, **options: Any) -> OpenAIProvider:
    """OpenRouter (``https://openrouter.ai/api/v1``), key from ``OPENROUTER_API_KEY``.

    Model names carry the vendor (``"openai/gpt-4o-mini"``); prices are looked up
    without it. Pass ``default_headers={"HTTP-Referer": ..., "X-Title": ...}`` to
    identify your app.
    """
    return _preset(
        "openrouter", model, "OPENROUTER_API_KEY", "https://openrouter.ai/api/v1", options
    )
