"""ContextWindowMiddleware: what the provider is sent always fits the model's window.

Place it after :class:`~promptkit_async.pipeline.middleware.StateMiddleware` and before
:class:`~promptkit_async.pipeline.middleware.ProviderMiddleware`::

    window = ContextWindowMiddleware(model="gpt-4o-mini")       # budget: 128k - 4096
    pipe = Pipeline(StateMiddleware(store), window, ProviderMiddleware(provider))

Each turn it replaces ``ctx.messages`` with a trimmed *view* of the conversation; the
stored history stays whole (unless ``compact_store=True``). It sets
``ctx.estimated_prompt_tokens`` (so a result carries both this local estimate and the
provider's ``usage.prompt_tokens``), records a ``TraceEvent("context_window", ...)`` and
puts the same details in ``ctx.metadata["context_window"]``.

Long histories: with ``StateMiddleware(store, load_history=False)`` and
``ContextWindowMiddleware(..., load_history=True)`` the window loads only what it needs
(``store.load(last_n=...)``) instead of the whole history, so a turn's cost stays flat as
a session grows. To still pin system messages older than what it loads, it keeps a small
record in the session's metadata (key :data:`RECORD_KEY`): how many leading messages are
behind the window (``through``), the system messages among them, and, with
``strategy="summarize"``, the summary of the rest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio

from ... import events
from ..._concurrency import finish_shielded
from ..._context import ExecutionContext, Next
from ...errors import InvalidRequestError, PipelineError, TokenBudgetExceededError
from ...prompt import (
    REPLY_PRIMING_TOKENS,
    Tokenizer,
    Window,
    aget_tokenizer,
    fit_window,
    lookup_model,
    summarize_messages,
    summary_message,
)
from ...providers.base import Provider
from ...statestore.base import StateStore
from ...statestore.records import decode_message, encode_message
from ...types import Message, StreamChunk, TraceEvent

__all__ = ["RECORD_KEY", "ContextWindowMiddleware", "Strategy"]

logger = logging.getLogger("promptkit_async.pipeline")

#: What to do when the conversation does not fit.
Strategy = Literal["truncate", "summarize", "fail"]
#: Session-metadata key of the window's record.
RECORD_KEY = "promptkit.context_window"
# With load_history=True and strategy="truncate", the record is moved forward once this
# many stored messages have fallen behind the window: one metadata write per ~16 turns,
# and at most this many extra messages loaded per turn.
_ADVANCE_EVERY = 32


def _fingerprint(message: Message) -> str:
    # Identifies the message at the record's boundary, to notice a rewritten history.
    # Metadata is left out: token annotations may be added after the record is written.
    content = message.content
    body = json.dumps(
        [
            message.role,
            # Parts: their record form (bytes as base64), so a changed image changes it too.
            content if isinstance(content, str) else encode_message(Message("user", content)),
            [[c.id, c.name, c.arguments] for c in message.tool_calls],
            message.tool_call_id,
            message.name,
        ],
        separators=(",", ":"),
    )
    return hashlib.blake2b(body.encode(), digest_size=8).hexdigest()


@dataclass(slots=True)
class _Record:
    """The session-metadata record: messages ``[0, through)`` are behind the window."""

    through: int = 0
    anchor: str | None = None  # fingerprint of the message at position ``through``
    pinned: list[Message] = field(default_factory=list)  # system messages before through
    summary: str | None = None  # summary of the other messages before through

    @property
    def empty(self) -> bool:
        return not (self.through or self.pinned or self.summary)

    @classmethod
    def parse(cls, raw: Any, session_id: str) -> _Record:
        if raw is None:
            return cls()
        try:
            if not isinstance(raw, Mapping) or raw.get("v") != 1:
                raise ValueError("unknown record version")
            through = raw["through"]
            if type(through) is not int or through < 0:
                raise ValueError("bad 'through'")
            pinned = [decode_message(r, session_id=session_id) for r in raw.get("pinned", ())]
            summary = raw.get("summary")
            anchor = raw.get("anchor")
            if summary is not None and not isinstance(summary, str):
                raise ValueError("bad 'summary'")
            if anchor is not None and not isinstance(anchor, str):
                raise ValueError("bad 'anchor'")
        except Exception as exc:  # a bad record is rebuilt, never fatal
            logger.warning("ignoring unreadable %s in session %r: %s", RECORD_KEY, session_id, exc)
            return cls()
        return cls(through, anchor, pinned, summary)

    def dump(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "v": 1,
            "through": self.through,
            "pinned": [encode_message(m) for m in self.pinned],
        }
        if self.anchor is not None:
            record["anchor"] = self.anchor
        if self.summary is not None:
            record["summary"] = self.summary
        return record


@dataclass(slots=True)
class _Situation:
    """What one turn has to work with, before trimming."""

    region: list[Message]  # stored messages at positions [offset, offset + len)
    new: list[Message]  # this turn's messages (not stored yet)
    offset: int | None  # absolute position of region[0]; None: unknown (no record use)
    record: _Record
    store: StateStore | None
    note: str | None = None  # why the record could not be used, if it could not
    stored: bool = True  # region really is the stored history (False: compaction is off)

    @property
    def messages(self) -> list[Message]:
        return self.region + self.new


@dataclass(slots=True)
class _Plan:
    view: list[Message]
    tokens: int
    kept_stored: list[Message]  # what compaction would save (the view's stored part)
    dropped: int
    summary: str | None  # the summary in the view
    summary_state: str | None = None  # "reused" | "created" | "failed" | "unavailable"
    summary_error: str | None = None
    record: _Record | None = None  # the record to write now, if any


def _with_summary(kept: list[Message], summary: str | None) -> list[Message]:
    if summary is None:
        return kept
    i = 0
    while i < len(kept) and kept[i].role == "system":
        i += 1
    return [*kept[:i], summary_message(summary), *kept[i:]]


class ContextWindowMiddleware:
    """Keeps each request within a token budget, by trimming or summarizing older turns.

    Args:
        max_tokens: the prompt budget (what the provider is sent, in tokens). ``None``:
            the model's context window (see :mod:`promptkit_async.prompt.models`) minus
            ``reserve_output_tokens``.
        reserve_output_tokens: room left for the reply when the budget comes from the
            model's window; match ``ProviderMiddlewareConfig.max_tokens``.
        strategy: when the conversation does not fit --

            * ``"truncate"``: send the newest messages that fit
              (:func:`~promptkit_async.prompt.truncate_messages` rules: system messages
              pinned, tool groups whole, starting on a user message).
            * ``"summarize"``: fold older turns into a summary written by ``summarizer``
              (a cheaper model), stored in the session's metadata and reused on later
              turns; a new summary is made only when the window overflows again, and
              then folds about ``summary_chunk_tokens`` at once. If the summarizer fails
              or times out, the turn falls back to truncation and says so
              (``summary: "failed"`` in the trace and metadata).
            * ``"fail"``: send everything or raise
              :class:`~promptkit_async.errors.TokenBudgetExceededError` (nothing of the
              turn is stored).

    Keyword Args:
        model: the model whose tokenizer counts (and whose window sets the default
            budget). Unknown and non-OpenAI models are counted with a fallback encoding:
            the counts are estimates, and the budget is cut by ``estimate_margin``.
        summarizer: the provider that writes summaries (required for ``"summarize"``).
        summary_max_tokens: cap on a summary's length (room for it is reserved).
        summary_chunk_tokens: room a new summary frees beyond what the turn needs, so the
            next turns fit without another summary (default: a quarter of the budget, at
            most half of ``summary_input_max_tokens``).
        summary_input_max_tokens: most tokens of old messages sent to the summarizer at
            once; in a larger fold (e.g. the first summary of a long history) the older
            excess is dropped unsummarized, and the trace says how many messages.
        summary_timeout: seconds before a summary attempt is abandoned (then: fallback).
        load_history: load the history itself, only as much as the window needs; use
            with ``StateMiddleware(store, load_history=False)``.
        compact_store: after a successful turn that dropped messages, replace the stored
            history with the kept part (the tutorial's ``store.Save(trimmed)``); the
            summary, if any, stays in the session metadata. Off by default: the stored
            history stays whole and only the request is trimmed.
        estimate_margin: fraction of the budget held back when counts are estimated.
        store_token_counts: store each new message with its token count in
            ``metadata["promptkit.tokens"]``, so histories loaded from a persistent store
            are never re-tokenized, however many sessions are active (without it, counts
            come from a per-process LRU of :data:`~promptkit_async.prompt._tokens.
            MESSAGE_CACHE_SIZE` messages). Not worth it with ``InMemoryStateStore``,
            which deep-copies message metadata on every load.

    Raises:
        InvalidRequestError: bad settings, e.g. no ``max_tokens`` for a model whose
            window is unknown, or ``"summarize"`` without a ``summarizer``.

    Token counts are cached per message (see ``store_token_counts``); the first use of
    an encoding loads it in a worker thread.

    The trace event's detail (also ``ctx.metadata["context_window"]``): ``strategy``,
    ``budget``, ``tokens`` (the estimate of what was sent), ``encoding``, ``estimated``,
    ``messages`` (how many it considered: the loaded history and the new message),
    ``sent``, ``dropped``, ``summary`` (``None``, ``"created"``, ``"reused"``,
    ``"failed"`` with ``summary_error``, or ``"unavailable"``) and sometimes ``note``.

    With ``StateMiddleware(max_history_messages=N)`` only the N loaded messages are seen,
    so system messages older than them cannot be pinned (and ``compact_store`` would
    drop them): use ``load_history=True`` instead, which keeps them in its record.

    Concurrency: keeps no per-turn state, so one instance can serve any number of
    pipelines and tasks; it relies on ``StateMiddleware``'s per-session lock for the
    session record. Cancelling a turn during a summary call abandons it (nothing is
    recorded); a compaction that has begun completes first.
    """

    def __init__(
        self,
        max_tokens: int | None = None,
        reserve_output_tokens: int = 4096,
        strategy: Strategy = "truncate",
        *,
        model: str | None = None,
        summarizer: Provider | None = None,
        summary_max_tokens: int = 512,
        summary_chunk_tokens: int | None = None,
        summary_input_max_tokens: int = 32_000,
        summary_timeout: float | None = 60.0,
        load_history: bool = False,
        compact_store: bool = False,
        estimate_margin: float = 0.1,
        store_token_counts: bool = False,
    ) -> None:
        if strategy not in ("truncate", "summarize", "fail"):
            raise InvalidRequestError(
                f"unknown strategy {strategy!r}; use 'truncate', 'summarize' or 'fail'"
            )
        if strategy == "summarize" and summarizer is None:
            raise InvalidRequestError(
                "strategy='summarize' needs summarizer=<a Provider> (a cheap model will do)"
            )
        if type(reserve_output_tokens) is not int or reserve_output_tokens < 0:
            raise InvalidRequestError("reserve_output_tokens must be a non-negative int")
        if not 0 <= estimate_margin < 1:
            raise InvalidRequestError("estimate_margin must be in [0, 1)")
        for name, value in (
            ("summary_max_tokens", summary_max_tokens),
            ("summary_input_max_tokens", summary_input_max_tokens),
        ):
            if type(value) is not int or value < 1:
                raise InvalidRequestError(f"{name} must be a positive int")
        info = lookup_model(model)
        if max_tokens is None:
            window_budget = info.prompt_budget(reserve_output_tokens)
            if window_budget is None:
                raise InvalidRequestError(
                    f"the context window of model {model!r} is unknown; pass max_tokens= "
                    "(the prompt budget) or register the model with "
                    "promptkit_async.prompt.register_model"
                )
            max_tokens = window_budget
        if type(max_tokens) is not int or max_tokens < 1:
            raise InvalidRequestError(f"the prompt budget must be a positive int, got {max_tokens}")
        self.model = model
        self.strategy: Strategy = strategy
        self.max_tokens = max_tokens
        self.reserve_output_tokens = reserve_output_tokens
        self.estimated = not info.exact
        #: The budget actually enforced (max_tokens less the margin for estimates).
        self.budget = (
            math.floor(max_tokens * (1 - estimate_margin)) if self.estimated else max_tokens
        )
        self.summarizer = summarizer
        self.summary_max_tokens = summary_max_tokens
        self.summary_input_max_tokens = summary_input_max_tokens
        if summary_chunk_tokens is None:
            summary_chunk_tokens = max(1, min(self.budget // 4, summary_input_max_tokens // 2))
        elif type(summary_chunk_tokens) is not int or summary_chunk_tokens < 0:
            raise InvalidRequestError("summary_chunk_tokens must be a non-negative int")
        self.summary_chunk_tokens = summary_chunk_tokens
        if summary_timeout is not None and not summary_timeout > 0:
            raise InvalidRequestError("summary_timeout must be positive seconds, or None")
        self.summary_timeout = summary_timeout
        self.load_history = load_history
        self.compact_store = compact_store
        self.store_token_counts = store_token_counts

    def __repr__(self) -> str:
        return (
            f"ContextWindowMiddleware(budget={self.budget}, strategy={self.strategy!r}, "
            f"model={self.model!r})"
        )

    # --- the turn -----------------------------------------------------------------------

    async def __call__(self, ctx: ExecutionContext, next: Next) -> AsyncIterator[StreamChunk]:
        tokenizer = await aget_tokenizer(self.model)
        situation = await self._situate(ctx)
        plan = await self._plan(ctx, situation, tokenizer)
        if plan.record is not None and situation.store is not None:
            # Written now, not after the turn: it describes stored messages only, so it
            # stays true if the turn fails (and a new summary is worth keeping).
            await situation.store.merge_metadata(ctx.session_id, {RECORD_KEY: plan.record.dump()})

        ctx.messages = plan.view
        ctx.estimated_prompt_tokens = plan.tokens
        detail: dict[str, Any] = {
            "strategy": self.strategy,
            "budget": self.budget,
            "tokens": plan.tokens,
            "encoding": tokenizer.encoding_name,
            "estimated": tokenizer.estimated,
            "messages": len(situation.region) + len(situation.new),
            "sent": len(plan.view),
            "dropped": plan.dropped,
            "summary": plan.summary_state,
        }
        if plan.summary_error is not None:
            detail["summary_error"] = plan.summary_error
        if situation.note is not None:
            detail["note"] = situation.note
        ctx.trace.append(TraceEvent("context_window", detail))
        events.window_applied(ctx, detail)
        ctx.metadata["context_window"] = detail

        async for chunk in next(ctx):
            yield chunk

        if ctx.response is None:
            return
        if self.store_token_counts:
            # Store each new message with its token count: never tokenized again.
            new = ctx.new_messages
            for i, message in enumerate(new):
                new[i] = tokenizer.annotate(message)
        if (
            self.compact_store
            and plan.dropped
            and situation.store is not None
            and situation.stored
            and plan.summary_state != "failed"  # keep them for the next summary attempt
        ):
            await finish_shielded(self._compact(ctx, situation, plan))

    # --- where the history comes from -------------------------------------------------

    async def _situate(self, ctx: ExecutionContext) -> _Situation:
        store = ctx.store
        new = list(ctx.new_messages)
        session_id = ctx.session_id
        if self.load_history:
            if store is None:
                raise PipelineError(
                    "ContextWindowMiddleware(load_history=True) needs "
                    "StateMiddleware(store, load_history=False) before it"
                )
            if len(ctx.messages) != len(new):
                raise PipelineError(
                    "ContextWindowMiddleware(load_history=True) found a history already "
                    "loaded; pass StateMiddleware(store, load_history=False)"
                )
            since = events.clock(ctx)
            total = await store.count(session_id)
            record = _Record.parse(
                (await store.get_metadata(session_id)).get(RECORD_KEY), session_id
            )
            if record.through > total:
                record = _Record()  # the history was rewritten or a turn was lost
            region = (
                await store.load(session_id, total - record.through)
                if total > record.through
                else []
            )
            if (
                record.through
                and region
                and record.anchor is not None
                and _fingerprint(region[0]) != record.anchor
            ):
                # The history was rewritten under the record: start over, once.
                record = _Record()
                region = await store.load(session_id)
            events.history_loaded(ctx, len(region), since)
            return _Situation(region, new, record.through, record, store)

        messages = ctx.messages
        cut = len(messages) - len(new)
        if cut < 0 or messages[cut:] != new:
            # Another middleware reshaped ctx.messages: trim it as it is.
            return _Situation(
                list(messages), [], None, _Record(), store, "messages reshaped", stored=False
            )
        history = messages[:cut]
        if self.strategy != "summarize":
            return _Situation(history, new, None, _Record(), store)
        if store is None:
            return _Situation(history, new, None, _Record(), store, "no store for a summary")
        total = await store.count(session_id)
        offset = total - len(history)
        if offset < 0:
            return _Situation(history, new, None, _Record(), store, "store changed under the turn")
        record = _Record.parse((await store.get_metadata(session_id)).get(RECORD_KEY), session_id)
        if record.through > total:
            record = _Record()
        if record.through > offset:
            k = record.through - offset
            if (
                k < len(history)
                and record.anchor is not None
                and _fingerprint(history[k]) != record.anchor
            ):
                return _Situation(history, new, offset, _Record(), store)
            return _Situation(history[k:], new, record.through, record, store)
        return _Situation(history, new, offset, record, store)

    # --- what to send -------------------------------------------------------------------

    async def _plan(self, ctx: ExecutionContext, s: _Situation, tok: Tokenizer) -> _Plan:
        count = tok.count_message
        messages = s.messages
        n_stored = len(s.region)
        outside = s.record.pinned
        outside_tokens = sum(count(m) for m in outside)

        if self.strategy == "fail":
            summary = s.record.summary
            view = _with_summary([*outside, *messages], summary)
            tokens = tok.count_messages(view)
            if tokens > self.budget:
                raise TokenBudgetExceededError(
                    f"the conversation needs {tokens} tokens but the budget is {self.budget} "
                    "(strategy='fail'); use strategy='truncate' or 'summarize', or raise "
                    "max_tokens",
                    required_tokens=tokens,
                    max_tokens=self.budget,
                )
            return _Plan(view, tokens, [*outside, *s.region], 0, summary)

        if self.strategy == "truncate":
            window = fit_window(
                messages, self.budget, count, base=REPLY_PRIMING_TOKENS + outside_tokens
            )
            plan = self._from_window(s, window, outside, None)
            cut = min(window.start, n_stored)
            if s.offset is not None and cut >= _ADVANCE_EVERY:
                plan.record = self._advance(s, window, cut, None)
            return plan

        # summarize
        if s.offset is None:
            window = fit_window(
                messages, self.budget, count, base=REPLY_PRIMING_TOKENS + outside_tokens
            )
            plan = self._from_window(s, window, outside, None)
            plan.summary_state = "unavailable"
            return plan
        old = s.record.summary
        old_tokens = count(summary_message(old)) if old is not None else 0
        base = REPLY_PRIMING_TOKENS + outside_tokens
        try:
            window = fit_window(messages, self.budget, count, base=base + old_tokens)
        except TokenBudgetExceededError:
            if old is None:
                raise
            # The old summary itself no longer fits beside this turn: send without it.
            window = fit_window(messages, self.budget, count, base=base)
            plan = self._from_window(s, window, outside, None)
            plan.summary_state = "failed"
            plan.summary_error = "no room for the summary beside the current turn"
            return plan
        if window.keeps_all:
            plan = self._from_window(s, window, outside, old)
            plan.summary_state = "reused" if old is not None else None
            return plan
        return await self._fold(ctx, s, tok, window, base)

    def _from_window(
        self, s: _Situation, window: Window, outside: list[Message], summary: str | None
    ) -> _Plan:
        messages = s.messages
        kept = [*outside, *window.apply(messages)]
        n_stored = len(s.region)
        kept_stored = [*outside, *(messages[k] for k in window.pinned if k < n_stored)]
        kept_stored.extend(messages[window.start : n_stored])
        dropped = len(messages) - (len(kept) - len(outside))
        return _Plan(_with_summary(kept, summary), window.tokens, kept_stored, dropped, summary)

    def _advance(self, s: _Situation, window: Window, cut: int, summary: str | None) -> _Record:
        """The record once the first ``cut`` messages of the region are behind the window."""
        assert s.offset is not None
        messages = s.messages
        pinned = [*s.record.pinned, *(messages[k] for k in window.pinned if k < cut)]
        anchor = _fingerprint(messages[cut]) if cut < len(messages) else None
        return _Record(s.offset + cut, anchor, pinned, summary)

    async def _fold(
        self, ctx: ExecutionContext, s: _Situation, tok: Tokenizer, window: Window, base: int
    ) -> _Plan:
        """Summarize enough older messages that the rest (and later turns) fit."""
        count = tok.count_message
        messages = s.messages
        outside = s.record.pinned
        old = s.record.summary
        fallback = self._from_window(s, window, outside, old)
        reserve = self.summary_max_tokens + count(summary_message(""))
        try:
            needed = fit_window(messages, self.budget, count, base=base + reserve)
        except TokenBudgetExceededError:
            fallback.summary_state = "failed"
            fallback.summary_error = "no room for a summary beside the current turn"
            return fallback
        try:
            roomy = fit_window(
                messages, self.budget - self.summary_chunk_tokens, count, base=base + reserve
            )
        except TokenBudgetExceededError:
            roomy = needed
        cut = min(max(needed.start, roomy.start), len(s.region))
        if cut == 0:
            fallback.summary_state = "failed"
            fallback.summary_error = "nothing stored to summarize"
            return fallback
        folded = [m for m in messages[:cut] if m.role != "system"]
        if not folded:
            fallback.summary_state = "failed"
            fallback.summary_error = "nothing but system messages to summarize"
            return fallback
        # The newest messages first, up to the summarizer's input limit.
        size = 0
        first = len(folded)
        while first > 0:
            size += count(folded[first - 1])
            if size > self.summary_input_max_tokens and first < len(folded):
                break
            first -= 1
        omitted = first
        assert self.summarizer is not None
        timeout: AbstractContextManager[Any] = (
            anyio.fail_after(self.summary_timeout) if self.summary_timeout else nullcontext()
        )
        try:
            with timeout:
                response = await summarize_messages(
                    self.summarizer,
                    folded[first:],
                    previous_summary=old,
                    max_tokens=self.summary_max_tokens,
                )
        except Exception as exc:  # never BaseException: cancellation propagates
            logger.warning("summarizer failed for session %r: %r", ctx.session_id, exc)
            fallback.summary_state = "failed"
            fallback.summary_error = f"{type(exc).__name__}: {exc}"
            return fallback
        ctx.cost += response.cost
        text = response.content.strip()
        pinned = [*outside, *(m for m in messages[:cut] if m.role == "system")]
        rest = messages[cut:]
        rest_base = (
            REPLY_PRIMING_TOKENS + sum(count(m) for m in pinned) + count(summary_message(text))
        )
        try:
            rest_window = fit_window(rest, self.budget, count, base=rest_base)
        except TokenBudgetExceededError:
            fallback.summary_state = "failed"
            fallback.summary_error = "the summary came back longer than summary_max_tokens allows"
            return fallback
        ctx.trace.append(
            TraceEvent(
                "context_window.summary",
                {
                    "folded_messages": len(folded) - omitted,
                    "omitted_messages": omitted,
                    "model": response.model,
                    "prompt_tokens": response.usage.prompt_tokens,
                    "completion_tokens": response.usage.completion_tokens,
                    "cost": response.cost.total_cost,
                },
            )
        )
        kept = [*pinned, *rest_window.apply(rest)]
        kept_stored = [*pinned, *(rest[k] for k in rest_window.pinned if k < len(s.region) - cut)]
        kept_stored.extend(rest[rest_window.start : len(s.region) - cut])
        dropped = len(messages) - (len(kept) - len(outside))
        anchor = _fingerprint(messages[cut]) if cut < len(messages) else None
        assert s.offset is not None
        record = _Record(s.offset + cut, anchor, pinned, text)
        return _Plan(
            _with_summary(kept, text),
            rest_window.tokens,
            kept_stored,
            dropped,
            text,
            "created",
            None,
            record,
        )

    # --- compaction -------------------------------------------------------------------

    async def _compact(self, ctx: ExecutionContext, s: _Situation, plan: _Plan) -> None:
        store = s.store
        assert store is not None
        await store.save(ctx.session_id, plan.kept_stored)
        # Positions restart at 0; the summary (if any) still covers what was dropped.
        if plan.summary is not None:
            record: dict[str, Any] | None = _Record(0, None, [], plan.summary).dump()
        else:
            record = None
        if record is not None or not s.record.empty or plan.record is not None:
            await store.merge_metadata(ctx.session_id, {RECORD_KEY: record})
        ctx.trace.append(
            TraceEvent("context_window.compacted", {"stored_messages": len(plan.kept_stored)})
        )
