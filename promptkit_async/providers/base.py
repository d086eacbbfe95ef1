"""The provider contract: one request shape in, one chunk/response shape out.

A provider turns a :class:`ProviderRequest` into either a complete
:class:`~promptkit_async.types.ProviderResponse` (:meth:`Provider.complete`) or an async
iterator of :class:`~promptkit_async.types.StreamChunk` (:meth:`Provider.stream`) whose
last chunk carries the complete ``response``. Wire formats stay inside each provider
module; nothing else in the library sees them.

Generation settings (``max_tokens``, ``temperature``...) have one home,
:class:`GenerationConfig`: a provider's defaults, a request's settings and
``ProviderMiddlewareConfig.generation`` are all one, and a request's fields win over the
provider's where they are set (:meth:`GenerationConfig.with_defaults`).

Concurrency: a provider instance is safe to share between any number of tasks and
sessions; it holds one long-lived HTTP client and no per-conversation state.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

from typing_extensions import TypedDict

from .._lifecycle import AsyncResource
from .._structured import ResponseFormat, ResponseFormatLike
from ..errors import InvalidArgumentsError, InvalidRequestError
from ..pricing import ModelPricing, calculate_cost, lookup_pricing
from ..types import Cost, Message, ProviderResponse, StreamChunk, ToolDefinition, Usage

__all__ = [
    "BaseProvider",
    "GenerationConfig",
    "Provider",
    "ProviderDefaults",
    "ProviderRequest",
]


@dataclass(frozen=True, slots=True)
class GenerationConfig:
    """How the model should generate: the one place for sampling and length settings.

    Used as a provider's defaults (``OpenAIProvider("gpt-4o-mini",
    generation=GenerationConfig(temperature=0.2))``), on each :class:`ProviderRequest`,
    and by ``ProviderMiddlewareConfig(generation=...)``. ``None`` means "not set here":
    the next level's value applies, else the provider's own default.

    Attributes:
        max_tokens: cap on the reply's tokens (>= 1).
        temperature: sampling temperature (>= 0).
        top_p: nucleus sampling mass, in (0, 1].
        stop: sequences that end the reply (a single string is taken as one sequence).
        seed: a seed for providers that support reproducible sampling.
        extra_body: provider-specific request fields, merged into the body as-is (last,
            so they win).
        response_format: the shape of the final answer: a JSON-schema dict, a pydantic
            model class, ``"json"`` or a :class:`~promptkit_async.ResponseFormat`
            (normalised to one on construction). It goes out in each provider's native
            form and the answer comes back parsed in ``ProviderResponse.parsed``; see
            :class:`~promptkit_async.ResponseFormat`. As a provider default it applies
            to every request of that provider (context summaries included): prefer
            setting it per pipeline or per call.

    Raises:
        InvalidRequestError: a value out of its range or of the wrong type.
    """

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] | None = None
    seed: int | None = None
    extra_body: Mapping[str, Any] | None = None
    response_format: ResponseFormatLike | None = None

    def __post_init__(self) -> None:
        if self.max_tokens is not None and (
            type(self.max_tokens) is not int or self.max_tokens < 1
        ):
            raise InvalidRequestError(f"max_tokens must be an int >= 1, got {self.max_tokens!r}")
        for name, value, low, high in (
            ("temperature", self.temperature, 0.0, math.inf),
            ("top_p", self.top_p, 0.0, 1.0),
        ):
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or not low <= value <= high
            ):
                raise InvalidRequestError(
                    f"{name} must be a number between {low} and {high}, got {value!r}"
                )
        stop: Any = self.stop
        if stop is not None:
            if isinstance(stop, str):
                stop = (stop,)
            elif type(stop) is not tuple:
                stop = tuple(stop)
            if not all(isinstance(s, str) for s in stop):
                raise InvalidRequestError(f"stop must be strings, got {self.stop!r}")
            object.__setattr__(self, "stop", stop)
        if self.seed is not None and (type(self.seed) is not int):
            raise InvalidRequestError(f"seed must be an int, got {self.seed!r}")
        if self.extra_body is not None and not isinstance(self.extra_body, Mapping):
            raise InvalidRequestError(
                f"extra_body must be a mapping, not {type(self.extra_body).__name__}"
            )
        if self.response_format is not None:
            object.__setattr__(self, "response_format", ResponseFormat.coerce(self.response_format))

    @property
    def format(self) -> ResponseFormat | None:
        """``response_format`` as the :class:`~promptkit_async.ResponseFormat` it was
        normalised to (typed for readers)."""
        return self.response_format  # type: ignore[return-value]

    def with_defaults(self, defaults: GenerationConfig) -> GenerationConfig:
        """This config with its unset (``None``) fields taken from ``defaults``.

        ``extra_body`` mappings are merged, this config's keys winning.
        """
        if defaults is UNSET_GENERATION:
            return self
        if self is UNSET_GENERATION:
            return defaults
        extra = self.extra_body
        if defaults.extra_body:
            extra = {**defaults.extra_body, **extra} if extra else defaults.extra_body
        return GenerationConfig(
            self.max_tokens if self.max_tokens is not None else defaults.max_tokens,
            self.temperature if self.temperature is not None else defaults.temperature,
            self.top_p if self.top_p is not None else defaults.top_p,
            self.stop if self.stop is not None else defaults.stop,
            self.seed if self.seed is not None else defaults.seed,
            extra,
            self.response_format if self.response_format is not None else defaults.response_format,
        )


#: The empty config, shared, so that "nothing set" is an identity check (internal: the
#: default of ProviderRequest.generation and of a provider's generation).
UNSET_GENERATION = GenerationConfig()
_LEGACY_FIELDS = ("max_tokens", "temperature", "top_p", "stop", "seed", "extra_body")


def _deprecated(old: str, new: str) -> None:
    warnings.warn(
        f"{old} is deprecated and will be removed in the next release; use {new}",
        DeprecationWarning,
        stacklevel=3,
    )


@dataclass(frozen=True, slots=True)
class ProviderDefaults:
    """Deprecated: use ``generation=GenerationConfig(...)`` and ``pricing=`` on the provider.

    Still accepted for one release as a provider's ``defaults=`` (with a
    ``DeprecationWarning``).
    """

    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    pricing: ModelPricing | None = None

    def __post_init__(self) -> None:
        _deprecated("ProviderDefaults", "generation=GenerationConfig(...) and pricing=")

    def generation(self) -> GenerationConfig:
        """These defaults as a :class:`GenerationConfig`."""
        return GenerationConfig(self.max_tokens, self.temperature, self.top_p)


def resolve_name(owner: str, name: str | None, legacy_id: str | None, kind: str) -> str:
    """A provider's label from ``name=`` or its deprecated spelling ``id=``."""
    if legacy_id is not None:
        if name is not None:
            raise InvalidArgumentsError(f"{owner}() got both name= and its old spelling id=")
        warnings.warn(
            f"{owner}(id=...) is deprecated and will be removed in the next release; use name=...",
            DeprecationWarning,
            stacklevel=4,
        )
        return legacy_id
    return name or kind


