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
from .pipeline.middleware import (
    ContextWindowMiddleware,
    ProviderMiddleware,
    ProviderMiddlewareConfig,
    StateMiddleware,
)
from .pricing import ModelPricing, calculate_cost, lookup_pricing, register_pricing
from .prompt import count_message_tokens, count_tokens, keep_last_messages, truncate_messages
from .providers import (
    AiohttpTransport,
    AnthropicProvider,
    BaseProvider,
    DemoProvider,
    GeminiProvider,
    GenerationConfig,
    MockProvider,
    OpenAIProvider,
    Provider,
    ProviderDefaults,
    ProviderRequest,
    RetryPolicy,
)
from .statestore import InMemoryStateStore, SessionPage, SQLiteStateStore, StateStore
from .tools import Tool, ToolCallAssembler, ToolPolicy, ToolRegistry, tool
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
    "AiohttpTransport",
    "AnthropicProvider",
    "AuthenticationError",
    "BadRequestError",
    "BaseProvider",
    "ConflictError",
    "ContextLengthExceededError",
    "ContextWindowExceededError",
    "ContextWindowMiddleware",
    "Cost",
    "DemoProvider",
    "ExecutionContext",
    "ExecutionResult",
    "GeminiProvider",
    "GenerationConfig",
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
    "OpenAIProvider",
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
    "RetryPolicy",
    "SQLiteStateStore",
    "SessionPage",
    "StateMiddleware",
    "StateStore",
    "StoreDataError",
    "StoreError",
    "StoreUnavailableError",
    "StreamChunk",
    "StreamIdleTimeoutError",
    "Tool",
    "ToolCall",
    "ToolCallAssembler",
    "ToolCallDelta",
    "ToolDefinition",
    "ToolError",
    "ToolPolicy",
    "ToolRegistry",
    "TraceEvent",
    "UnprocessableEntityError",
    "Usage",
    "__version__",
    "calculate_cost",
    "count_message_tokens",
    "count_tokens",
    "errors",
    "keep_last_messages",
    "lookup_pricing",
    "register_pricing",
    "tool",
    "truncate_messages",
]


def __getattr__(name: str) -> Any:
    # RedisStateStore is imported on first use: redis-py takes about 0.1 s to import.
    if name == "RedisStateStore":
        from .statestore.redis import RedisStateStore

        globals()[name] = RedisStateStore
        return RedisStateStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
