"""Pipelines: middleware composed into an onion around the model call.

One turn flows through one path::

    Pipeline.execute / Pipeline.stream
      -> StateMiddleware       (per-session lock, load history)
      -> ...your middleware... (observe or change ctx, wrap ctx.emit to see chunks)
      -> ProviderMiddleware    (model call; chunks flow back out through ctx.emit)
      <- StateMiddleware       (append the turn atomically)
      <- the last chunk / the ExecutionResult

A middleware is any async callable ``(ctx, next)``::

    class Shout:
        runs_next_inline = True  # optional: it awaits next in the turn's own task

        async def __call__(self, ctx: ExecutionContext, next: Next) -> None:
            downstream = ctx.emit

            async def emit(chunk: StreamChunk) -> None:
                await downstream(replace(chunk, delta=chunk.delta.upper()))

            ctx.emit = emit
            await next(ctx)

``Pipeline.stream`` runs the turn inside the task that reads the stream, so ``ctx.emit``
hands each chunk over without a queue. A middleware that runs ``next`` in a task of its
own (``asyncio.shield``, ``asyncio.wait_for`` before Python 3.12, a task group) still
works; leave ``runs_next_inline`` unset on such a middleware (see ``Middleware``).
"""

from .._context import Emit, ExecutionContext, Middleware, Next
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