_T = TypeVar("_T", bound=type)


def legacy_generation_fields(cls: _T) -> _T:
    """Give ``cls`` (which has a ``generation``) read-only properties for the deprecated
    spellings of its fields: ``cls().max_tokens`` warns and reads ``generation.max_tokens``.

    Internal to the deprecation of one release.
    """
    owner = cls.__name__

    def field(name: str) -> property:
        def get(self: Any) -> Any:
            _deprecated(f"{owner}.{name}", f"{owner}.generation.{name}")
            return getattr(self.generation, name)

        get.__doc__ = f"Deprecated: ``generation.{name}``."
        return property(get)

    for name in _LEGACY_FIELDS:
        setattr(cls, name, field(name))
    return cls


@legacy_generation_fields
@dataclass(frozen=True, slots=True, init=False)
class ProviderRequest:
    """What one provider call sends.

    Attributes:
        messages: the conversation to send, oldest first (system messages included).
        tools: tools the model may call.
        tool_choice: ``"auto"``, ``"none"``, ``"required"`` or a tool name.
        generation: sampling and length settings; unset fields fall back to the
            provider's ``generation`` defaults.

    The keywords ``max_tokens``, ``temperature``, ``top_p``, ``stop``, ``seed`` and
    ``extra_body`` (and the attributes of those names) are deprecated: they go into
    ``generation``.
    """

    messages: Sequence[Message]
    tools: Sequence[ToolDefinition]
    tool_choice: str | None
    generation: GenerationConfig

    def __init__(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolDefinition] = (),
        tool_choice: str | None = None,
        generation: GenerationConfig | None = None,
        **legacy: Any,
    ) -> None:
        if legacy:
            generation = legacy_generation("ProviderRequest", legacy, generation)
        setattr_ = object.__setattr__
        setattr_(self, "messages", messages)
        setattr_(self, "tools", tools)
        setattr_(self, "tool_choice", tool_choice)
        setattr_(self, "generation", generation if generation is not None else UNSET_GENERATION)


