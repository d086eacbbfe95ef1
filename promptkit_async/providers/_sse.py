"""Server-sent events decoding with no I/O: feed bytes in, get events out.

Follows the WHATWG "event stream" interpretation rules: lines end with ``\\n``, ``\\r\\n``
or ``\\r`` (a ``\\r\\n`` split across two chunks counts once); lines starting with ``:``
are comments; ``data`` lines of one event are joined with ``\\n``; ``event``, ``id`` and
``retry`` fields are kept; unknown fields are ignored; a leading byte-order mark is
dropped. Two deliberate leniencies for real-world servers: an event is dispatched when it
had any ``data`` or ``event`` line (so ``data:`` with an empty value still arrives), and
:meth:`SSEDecoder.flush` at end of stream dispatches the last event even without its
closing blank line.

A decoder belongs to one stream and is not safe to share between tasks.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SSEDecoder", "ServerSentEvent"]


@dataclass(frozen=True, slots=True)
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
    """Incremental decoder: :meth:`feed` network chunks, then :meth:`flush` at EOF."""

    __slots__ = (
        "_buffer",
        "_data",
        "_event",
        "_last_id",
        "_retry",
        "_skip_lf",
        "_started",
        "reconnection_time",
    )

    def __init__(self) -> None:
        self._buffer = b""  # an incomplete trailing line
        self._skip_lf = False  # the previous chunk ended in "\r": drop a leading "\n"
        self._started = False  # the byte-order mark check is done
        self._data: list[str] = []
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
        """Decode ``chunk`` and return the events it completed (often none or one)."""
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if self._buffer:
            chunk = self._buffer + chunk
        if not self._started:
            if len(chunk) < 3 and b"\xef\xbb\xbf".startswith(chunk):
                self._buffer = chunk  # maybe the start of a byte-order mark
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
            self._buffer = chunk
            return []
        self._buffer = chunk[end + 1 :]
        # Lines end with an ASCII byte, so decoding whole lines never splits a character.
        lines = chunk[:end].decode("utf-8", "replace").split("\n")
        return self._lines(lines)

    def flush(self) -> list[ServerSentEvent]:
        """End of stream: decode a trailing partial line and dispatch a pending event."""
        lines = [self._buffer.decode("utf-8", "replace")] if self._buffer else []
        self._buffer = b""
        lines.append("")
        return self._lines(lines)

    def _lines(self, lines: list[str]) -> list[ServerSentEvent]:
        events: list[ServerSentEvent] = []
        data = self._data
        for line in lines:
            if not line:
                if data or self._event is not None:
                    events.append(
                        ServerSentEvent(
                            "\n".join(data), self._event or "message", self._last_id, self._retry
                        )
                    )
                    data.clear()
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
        return events
