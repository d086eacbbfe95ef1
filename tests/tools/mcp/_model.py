"""A scripted model for the MCP tests: it calls the tools a user line asks for.

A user message ``"call NAME {json args}; NAME2 {json}"`` makes it call those tools (all in
one assistant message); once tool results are in, it answers ``"results: a | b"`` with
the results' texts, so a test can read what the model was given.
"""

from __future__ import annotations

import itertools
import json

from promptkit_async import MockProvider, ProviderRequest, ProviderResponse, ToolCall

_ids = itertools.count()


def plan(text: str) -> list[tuple[str, str]]:
    if not text.startswith("call "):
        return []
    calls = []
    for part in text[len("call ") :].split(";"):
        name, _, args = part.strip().partition(" ")
        calls.append((name, args.strip() or "{}"))
    return calls


def handler(request: ProviderRequest) -> str | ProviderResponse:
    last = request.messages[-1]
    if last.role == "user":
        calls = plan(last.content)
        if not calls:
            return f"plain answer to {last.content}"
        return ProviderResponse(
            tool_calls=tuple(ToolCall(f"call_{next(_ids)}", n, a) for n, a in calls),
            finish_reason="tool_calls",
        )
    results = []
    for message in reversed(request.messages):
        if message.role != "tool":
            break
        results.append(message.content)
    return "results: " + " | ".join(reversed(results))


def scripted_model() -> MockProvider:
    return MockProvider(handler=handler)


def args(**kwargs: object) -> str:
    return json.dumps(kwargs)
