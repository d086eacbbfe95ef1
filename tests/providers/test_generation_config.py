"""The provider surface: GenerationConfig as the one home of generation settings, provider
constructors (keyword-only options, the tutorial's positional form), and the deprecated
spellings kept for one release."""

from __future__ import annotations

import json

import httpx
import pytest

from promptkit_async import (
    DemoProvider,
    GenerationConfig,
    InvalidRequestError,
    Message,
    MockProvider,
    ModelPricing,
    Pipeline,
    ProviderMiddleware,
    ProviderMiddlewareConfig,
)
from promptkit_async.providers import (
    AnthropicProvider,
    GeminiProvider,
    OpenAIProvider,
    ProviderDefaults,
    ProviderRequest,
    presets,
)

from .conftest import API_KEY, CHAT_URL

HI = [Message("user", "Hi")]


# --- GenerationConfig ----------------------------------------------------------------------


def test_request_settings_win_over_the_provider_defaults() -> None:
    defaults = GenerationConfig(
        max_tokens=100, temperature=0.3, stop="END", extra_body={"a": 1, "b": 1}
    )
    request = GenerationConfig(temperature=0.0, seed=7, extra_body={"b": 2})
    merged = request.with_defaults(defaults)
    assert merged == GenerationConfig(
        max_tokens=100, temperature=0.0, stop=("END",), seed=7, extra_body={"a": 1, "b": 2}
    )
    assert GenerationConfig().with_defaults(defaults) == defaults
    assert request.with_defaults(GenerationConfig()) == request


@pytest.mark.parametrize(
    "settings",
    [
        {"max_tokens": 0},
        {"max_tokens": 1.5},
        {"temperature": -0.1},
        {"temperature": float("nan")},
        {"temperature": True},
        {"top_p": 1.5},
        {"stop": [1]},
        {"seed": "7"},
        {"extra_body": ["x"]},
    ],
)
def test_generation_config_rejects_bad_values(settings: dict[str, object]) -> None:
    with pytest.raises(InvalidRequestError):
        GenerationConfig(**settings)  # type: ignore[arg-type]


async def test_one_config_reaches_the_wire_from_every_level(http_client, router, fakes) -> None:
    route = router.post(fakes.CHAT_URL).mock(
        return_value=httpx.Response(200, json=fakes.completion())
    )
    provider = OpenAIProvider(
        "gpt-4o-mini",
        api_key=API_KEY,
        http_client=http_client,
        generation=GenerationConfig(max_tokens=100, temperature=0.3, top_p=0.9),
    )
    config = ProviderMiddlewareConfig(GenerationConfig(max_tokens=50, seed=3), stream=False)
    async with provider, Pipeline(ProviderMiddleware(provider, config=config)) as pipe:
        await pipe.execute("s1", "user", "Hi")
    body = json.loads(route.calls.last.request.content)
    assert (body["max_completion_tokens"], body["temperature"], body["top_p"], body["seed"]) == (
        50,
        0.3,
        0.9,
        3,
    )


# --- constructors ----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [OpenAIProvider, AnthropicProvider, GeminiProvider])
def test_constructor_forms(cls, monkeypatch) -> None:
    alone = cls("some-model")
    assert (alone.name, alone.id, alone.model) == (cls.kind, cls.kind, "some-model")
    named = cls("some-model", name="primary", api_key="k1")
    assert (named.name, named.model, named._api_key.reveal()) == ("primary", "some-model", "k1")
    tutorial = cls("label", "some-model", "k2")  # the tutorial's (name, model, api_key)
    assert (tutorial.name, tutorial.model, tutorial._api_key.reveal()) == (
        "label",
        "some-model",
        "k2",
    )
    assert cls("label", model="some-model").name == "label"
    assert cls(model="some-model").name == cls.kind


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("openai", "gpt-4o-mini", "k", None), {}, "at most 3 positional"),
        (("openai", "gpt-4o-mini", "k", None, True), {}, "at most 3 positional"),
        ((), {}, "needs a model"),
        (("openai", "gpt-4o-mini"), {"name": "x"}, "both by position and by keyword"),
        (("openai", "gpt-4o-mini", "k"), {"api_key": "k"}, "api_key by position"),
    ],
)
def test_constructor_misuse_is_a_clear_type_error(args, kwargs, match) -> None:
    with pytest.raises(TypeError, match=match):
        OpenAIProvider(*args, **kwargs)


