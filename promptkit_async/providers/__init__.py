"""Model providers: one module per wire format, one shape for the rest of the library."""

from .._structured import ResponseFormat
from . import presets
from ._http import Secret
from ._retry import RetryPolicy
from ._transport import AiohttpTransport
from .anthropic import AnthropicProvider
from .base import BaseProvider, GenerationConfig, Provider, ProviderDefaults, ProviderRequest
from .demo import DemoProvider
from .gemini import GeminiProvider
from .mock import MockProvider, MockReply
from .openai import OpenAIProvider

__all__ = [
    "AiohttpTransport",
    "AnthropicProvider",
    "BaseProvider",
    "DemoProvider",
    "GeminiProvider",
    "GenerationConfig",
    "MockProvider",
    "MockReply",
    "OpenAIProvider",
    "Provider",
    "ProviderDefaults",
    "ProviderRequest",
    "ResponseFormat",
    "RetryPolicy",
    "Secret",
    "presets",
]
