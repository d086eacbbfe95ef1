"""Server-sent events decoding with no I/O: feed bytes in, get events out.

Follows the WHATWG "event stream" interpretation rules: lines end with ``\\n``, ``\\r\\n``
or ``\\r`` (a ``\\r\\n`` split across two chunks counts once); lines starting with ``:``
are comments; ``data`` lines of one event are joined with ``\\n``; ``event``, ``id`` and
``retry`` fields are kept; unknown fields are ignored; a leading byte-order mark is
dropped. Two deliberate leniencies for real-world servers: an event is dispatched when it
had any ``data`` or ``event`` line (so ``data:`` with an empty value still arrives), and
:meth:`SSEDecoder.flush` at end of stream dispatches the last event even without its
closing blank line.

Size cap: a line longer than ``max_event_size`` bytes, or an event whose data grows past
``max_event_size`` characters (:data:`MAX_EVENT_SIZE` by default), raises
:class:`~promptkit_async.errors.APIResponseError` instead of buffering until memory runs
out (a broken or hostile server that never ends a line or an event). The pieces of a
line still arriving are kept in a list and joined once, so a long line costs linear time.

A decoder belongs to one stream and is not safe to share between tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice

from ..errors import APIResponseError

__all__ = ["MAX_EVENT_SIZE", "SSEDecoder", "ServerSentEvent"]

#: The default cap on one line (bytes) and on one event's data (characters): far above
#: any real event (a token, a tool call, an inline image), far below hurting memory.
MAX_EVENT_SIZE = 32 * 1024 * 1024


@dataclass(slots=True)  # not frozen: built for every event, and frozen costs 3x to build
class ServerSentEvent:
    """One dispatched event.

    Attributes:
        data: the ``data`` lines joined with ``\\n``.
        event: the ``event`` field, or ``"message"`` when the event had none.
        id: the last event id seen on the stream so far (ids persist across events).
        retry: the ``retry`` field of this event in milliseconds, if it had one.
    """

    data: str
    event: str = "message"
    id: str = ""
    retry: int | None = None


class SSEDecoder:
    """Incremental decoder: :meth:`feed` network chunks, then :meth:`flush` at EOF.

    Args:
        max_event_size: the longest line (bytes) and event data (characters) accepted.
    """

    __slots__ = (
        "_counted",
        "_data",
        "_event",
        "_last_id",
        "_limit",
        "_partial",
        "_partial_size",
        "_retry",
        "_size",
        "_skip_lf",
        "_started",
        "reconnection_time",
    )

    def __init__(self, max_event_size: int = MAX_EVENT_SIZE) -> None:
        self._limit = max_event_size
        # Made on first use (most streams never need them): the pieces of an incomplete
        # trailing line, and the data lines of an event still open.
        self._partial: list[bytes] | None = None
        self._partial_size = 0
        self._skip_lf = False  # the previous chunk ended in "\r": drop a leading "\n"
        self._started = False  # the byte-order mark check is done
        self._data: list[str] | None = None
        self._size = 0  # characters held by the first ``_counted`` lines of self._data
        self._counted = 0
        self._event: str | None = None
        self._last_id = ""
        self._retry: int | None = None
        #: The latest ``retry`` value (milliseconds) the server sent, if any.
        self.reconnection_time: int | None = None

    @property
    def last_event_id(self) -> str:
        """The last ``id`` seen on the stream (what a reconnect would send)."""
        return self._last_id

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Decode ``chunk`` and return the events it completed (often none or one).

        Raises:
            APIResponseError: a line or an event's data passed ``max_event_size``.
        """
        if not chunk:
            return []  # nothing new (and not the "\n" half of a split "\r\n")
        if (
            chunk[:6] == b"data: "
            and chunk[-2:] == b"\n\n"
            and not (self._partial or self._data or self._skip_lf)
            and self._event is None
            and len(chunk) <= self._limit
            and b"\r" not in chunk
        ):
            # The usual read: whole "data: ...\n\n" events (one, or several that arrived
            # together), nothing pending (not even part of a byte-order mark: it would be
            # in _partial). Split on the separator; if the chunk holds no other line
            # break, each piece is exactly one event's one data line.
            texts = chunk[6:-2].decode("utf-8", "replace").split("\n\ndata: ")
            if chunk.count(b"\n") == 2 * len(texts):
                self._started = True
                last_id = self._last_id
                return [ServerSentEvent(text, "message", last_id) for text in texts]
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        partial = self._partial
        if partial:
            if b"\n" not in chunk and b"\r" not in chunk and self._started:
                # The same line goes on: keep the piece, join the line once it ends.
                partial.append(chunk)
                self._partial_size += len(chunk)
                if self._partial_size > self._limit:
                    self._too_large()
                return []
            chunk = partial[0] + chunk if len(partial) == 1 else b"".join((*partial, chunk))
            partial.clear()
        if not self._started:
            if len(chunk) < 3 and b"\xef\xbb\xbf".startswith(chunk):
                self._keep_partial(chunk)  # maybe the start of a byte-order mark
                return []
            self._started = True
            if chunk[:3] == b"\xef\xbb\xbf":
                chunk = chunk[3:]
        if b"\r" in chunk:
            if chunk[-1:] == b"\r":
                # The "\r" ends a line now; a "\n" opening the next chunk belongs to it.
                self._skip_lf = True
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        end = chunk.rfind(b"\n")
        if end < 0:
            self._keep_partial(chunk)
            return []
        if end + 1 < len(chunk):
            tail = chunk[end + 1 :]
            if partial is None:
                partial = self._partial = []
            partial.append(tail)
            self._partial_size = len(tail)
            if len(tail) > self._limit:
                self._too_large()
        if end > self._limit and max(map(len, chunk[:end].split(b"\n"))) > self._limit:
            self._too_large()
        # Lines end with an ASCII byte, so decoding whole lines never splits a character.
        lines = chunk[:end].decode("utf-8", "replace").split("\n")
        return self._lines(lines)

    def flush(self) -> list[ServerSentEvent]:
        """End of stream: decode a trailing partial line and dispatch a pending event."""
        if not (self._partial or self._data) and self._event is None:
            return []  # nothing pending (the usual end)
        tail = b"".join(self._partial or ())
        self._partial = None
        lines = [tail.decode("utf-8", "replace")] if tail else []
        lines.append("")
        return self._lines(lines)

    def _keep_partial(self, piece: bytes) -> None:
        if self._partial is None:
            self._partial = []
        self._partial.append(piece)
        self._partial_size = len(piece)
        if self._partial_size > self._limit:
            self._too_large()

    def _too_large(self) -> None:
        self._partial = self._data = None
        self._size = self._counted = 0
        raise APIResponseError(
            f"the event stream sent a line or an event longer than {self._limit} "
            "(max_event_size); the server's stream is broken or never ends"
        )

    def _lines(self, lines: list[str]) -> list[ServerSentEvent]:
        events: list[ServerSentEvent] = []
        data = self._data
        if data is None:
            data = self._data = []
        for line in lines:
            if not line:
                if data or self._event is not None:
                    text = "\n".join(data)
                    if len(text) > self._limit:
                        self._too_large()
                    events.append(
                        ServerSentEvent(text, self._event or "message", self._last_id, self._retry)
                    )
                    data.clear()
                    if self._counted:
                        self._size = self._counted = 0
                    self._event = None
                self._retry = None
                continue
            # The hot path: "data: ..." lines.
            if line.startswith("data:"):
                data.append(line[6:] if line[5:6] == " " else line[5:])
                continue
            if line[0] == ":":
                continue  # a comment (keep-alive)
            name, colon, value = line.partition(":")
            if colon and value[:1] == " ":
                value = value[1:]
            if name == "event":
                self._event = value
            elif name == "data":
                data.append(value)  # "data" with no colon: an empty data line
            elif name == "id":
                if "\0" not in value:
                    self._last_id = value
            elif name == "retry" and value.isdigit() and value.isascii():
                self._retry = self.reconnection_time = int(value)
        if data:
            # An event still open after this chunk (rare: events usually end in the
            # chunk that starts them). Count what it holds, once per line.
            counted = self._counted
            self._size += sum(map(len, islice(data, counted, None))) + len(data) - counted
            self._counted = len(data)
            if self._size > self._limit:
                self._too_large()
        return events