def test_options_are_keyword_only() -> None:
    provider = OpenAIProvider("gpt-4o-mini", include_raw_output=True, pricing=ModelPricing(1, 2))
    assert provider.include_raw_output
    assert provider.pricing == ModelPricing(1, 2)


def test_presets_and_offline_providers_take_name() -> None:
    assert presets.groq("m", name="fast").name == "fast"
    assert presets.ollama("m").name == "ollama"
    assert MockProvider(name="m1").name == "m1"
    assert DemoProvider(name="d1").id == "d1"
    assert repr(MockProvider()) == "MockProvider(name='mock', model='mock-model')"


# --- deprecated spellings (one release) ------------------------------------------------------


def test_provider_defaults_still_work_with_a_warning() -> None:
    with pytest.warns(DeprecationWarning, match="ProviderDefaults is deprecated"):
        defaults = ProviderDefaults(temperature=0.2, max_tokens=9, pricing=ModelPricing(1, 2))
    provider = OpenAIProvider("gpt-4o-mini", defaults=defaults)
    assert provider.generation == GenerationConfig(max_tokens=9, temperature=0.2)
    assert provider.pricing == ModelPricing(1, 2)
    mock = MockProvider(defaults=defaults)
    assert mock.generation.max_tokens == 9
    with pytest.warns(DeprecationWarning, match="ProviderDefaults is deprecated"):
        assert provider.defaults.temperature == 0.2


def test_id_keyword_still_works_with_a_warning() -> None:
    with pytest.warns(DeprecationWarning, match=r"OpenAIProvider\(id=...\) is deprecated"):
        assert OpenAIProvider(model="gpt-4o-mini", id="old").name == "old"
    with pytest.warns(DeprecationWarning, match=r"MockProvider\(id=...\) is deprecated"):
        assert MockProvider(id="summarizer").name == "summarizer"
    with pytest.warns(DeprecationWarning, match=r"vllm\(id=...\) is deprecated"):
        assert presets.vllm("m", id="gpu").name == "gpu"
    with pytest.raises(TypeError, match="both name= and its old spelling id="):
        MockProvider(name="a", id="b")


def test_request_sampling_keywords_still_work_with_a_warning() -> None:
    with pytest.warns(DeprecationWarning, match=r"ProviderRequest\(max_tokens=, seed=\)"):
        request = ProviderRequest(HI, max_tokens=9, seed=1)
    assert request.generation == GenerationConfig(max_tokens=9, seed=1)
    with pytest.warns(DeprecationWarning, match="ProviderRequest.max_tokens is deprecated"):
        assert request.max_tokens == 9
    with pytest.raises(TypeError, match="unexpected keyword"):
        ProviderRequest(HI, max_token=9)


def test_middleware_config_sampling_keywords_still_work_with_a_warning() -> None:
    with pytest.warns(DeprecationWarning, match=r"ProviderMiddlewareConfig\(max_tokens="):
        config = ProviderMiddlewareConfig(max_tokens=500, temperature=0.7, stream=False)
    assert config.generation == GenerationConfig(max_tokens=500, temperature=0.7)
    assert config.stream is False
    with pytest.warns(DeprecationWarning, match="ProviderMiddlewareConfig.temperature"):
        assert config.temperature == 0.7


def test_sampling_keywords_fold_into_a_given_generation() -> None:
    with pytest.warns(DeprecationWarning, match=r"ProviderRequest\(max_tokens=\)"):
        request = ProviderRequest(HI, generation=GenerationConfig(top_p=0.5), max_tokens=3)
    assert request.generation == GenerationConfig(max_tokens=3, top_p=0.5)


def test_the_default_endpoint() -> None:
    assert OpenAIProvider("gpt-4o-mini")._url(True) == httpx.URL(CHAT_URL)
