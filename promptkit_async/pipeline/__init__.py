"""Pipelines: middleware composed into an onion around the model call.

One turn flows through one path::

    Pipeline.execute / Pipeline.stream
      -> StateMiddleware       (per-session lock, load history)
      -> ...your middleware... (observe or change ctx, wrap ctx.emit to see chunks)
      -> ProviderMiddleware    (model call; chunks flow back out through ctx.emit)
      <- StateMiddleware       (append the turn atomically)
      <- the last chunk / the ExecutionResult
"""

from ._context import Emit, ExecutionContext, Middleware, Next
from ._pipeline import Pipeline, ResultStream, build_onion

__all__ = [
    "Emit",
    "ExecutionContext",
    "Middleware",
    "Next",
    "Pipeline",
    "ResultStream",
    "build_onion",
]
