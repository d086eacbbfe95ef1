"""Does trimming cost grow with the history? (issue 4's benchmark)

Truncates a 10,000-message and a 100-message history to 4,000 tokens and reports the
median time per call and their ratio (the goal: close to 1), in three set-ups:

* ``truncate_messages`` on the same in-memory list turn after turn (per-message counts
  come from the LRU), with every system message pinned (the default) and with
  ``pin_system="leading"``;
* the same on messages freshly decoded from stored records that carry their token count
  (what a store returns once ContextWindowMiddleware has annotated them);
* a whole pipeline turn (StateMiddleware + ContextWindowMiddleware + MockProvider) on an
  in-memory store, loading the whole history vs. loading only the window
  (``StateMiddleware(load_history=False)`` + ``ContextWindowMiddleware(load_history=True)``);
  the history grows by two messages a turn.

Run from the repository root: ``python -m bench.truncation`` (about 30 s).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from promptkit_async import (
    ContextWindowMiddleware,
    InMemoryStateStore,
    Message,
    MockProvider,
    Pipeline,
    ProviderMiddleware,
    StateMiddleware,
    ToolCall,
)
from promptkit_async.prompt import get_tokenizer, truncate_messages
from promptkit_async.statestore.records import decode_message, encode_message

MODEL = "gpt-4o-mini"
BUDGET = 4_000
SENTENCES = [
    "Could you explain how the tide tables work for the northern harbour this week?",
    "The high tide is at 06:40 and 19:05; low tide falls around 12:50, give or take.",
    "Great, and what about the wind forecast for Saturday afternoon near the lighthouse?",
    "Expect 12 to 15 knots from the south-west, gusting 20, easing after sunset.",
    "Please draft a short packing list for a two-day sailing trip with four people.",
    "Water, sunscreen, foul-weather gear, charts, a first-aid kit and spare line.",
]


def history(n: int) -> list[Message]:
    """A system prompt, then user/assistant turns with a tool call every tenth turn."""
    out = [Message("system", "You are a concise sailing assistant. " * 3)]
    i = 0
    while len(out) < n:
        text = SENTENCES[i % len(SENTENCES)] + f" (turn {i})"
        if i % 10 == 9:
            call = ToolCall(f"call{i}", "get_forecast", '{"place": "harbour", "day": "sat"}')
            out.append(Message("assistant", "", (call,)))
            out.append(Message("tool", "wind SW 12-15 kn, gusts 20", tool_call_id=call.id))
        else:
            out.append(Message("user" if i % 2 == 0 else "assistant", text * 2))
        i += 1
    out = out[:n]
    if out[-1].role != "user":
        out.append(Message("user", "And what should we do next?"))
    return out


def median_us(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm up (first use tokenizes the window once)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def stored_copy(messages: list[Message]) -> list[Message]:
    tokenizer = get_tokenizer(MODEL)
    return [decode_message(encode_message(tokenizer.annotate(m))) for m in messages]


async def pipeline_turn_us(n: int, *, windowed: bool, turns: int) -> float:
    store = InMemoryStateStore()
    await store.save("s", history(n))
    window = ContextWindowMiddleware(BUDGET, model=MODEL, load_history=windowed)
    pipe = Pipeline(
        StateMiddleware(store, load_history=not windowed),
        window,
        ProviderMiddleware(MockProvider(["ok"] * (turns + 5), model=MODEL)),
    )
    times = []
    for i in range(turns + 3):
        t = time.perf_counter()
        await pipe.execute("s", "user", f"next question {i}")
        if i >= 3:  # the first turns build the window record (one full load)
            times.append(time.perf_counter() - t)
    await pipe.shutdown()
    return statistics.median(times) * 1e6


def main() -> None:
    big, small = history(10_000), history(100)
    rows = []
    options: tuple[tuple[str, dict[str, Any]], ...] = (
        ("pin all system messages", {}),
        ("pin_system='leading'", {"pin_system": "leading"}),
    )
    for label, kwargs in options:
        t_big = median_us(partial(truncate_messages, big, BUDGET, model=MODEL, **kwargs), 300)
        t_small = median_us(partial(truncate_messages, small, BUDGET, model=MODEL, **kwargs), 300)
        rows.append((f"truncate_messages, {label}", t_big, t_small))
    big_stored, small_stored = stored_copy(big), stored_copy(small)
    t_big = median_us(lambda: truncate_messages(big_stored, BUDGET, model=MODEL), 300)
    t_small = median_us(lambda: truncate_messages(small_stored, BUDGET, model=MODEL), 300)
    rows.append(("truncate_messages, stored records (annotated)", t_big, t_small))
    for windowed in (False, True):
        t_big = asyncio.run(pipeline_turn_us(10_000, windowed=windowed, turns=40))
        t_small = asyncio.run(pipeline_turn_us(100, windowed=windowed, turns=40))
        label = "only the window" if windowed else "the whole history"
        rows.append((f"pipeline turn, loading {label}", t_big, t_small))

    kept = truncate_messages(big, BUDGET, model=MODEL)
    print(f"budget {BUDGET} tokens, model {MODEL}; window kept {len(kept)} messages\n")
    print(f"{'set-up':<50} {'10,000 msgs':>12} {'100 msgs':>10} {'ratio':>7}")
    for label, t_big, t_small in rows:
        print(f"{label:<50} {t_big:>10.1f}us {t_small:>8.1f}us {t_big / t_small:>7.2f}")


if __name__ == "__main__":
    main()
