"""Model providers: one module per wire format, one shape for the rest of the library."""

from .base import BaseProvider, Provider, ProviderDefaults, ProviderRequest
from .mock import MockProvider, MockReply

__all__ = [
    "BaseProvider",
    "MockProvider",
    "MockReply",
    "Provider",
    "ProviderDefaults",
    "ProviderRequest",
]
