"""Pipelines: middleware composed into an onion around the model call.

One turn flows through one path::

    Pipeline.execute / Pipeline.stream
      -> StateMiddleware       (take the session's lease, load history)
      -> ...your middleware... (observe or change ctx and the chunks it passes on)
      -> ProviderMiddleware    (model call; yields the chunks the model streams)
      <- StateMiddleware       (store the turn and release the lease, atomically)
      <- the last chunk / the ExecutionResult

A middleware is an async generator function ``(ctx, next)`` (the :data:`Middleware`
alias): work before, chunks passed on, work after::

    class Shout:
        async def __call__(self, ctx: ExecutionContext, next: Next) -> AsyncIterator[StreamChunk]:
            async for chunk in next(ctx):
                yield replace(chunk, delta=chunk.delta.upper())

How a chunk travels: each layer is an async generator iterating the next one, all run
in the task that awaits ``execute`` or reads ``stream``. ``ProviderMiddleware`` yields
each chunk the model streams; each outer layer passes it on; ``Pipeline.stream`` hands it
to the reader; ``Pipeline.execute`` drops it. Nothing runs ahead of the reader (a slow
reader slows the model's stream: back-pressure) and no task or queue is involved. The
last chunk carries the :class:`~promptkit_async.types.ExecutionResult` once the turn is
stored.
"""

from .._context import ExecutionContext, Middleware, Next
from ._pipeline import Pipeline, ResultStream, build_onion

__all__ = [
    "ExecutionContext",
    "Middleware",
    "Next",
    "Pipeline",
    "ResultStream",
    "build_onion",
]
