"""In-process bookkeeping the SQLite and PostgreSQL stores share for session leases.

:class:`Waiters` holds the turns of this process that wait for a session's lease (woken
by this store's own releases at once, and by the store's signalling from other
processes); :class:`Watches` holds the leases this process watches for the
``interrupt`` policy. Both are used from the event loop only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

__all__ = ["Waiters", "Watches"]

_log = logging.getLogger("promptkit_async.statestore")


class Waiters:
    """Futures of the turns waiting for a session's lease, per session id."""

    __slots__ = ("_by_session",)

    def __init__(self) -> None:
        self._by_session: dict[str, set[asyncio.Future[None]]] = {}

    def register(self, session_id: str) -> asyncio.Future[None]:
        """A future resolved by the next :meth:`wake` of ``session_id``; pass it to
        :meth:`discard` when done with it."""
        future = asyncio.get_running_loop().create_future()
        self._by_session.setdefault(session_id, set()).add(future)
        return future

    def discard(self, session_id: str, future: asyncio.Future[None]) -> None:
        """Stop waiting with ``future``."""
        futures = self._by_session.get(session_id)
        if futures is not None:
            futures.discard(future)
            if not futures:
                del self._by_session[session_id]

    def wake(self, session_id: str) -> None:
        """Wake every waiter of ``session_id`` (they then try to take the lease)."""
        for future in self._by_session.pop(session_id, ()):
            if not future.done():
                future.set_result(None)

    def wake_all(self) -> None:
        """Wake everyone (the store is closing, or its signalling was interrupted)."""
        for session_id in list(self._by_session):
            self.wake(session_id)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._by_session


class Watches:
    """The leases watched for loss: session id → token → ``on_lost`` callbacks."""

    __slots__ = ("_by_session",)

    def __init__(self) -> None:
        self._by_session: dict[str, dict[int, list[Callable[[], None]]]] = {}

    def add(self, session_id: str, token: int, on_lost: Callable[[], None]) -> Callable[[], None]:
        """Watch ``token``; returns the function that stops watching (idempotent)."""
        callbacks = self._by_session.setdefault(session_id, {}).setdefault(token, [])
        callbacks.append(on_lost)

        def stop() -> None:
            tokens = self._by_session.get(session_id)
            if tokens is None or token not in tokens:
                return
            with contextlib.suppress(ValueError):
                tokens[token].remove(on_lost)
            if not tokens[token]:
                del tokens[token]
            if not tokens:
                del self._by_session[session_id]

        return stop

    def sessions(self) -> list[str]:
        """The watched session ids."""
        return list(self._by_session)

    def __bool__(self) -> bool:
        return bool(self._by_session)

    def lost(self, session_id: str, newest: int | None) -> None:
        """The session's newest token is ``newest`` (``None``: its lease row is gone):
        every watched older token lost its lease; tell each watcher once."""
        tokens = self._by_session.get(session_id)
        if not tokens:
            return
        gone = [t for t in tokens if newest is None or t < newest]
        for token in gone:
            for callback in tokens.pop(token):
                try:
                    callback()
                except Exception:  # a watcher's bug must not stop the others being told
                    _log.exception("on_lost callback of session %r failed", session_id)
        if not tokens:
            self._by_session.pop(session_id, None)
