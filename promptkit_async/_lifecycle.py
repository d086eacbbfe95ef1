"""One shape for everything that holds resources: ``aclose()`` plus ``async with``."""

from __future__ import annotations

from types import TracebackType

from typing_extensions import Self

__all__ = ["AsyncResource"]


class AsyncResource:
    """Mixin: ``async with obj:`` returns ``obj`` and awaits ``obj.aclose()`` on exit."""

    __slots__ = ()  # so that a subclass may use __slots__ (a per-turn ResultStream does)

    async def aclose(self) -> None:
        """Release what this object owns (nothing, unless a subclass says otherwise)."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
