"""The provider contract: one request shape in, one chunk/response shape out.

A provider turns a :class:`ProviderRequest` into either a complete
:class:`~promptkit_async.types.ProviderResponse` (:meth:`Provider.complete`) or an async
iterator of :class:`~promptkit_async.types.StreamChunk` (:meth:`Provider.stream`) whose
last chunk carries the complete ``response``. Wire formats stay inside each provider
module; nothing else in the library sees them.

Concurrency: a provider instance is safe to share between any number of tasks and
sessions; it holds one long-lived HTTP client and no per-conversation state.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .._lifecycle import AsyncResource
from ..pricing import ModelPricing, calculate_cost, lookup_pricing
from ..types import Cost, Message, ProviderResponse, StreamChunk, ToolDefinition, Usage

__all__ = [
    "BaseProvider",
    "Provider",
    "ProviderDefaults",
    "ProviderRequest",
]


@dataclass(frozen=True, slots=True)
class ProviderDefaults:
    """Per-provider defaults, used when a request leaves a field unset.

    ``pricing`` overrides the built-in price table for this provider's model.
    """

    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    pricing: ModelPricing | None = None


@dataclass(frozen=True, slots=True)
class ProviderRequest:
    """What one provider call sends.

    Attributes:
        messages: the conversation to send, oldest first (system messages included).
        max_tokens / temperature / top_p / stop / seed: sampling controls; ``None`` means
            the provider's default.
        tools: tools the model may call.
        tool_choice: ``"auto"``, ``"none"``, ``"required"`` or a tool name.
        extra_body: provider-specific fields merged into the request body as-is.
    """

    messages: Sequence[Message]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] | None = None
    seed: int | None = None
    tools: Sequence[ToolDefinition] = ()
    tool_choice: str | None = None
    extra_body: Mapping[str, Any] | None = field(default=None)


@runtime_checkable
class Provider(Protocol):
    """What the pipeline needs from a model provider."""

    @property
    def id(self) -> str:
        """A short name for logs and errors, e.g. ``"openai"``."""
        ...

    @property
    def model(self) -> str:
        """The model requests are sent to."""
        ...

    def stream(self, request: ProviderRequest) -> AsyncIterator[StreamChunk]:
        """Stream the answer. The last chunk carries ``response``.

        The returned iterator must be closed (``aclose()``, or
        ``contextlib.aclosing``) by whoever stops iterating early; closing it closes the
        HTTP response at once.
        """
        ...

    async def complete(self, request: ProviderRequest) -> ProviderResponse:
        """Send the request without streaming and return the whole answer."""
        ...

    def calculate_cost(self, usage: Usage) -> Cost:
        """What ``usage`` costs with this provider's model and pricing."""
        ...

    async def aclose(self) -> None:
        """Release the provider's resources (its HTTP client, if it owns it)."""
        ...


class BaseProvider(AsyncResource):
    """Shared plumbing for providers: identity, defaults, pricing and lifecycle.

    Subclasses implement :meth:`stream` and :meth:`complete`, and override
    :meth:`aclose` when they own resources. ``async with provider:`` closes it on exit.
    """

    def __init__(self, id: str, model: str, defaults: ProviderDefaults | None = None) -> None:
        self._id = id
        self._model = model
        self.defaults = defaults or ProviderDefaults()
        self._pricing = self.defaults.pricing or lookup_pricing(model)

    @property
    def id(self) -> str:
        """A short name for logs and errors."""
        return self._id

    @property
    def model(self) -> str:
        """The model requests are sent to."""
        return self._model

    def __repr__(self) -> str:
        # Never include credentials: only identity.
        return f"{type(self).__name__}(id={self._id!r}, model={self._model!r})"

    def calculate_cost(self, usage: Usage) -> Cost:
        """Price ``usage`` with ``defaults.pricing`` or the built-in table."""
        return calculate_cost(usage, self._pricing, model=self._model)

    def stream(self, request: ProviderRequest) -> AsyncIterator[StreamChunk]:
        """Stream the answer; see :class:`Provider`."""
        raise NotImplementedError

    async def complete(self, request: ProviderRequest) -> ProviderResponse:
        """Answer without streaming; see :class:`Provider`."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release resources. The base class owns none."""
