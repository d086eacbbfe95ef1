"""OpenAI-compatible presets: base URLs, key variables, local pricing."""

from __future__ import annotations

import json

import httpx
import pytest

from promptkit_async.errors import AuthenticationError
from promptkit_async.pricing import ModelPricing
from promptkit_async.providers import GenerationConfig, OpenAIProvider, ProviderRequest, presets
from promptkit_async.types import Message

HELLO = ProviderRequest([Message("user", "Hi")], generation=GenerationConfig(max_tokens=8))

HOSTED = [
    (presets.groq, "GROQ_API_KEY", "https://api.groq.com/openai/v1"),
    (presets.together, "TOGETHER_API_KEY", "https://api.together.xyz/v1"),
    (presets.openrouter, "OPENROUTER_API_KEY", "https://openrouter.ai/api/v1"),
]


@pytest.mark.parametrize(("preset", "env", "base_url"), HOSTED)
async def test_hosted_presets(
    preset, env, base_url, http_client, router, fakes, monkeypatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-must-not-leak")
    monkeypatch.setenv(env, "vendor-key")
    route = router.post(f"{base_url}/chat/completions").mock(
        return_value=httpx.Response(200, json=fakes.completion())
    )
    provider = preset("some-model", http_client=http_client)
    assert isinstance(provider, OpenAIProvider)
    assert provider.base_url == base_url
    assert provider.id == preset.__name__
    async with provider:
        await provider.complete(HELLO)
    request = route.calls.last.request
    assert request.headers["authorization"] == "Bearer vendor-key"
    body = request.read()
    assert b"sk-openai" not in body
    fakes.validate_request(json.loads(body), stream=False)
    assert b'"max_tokens":8' in body


@pytest.mark.parametrize(("preset", "env", "base_url"), HOSTED)
async def test_hosted_presets_never_fall_back_to_the_openai_key(
    preset, env, base_url, http_client, router, fakes, monkeypatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-must-not-leak")
    route = router.post(f"{base_url}/chat/completions").mock(
        return_value=httpx.Response(401, json={"error": {"message": "missing key"}})
    )
    async with preset("m", http_client=http_client) as provider:
        with pytest.raises(AuthenticationError, match=env):
            await provider.complete(HELLO)
    assert "authorization" not in route.calls.last.request.headers


async def test_ollama_is_local_keyless_and_free(http_client, router, fakes, monkeypatch) -> None:
    route = router.post("http://localhost:11434/v1/chat/completions").mock(
        return_value=httpx.Response(200, json=fakes.completion())
    )
    async with presets.ollama("llama3.2", http_client=http_client) as provider:
        response = await provider.complete(HELLO)
    assert "authorization" not in route.calls.last.request.headers
    assert response.cost.priced
    assert response.cost.total_cost == 0.0


def test_ollama_host_variable(monkeypatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "10.0.0.5:11434")
    assert presets.ollama("m").base_url == "http://10.0.0.5:11434/v1"
    monkeypatch.setenv("OLLAMA_HOST", "https://ollama.example.com/")
    assert presets.ollama("m").base_url == "https://ollama.example.com/v1"


async def test_vllm_with_key_and_own_price(http_client, router, fakes, monkeypatch) -> None:
    monkeypatch.setenv("VLLM_API_KEY", "vllm-token")
    route = router.post("http://gpu:8000/v1/chat/completions").mock(
        return_value=httpx.Response(200, json=fakes.completion())
    )
    price = ModelPricing(1.0, 2.0)
    async with presets.vllm(
        "qwen", "http://gpu:8000/v1", pricing=price, http_client=http_client
    ) as p:
        response = await p.complete(HELLO)
    assert route.calls.last.request.headers["authorization"] == "Bearer vllm-token"
    assert response.cost.total_cost > 0  # the given price wins over "local is free"
    assert presets.vllm("qwen").base_url == "http://localhost:8000/v1"


def test_presets_pass_options_through() -> None:
    provider = presets.groq("m", api_key="explicit", max_retries=5, base_url="https://proxy/v1")
    assert provider.max_retries == 5
    assert provider.base_url == "https://proxy/v1"
    assert "explicit" not in repr(provider)
