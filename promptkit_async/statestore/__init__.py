"""State stores: where conversation histories live between turns.

* :class:`InMemoryStateStore`: in this process only; for development and tests.
* :class:`SQLiteStateStore`: one local file; survives restarts, no server.
* :class:`RedisStateStore`: Redis or Redis Cluster; shared by many processes.
* :class:`PostgresStateStore`: PostgreSQL (asyncpg, the ``[postgres]`` extra); shared,
  durable and queryable.

All of them fulfil :class:`StateStore` with the same behaviour (``tests/contract``).
A store of your own awaits its writes through :func:`finish_shielded`, so a write that
has begun completes even if the turn is cancelled. :func:`check_turn_id` is the rule
every turn id (idempotency key) follows, for a web handler to check a header with.
:class:`~promptkit_async.statestore.blobs.BlobOffloadStore` wraps any of them to keep
large image/document/audio bytes in a blob store of yours instead of in the history.
"""

from typing import TYPE_CHECKING, Any

from .._concurrency import finish_shielded
from ._common import MAX_TURN_ID_LENGTH, check_turn_id
from .base import Ledger, SessionPage, StateStore, TurnClaim, TurnStore
from .blobs import BlobOffloadStore, BlobStore, InMemoryBlobStore
from .memory import InMemoryStateStore
from .sqlite import SQLiteStateStore

if TYPE_CHECKING:
    from .postgres import PostgresStateStore
    from .redis import RedisStateStore

__all__ = [
    "BlobOffloadStore",
    "BlobStore",
    "InMemoryBlobStore",
    "InMemoryStateStore",
    "Ledger",
    "MAX_TURN_ID_LENGTH",
    "PostgresStateStore",
    "RedisStateStore",
    "SQLiteStateStore",
    "SessionPage",
    "StateStore",
    "TurnClaim",
    "TurnStore",
    "check_turn_id",
    "finish_shielded",
]


def __getattr__(name: str) -> Any:
    # redis-py takes about 0.1 s to import: pay for it only when Redis is used.
    if name == "RedisStateStore":
        from .redis import RedisStateStore

        globals()[name] = RedisStateStore
        return RedisStateStore
    if name == "PostgresStateStore":
        # asyncpg is optional (the [postgres] extra): imported only when Postgres is used.
        try:
            from .postgres import PostgresStateStore
        except ModuleNotFoundError as exc:
            if exc.name != "asyncpg":
                raise
            raise ImportError(
                "PostgresStateStore needs asyncpg: pip install 'promptkit_async[postgres]'"
            ) from exc

        globals()[name] = PostgresStateStore
        return PostgresStateStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
