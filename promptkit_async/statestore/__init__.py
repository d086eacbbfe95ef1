"""State stores: where conversation histories live between turns.

* :class:`InMemoryStateStore`: in this process only; for development and tests.
* :class:`SQLiteStateStore`: one local file; survives restarts, no server.
* :class:`RedisStateStore`: Redis or Redis Cluster; shared by many processes.

All of them fulfil :class:`StateStore` with the same behaviour (``tests/contract``).
:class:`~promptkit_async.statestore.blobs.BlobOffloadStore` wraps any of them to keep
large image/document/audio bytes in a blob store of yours instead of in the history.
"""

from typing import TYPE_CHECKING, Any

from .base import SessionPage, StateStore
from .blobs import BlobOffloadStore, BlobStore, InMemoryBlobStore
from .memory import InMemoryStateStore
from .sqlite import SQLiteStateStore

if TYPE_CHECKING:
    from .redis import RedisStateStore

__all__ = [
    "BlobOffloadStore",
    "BlobStore",
    "InMemoryBlobStore",
    "InMemoryStateStore",
    "RedisStateStore",
    "SQLiteStateStore",
    "SessionPage",
    "StateStore",
]


def __getattr__(name: str) -> Any:
    # redis-py takes about 0.1 s to import: pay for it only when Redis is used.
    if name == "RedisStateStore":
        from .redis import RedisStateStore

        globals()[name] = RedisStateStore
        return RedisStateStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
