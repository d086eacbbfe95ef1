"""Folding older turns of a conversation into a short summary, through any provider."""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import APIResponseError
from ..providers.base import GenerationConfig, Provider, ProviderRequest
from ..types import AudioPart, DocumentPart, ImagePart, Message, ProviderResponse, TextPart

__all__ = ["SUMMARY_INSTRUCTIONS", "SUMMARY_PREFIX", "summarize_messages", "summary_message"]

#: The system prompt the summarizer model gets.
SUMMARY_INSTRUCTIONS = (
    "You condense conversations so an assistant can continue them. Write a concise summary "
    "of the conversation you are given. Keep every fact, name, number, user preference, "
    "decision, tool result that matters and open question; drop pleasantries. If an earlier "
    "summary is given, merge it and the new messages into one summary. Plain text, third "
    "person, no preamble."
)
#: How a summary is introduced to the main model.
SUMMARY_PREFIX = "Summary of the earlier conversation:\n"


def summary_message(text: str) -> Message:
    """The system message that carries ``text`` (a summary) to the model."""
    return Message("system", SUMMARY_PREFIX + text)


def _text(message: Message) -> str:
    # Media become short placeholders (the summarizer sees that they were there, not
    # their bytes); reasoning is left out.
    content = message.content
    if isinstance(content, str):
        return content
    pieces = []
    for part in content:
        if isinstance(part, TextPart):
            pieces.append(part.text)
        elif isinstance(part, ImagePart):
            pieces.append("[image]")
        elif isinstance(part, DocumentPart):
            pieces.append(f"[document {part.filename}]" if part.filename else "[document]")
        elif isinstance(part, AudioPart):
            pieces.append("[audio]")
    return " ".join(p for p in pieces if p)


def render_transcript(messages: Iterable[Message]) -> str:
    """A plain-text transcript of ``messages`` for the summarizer (system ones skipped)."""
    lines: list[str] = []
    for m in messages:
        if m.role == "system":
            continue
        if m.role == "tool":
            lines.append(f"tool result ({m.name or m.tool_call_id}): {_text(m)}")
            continue
        body = _text(m)
        text = f"{m.name or m.role}: {body}" if body else f"{m.name or m.role}:"
        for call in m.tool_calls:
            text += f" [called {call.name}({call.arguments})]"
        lines.append(text)
    return "\n".join(lines)


async def summarize_messages(
    provider: Provider,
    messages: Iterable[Message],
    *,
    previous_summary: str | None = None,
    max_tokens: int = 512,
    instructions: str = SUMMARY_INSTRUCTIONS,
) -> ProviderResponse:
    """Ask ``provider`` (typically a cheaper model) to summarize ``messages``.

    Args:
        provider: any provider; it is sent one non-streamed request.
        messages: the turns to fold in, oldest first (system messages are skipped).
        previous_summary: an earlier summary to merge with them.
        max_tokens: cap on the summary's length.
        instructions: the summarizer's system prompt.

    Returns:
        The provider's response: ``.content`` is the summary, ``.usage``/``.cost`` what it
        took.

    Raises:
        ProviderError: whatever the provider raised.
        APIResponseError: the provider answered with an empty summary.
    """
    body = ""
    if previous_summary:
        body = f"Earlier summary:\n{previous_summary}\n\n"
    body += "New messages:\n" + render_transcript(messages)
    request = ProviderRequest(
        messages=[Message("system", instructions), Message("user", body)],
        generation=GenerationConfig(max_tokens=max_tokens),
    )
    response = await provider.complete(request)
    if not response.content.strip():
        raise APIResponseError("the summarizer returned an empty summary", provider=provider.id)
    return response
