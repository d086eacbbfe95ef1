"""State stores: where conversation histories live between turns."""

from .base import SessionPage, StateStore
from .memory import InMemoryStateStore

__all__ = [
    "InMemoryStateStore",
    "SessionPage",
    "StateStore",
]
