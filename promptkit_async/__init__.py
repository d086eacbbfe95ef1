"""promptkit_async: async-first, stateful multi-turn LLM conversations.

Everything public is importable from here as well as from its home module.
"""

from typing import TYPE_CHECKING, Any

from . import errors
from ._version import __version__
from .errors import (
    APIConnectionError,
    APIResponseError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    ContextLengthExceededError,
    ContextWindowExceededError,
    IncompleteStreamError,
    InternalServerError,
    InvalidMessageError,
    InvalidRequestError,
    InvalidRoleError,
    InvalidSessionIdError,
    NotFoundError,
    PermissionDeniedError,
    PipelineClosedError,
    PipelineError,
    PipelineTimeoutError,
    PromptKitError,
    ProviderError,
    RateLimitError,
    StoreDataError,
    StoreError,
    StoreUnavailableError,
    StreamIdleTimeoutError,
    ToolError,
    UnprocessableEntityError,
)
from .pipeline import ExecutionContext, Middleware, Next, Pipeline, ResultStream
from .pipeline.middleware import ProviderMiddleware, ProviderMiddlewareConfig, StateMiddleware
from .pricing import ModelPricing, calculate_cost, lookup_pricing, register_pricing
from .providers import BaseProvider, MockProvider, Provider, ProviderDefaults, ProviderRequest
from .statestore import InMemoryStateStore, SessionPage, SQLiteStateStore, StateStore
from .types import (
    Cost,
    ExecutionResult,
    Message,
    ProviderResponse,
    StreamChunk,
    ToolCall,
    ToolCallDelta,
    ToolDefinition,
    TraceEvent,
    Usage,
)

if TYPE_CHECKING:
    from .statestore.redis import RedisStateStore

__all__ = [
    "APIConnectionError",
    "APIResponseError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BaseProvider",
    "ConflictError",
    "ContextLengthExceededError",
    "ContextWindowExceededError",
    "Cost",
    "ExecutionContext",
    "ExecutionResult",
    "InMemoryStateStore",
    "IncompleteStreamError",
    "InternalServerError",
    "InvalidMessageError",
    "InvalidRequestError",
    "InvalidRoleError",
    "InvalidSessionIdError",
    "Message",
    "Middleware",
    "MockProvider",
    "ModelPricing",
    "Next",
    "NotFoundError",
    "PermissionDeniedError",
    "Pipeline",
    "PipelineClosedError",
    "PipelineError",
    "PipelineTimeoutError",
    "PromptKitError",
    "Provider",
    "ProviderDefaults",
    "ProviderError",
    "ProviderMiddleware",
    "ProviderMiddlewareConfig",
    "ProviderRequest",
    "ProviderResponse",
    "RateLimitError",
    "RedisStateStore",
    "ResultStream",
    "SQLiteStateStore",
    "SessionPage",
    "StateMiddleware",
    "StateStore",
    "StoreDataError",
    "StoreError",
    "StoreUnavailableError",
    "StreamChunk",
    "StreamIdleTimeoutError",
    "ToolCall",
    "ToolCallDelta",
    "ToolDefinition",
    "ToolError",
    "TraceEvent",
    "UnprocessableEntityError",
    "Usage",
    "__version__",
    "calculate_cost",
    "errors",
    "lookup_pricing",
    "register_pricing",
]


def __getattr__(name: str) -> Any:
    # RedisStateStore is imported on first use: redis-py takes about 0.1 s to import.
    if name == "RedisStateStore":
        from .statestore.redis import RedisStateStore

        globals()[name] = RedisStateStore
        return RedisStateStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
