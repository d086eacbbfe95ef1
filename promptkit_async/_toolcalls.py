"""Assembling streamed tool-call fragments into whole calls (shared by the providers, which
assemble what they stream, and the tool loop; exported as ``tools.ToolCallAssembler``)."""

from __future__ import annotations

from collections.abc import Iterable

from .types import ToolCall, ToolCallDelta

__all__ = ["ToolCallAssembler"]


class ToolCallAssembler:
    """Joins :class:`~promptkit_async.types.ToolCallDelta` fragments into tool calls.

    Fragments with the same ``index`` build one call: the first ``id`` and ``name`` seen
    win, ``arguments`` fragments are concatenated in arrival order. Calls come out
    ordered by index; a call that never received arguments gets ``"{}"``. Providers can
    use it to build their final response; ``ProviderMiddleware`` uses it when a
    provider's final response lists no calls although fragments were streamed.

    One assembler per streamed response; not shared between tasks.
    """

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        # index -> [id, name, argument fragments]
        self._parts: dict[int, tuple[list[str | None], list[str]]] = {}

    def __bool__(self) -> bool:
        return bool(self._parts)

    def add(self, deltas: Iterable[ToolCallDelta]) -> None:
        """Take in the fragments of one chunk."""
        for d in deltas:
            part = self._parts.get(d.index)
            if part is None:
                part = self._parts[d.index] = ([None, None], [])
            head, arguments = part
            if head[0] is None and d.id:
                head[0] = d.id
            if head[1] is None and d.name:
                head[1] = d.name
            if d.arguments:
                arguments.append(d.arguments)

    def calls(self) -> tuple[ToolCall, ...]:
        """The calls assembled so far, by index."""
        return tuple(
            ToolCall(head[0] or "", head[1] or "", "".join(arguments) or "{}")
            for _, (head, arguments) in sorted(self._parts.items())
        )