def legacy_generation(
    owner: str, legacy: dict[str, Any], generation: GenerationConfig | None
) -> GenerationConfig:
    """``generation`` with the deprecated keywords (``max_tokens=``...) of ``owner`` folded in.

    Internal to the deprecation of one release; warns with ``DeprecationWarning``.
    """
    unknown = set(legacy) - set(_LEGACY_FIELDS)
    if unknown:
        raise InvalidArgumentsError(
            f"{owner}() got unexpected keyword(s): {', '.join(sorted(unknown))}"
        )
    warnings.warn(
        f"{owner}({', '.join(f'{k}=' for k in legacy)}) is deprecated and will be removed "
        f"in the next release; use {owner}(..., generation=GenerationConfig(...))",
        DeprecationWarning,
        stacklevel=3,
    )
    values = {k: v for k, v in legacy.items() if v is not None}
    return GenerationConfig(**values).with_defaults(generation or UNSET_GENERATION)


@runtime_checkable
class Provider(Protocol):
    """What the pipeline needs from a model provider."""

    @property
    def id(self) -> str:
        """The provider's label for logs and errors, e.g. ``"openai"`` (its ``name``)."""
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


class ProviderIdentity(TypedDict, total=False):
    """The keywords every provider takes besides its model (see :class:`BaseProvider`)."""

    name: str | None
    generation: GenerationConfig | None
    pricing: ModelPricing | None
    defaults: ProviderDefaults | None  # deprecated
    id: str | None  # deprecated


class BaseProvider(AsyncResource):
    """Shared plumbing for providers: label, model, generation defaults, pricing, lifecycle.

    Args:
        name: the provider's label for logs and errors (also ``provider.id``); by
            default the class's ``kind``. ``id=`` is a deprecated spelling.
        model: the model to call.
        defaults: deprecated (:class:`ProviderDefaults`); use ``generation`` and
            ``pricing``.
        generation: defaults for every request's unset generation settings.
        pricing: overrides the built-in price table for this provider's model.

    Subclasses implement :meth:`stream` and :meth:`complete`, and override
    :meth:`aclose` when they own resources. ``async with provider:`` closes it on exit.
    """

    #: The label used when none is given (``"openai"``...).
    kind: ClassVar[str] = "provider"

    def __init__(
        self,
        name: str | None = None,
        model: str | None = None,
        defaults: ProviderDefaults | None = None,
        *,
        generation: GenerationConfig | None = None,
        pricing: ModelPricing | None = None,
        id: str | None = None,
    ) -> None:
        name = resolve_name(type(self).__name__, name, id, self.kind)
        if not model or not isinstance(model, str):
            raise InvalidRequestError(f"model must be a non-empty string, not {model!r}")
        if defaults is not None:
            generation = defaults.generation().with_defaults(generation or UNSET_GENERATION)
            pricing = pricing or defaults.pricing
        if not name or not isinstance(name, str):
            raise InvalidRequestError(f"a provider's name must be a non-empty string, not {name!r}")
        if generation is not None and not isinstance(generation, GenerationConfig):
            raise InvalidRequestError(
                f"generation must be a GenerationConfig, not {type(generation).__name__}"
            )
        self._id = name
        self._model = model
        self.generation = generation or UNSET_GENERATION
        self.pricing = pricing or lookup_pricing(model)

    @property
    def name(self) -> str:
        """The provider's label for logs and errors."""
        return self._id

    @property
    def id(self) -> str:
        """The same as :attr:`name` (what :class:`Provider` and errors use)."""
        return self._id

    @property
    def model(self) -> str:
        """The model requests are sent to."""
        return self._model

    @property
    def defaults(self) -> ProviderDefaults:
        """Deprecated: :attr:`generation` and :attr:`pricing`."""
        g = self.generation
        return ProviderDefaults(g.temperature, g.max_tokens, g.top_p, self.pricing)

    def __repr__(self) -> str:
        # Never include credentials: only identity.
        return f"{type(self).__name__}(name={self._id!r}, model={self._model!r})"

    def calculate_cost(self, usage: Usage) -> Cost:
        """Price ``usage`` with ``pricing`` or the built-in table."""
        return calculate_cost(usage, self.pricing, model=self._model)

    def stream(self, request: ProviderRequest) -> AsyncIterator[StreamChunk]:
        """Stream the answer; see :class:`Provider`."""
        raise NotImplementedError

    async def complete(self, request: ProviderRequest) -> ProviderResponse:
        """Answer without streaming; see :class:`Provider`."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release resources. The base class owns none."""
