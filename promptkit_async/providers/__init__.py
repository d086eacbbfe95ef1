"""Model providers: one module per wire format, one shape for the rest of the library."""

from .base import BaseProvider, Provider, ProviderDefaults, ProviderRequest
from .demo import DemoProvider
from .mock import MockProvider, MockReply

__all__ = [
    "BaseProvider",
    "DemoProvider",
    "MockProvider",
    "MockReply",
    "Provider",
    "ProviderDefaults",
    "ProviderRequest",
]
