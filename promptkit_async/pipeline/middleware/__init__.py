"""The middleware that ship with promptkit_async."""

from .context_window import ContextWindowMiddleware
from .provider import ProviderMiddleware, ProviderMiddlewareConfig
from .state import BusyPolicy, SessionBudget, StateMiddleware

__all__ = [
    "BusyPolicy",
    "ContextWindowMiddleware",
    "ProviderMiddleware",
    "ProviderMiddlewareConfig",
    "SessionBudget",
    "StateMiddleware",
]
