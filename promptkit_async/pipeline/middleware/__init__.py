"""The middleware that ship with promptkit_async."""

from .context_window import ContextWindowMiddleware
from .provider import ProviderMiddleware, ProviderMiddlewareConfig
from .state import StateMiddleware

__all__ = [
    "ContextWindowMiddleware",
    "ProviderMiddleware",
    "ProviderMiddlewareConfig",
    "StateMiddleware",
]
