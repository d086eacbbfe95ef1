"""The middleware that ship with promptkit_async."""

from .provider import ProviderMiddleware, ProviderMiddlewareConfig
from .state import StateMiddleware

__all__ = [
    "ProviderMiddleware",
    "ProviderMiddlewareConfig",
    "StateMiddleware",
]
