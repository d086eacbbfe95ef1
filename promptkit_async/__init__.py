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
    ConfigurationError,
    ConflictError,
    ContextLengthExceededError,
    IncompleteStreamError,
    InternalServerError,
    InvalidArgumentsError,
    InvalidMessageError,
    InvalidMiddlewareError,
    InvalidRequestError,
    InvalidRoleError,
    InvalidSessionIdError,
    MCPConnectionError,
    MCPServerError,
    MCPToolCallError,
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
    StoreTimeoutError,
    StoreUnavailableError,
    StreamBusyError,
    StreamIdleTimeoutError,
    TokenBudgetExceededError,
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
    AudioPart,
    ContentPart,
    Cost,
    DocumentPart,
    ExecutionResult,
    ImagePart,
    Message,
    MessageContent,
    ProviderResponse,
    StreamChunk,
    TextPart,
    ThinkingPart,
    ToolCall,
    ToolCallDelta,
    ToolDefinition,
    TraceEvent,
    Usage,
)

if TYPE_CHECKING:
    from .statestore.postgres import PostgresStateStore
    from .statestore.redis import RedisStateStore

__all__ = [
    "APIConnectionError",
    "APIResponseError",
    "APIStatusError",
    "APITimeoutError",
    "AiohttpTransport",
    "AnthropicProvider",
    "AudioPart",
    "AuthenticationError",
    "BadRequestError",
    "BaseProvider",
    "ConfigurationError",
    "ConflictError",
    "ContentPart",
    "ContextLengthExceededError",
    "ContextWindowMiddleware",
    "Cost",
    "DemoProvider",
    "DocumentPart",
    "ExecutionContext",
    "ExecutionResult",
    "GeminiProvider",
    "GenerationConfig",
    "ImagePart",
    "InMemoryStateStore",
    "IncompleteStreamError",
    "InternalServerError",
    "InvalidArgumentsError",
    "InvalidMessageError",
    "InvalidMiddlewareError",
    "InvalidRequestError",
    "InvalidRoleError",
    "InvalidSessionIdError",
    "MCPConnectionError",
    "MCPServerError",
    "MCPToolCallError",
    "Message",
    "MessageContent",
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
    "PostgresStateStore",
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
    "StoreTimeoutError",
    "StoreUnavailableError",
    "StreamBusyError",
    "StreamChunk",
    "StreamIdleTimeoutError",
    "TextPart",
    "ThinkingPart",
    "TokenBudgetExceededError",
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
    # The Redis and PostgreSQL stores are imported on first use: redis-py takes about
    # 0.1 s to import, and asyncpg is an optional extra.
    if name in ("RedisStateStore", "PostgresStateStore"):
        from . import statestore

        value = getattr(statestore, name)
        globals()[name] = value
        return value
    if name in errors._DEPRECATED:
        return getattr(errors, name)  # warns, and gives the new class
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
