"""Trimming a conversation to a budget without breaking it.

The rules, shared by :func:`truncate_messages` (a token budget) and
:func:`keep_last_messages` (a message count):

* **System messages are pinned**: each is kept and counted, never evicted. (With
  ``pin_system="leading"`` only the system messages before the first other message are
  pinned; later ones are trimmed like any message.)
* **Tool groups stay whole**: an assistant message with ``tool_calls`` and the tool
  messages right after it are kept or dropped together.
* **Newest first**: the kept messages are the newest that fit, as one contiguous run
  (plus the pinned system messages before it), in their original order.
* **A clean start**: the run starts on a user message when it contains one, and never
  on a tool result.
* For token budgets, **the current turn is required**: the newest user message and
  everything after it (a tool loop in progress). If it cannot fit beside the pinned
  system messages, :class:`~promptkit_async.errors.TokenBudgetExceededError` says how
  many tokens it needs.
* **Messages are never split**: a message with content parts (images, documents, audio)
  is kept or dropped whole, counted as the sum of its parts. A huge part is therefore
  treated like a long text: in an older message it ends the window there (it and
  everything older are dropped, as the kept run is contiguous); in the current turn it
  raises :class:`~promptkit_async.errors.TokenBudgetExceededError`, whose message says
  the turn holds media and how to make it smaller. Nothing is silently cut out of a
  message.

Cost: the walk goes from the newest message backwards and stops when the budget is
full, using cached per-message counts, so its cost follows the size of the window, not
of the history. Pinned system messages at the start are found by looking at the first
messages only; finding any *other* system message older than the window needs one
check of each older message's role (no tokenizing; ~30 ns a message), skipped with
``pin_system="leading"``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import islice
from operator import attrgetter
from typing import Literal

from ..errors import InvalidRequestError, TokenBudgetExceededError
from ..types import Message, TextPart, ThinkingPart
from ._tokens import REPLY_PRIMING_TOKENS, get_tokenizer

__all__ = ["PinSystem", "Window", "fit_window", "keep_last_messages", "truncate_messages"]

#: Which system messages are pinned: ``"all"`` or only the ``"leading"`` ones.
PinSystem = Literal["all", "leading"]

_role = attrgetter("role")


@dataclass(slots=True)
class Window:
    """Where a trimmed conversation starts, as found by :func:`fit_window`.

    Attributes:
        start: ``messages[start:]`` is the kept run.
        pinned: indices (ascending, all ``< start``) of the system messages kept before it.
        tokens: the cost of the result (including ``base`` tokens) in the budget's unit.
    """

    start: int
    pinned: list[int] = field(default_factory=list)
    tokens: int = 0

    @property
    def keeps_all(self) -> bool:
        """True when nothing was dropped (everything before ``start`` is pinned)."""
        return len(self.pinned) == self.start

    def apply(self, messages: Sequence[Message]) -> list[Message]:
        """The kept messages, in order."""
        out = [messages[i] for i in self.pinned]
        out.extend(messages[self.start :])
        return out


def _media_kinds(messages: Iterable[Message]) -> list[str]:
    kinds = {
        type(part).__name__
        for m in messages
        if not isinstance(m.content, str)
        for part in m.content
        if not isinstance(part, (TextPart, ThinkingPart))
    }
    return sorted(kinds)


def _exceeded(used: int, budget: int, required: Iterable[Message] = ()) -> TokenBudgetExceededError:
    media = _media_kinds(required)
    hint = (
        f"; they hold {', '.join(media)} content, counted whole (a message is never split): "
        "send a smaller image or detail='low', fewer pages, or a shorter clip"
        if media
        else ""
    )
    return TokenBudgetExceededError(
        f"the pinned system messages and the newest user turn need {used} tokens, but the "
        f"budget is {budget}; raise the budget (max_tokens) or shorten the system prompt "
        f"or the message{hint}",
        required_tokens=used,
        max_tokens=budget,
    )


def fit_window(
    messages: Sequence[Message],
    budget: int,
    count: Callable[[Message], int],
    *,
    base: int = 0,
    pin_system: PinSystem = "all",
    require_turn: bool = True,
) -> Window:
    """Find the longest clean run of newest messages that fits ``budget``.

    Args:
        messages: the conversation, oldest first.
        budget: what the result may cost.
        count: the cost of one message (tokens, or 1 per message).
        base: cost already taken (reply priming, pinned messages kept elsewhere).
        pin_system: see the module docs.
        require_turn: the newest user message and all after it must be kept; raise
            :class:`TokenBudgetExceededError` if they cannot fit.

    The group, pinning and start rules are in the module docs.
    """
    n = len(messages)
    lead = 0
    while lead < n and messages[lead].role == "system":
        lead += 1
    used = base + sum(count(messages[i]) for i in range(lead))
    pinned: list[int] = list(range(lead))

    turn = n  # first index of the required turn
    if require_turn:
        u = n - 1
        while u >= lead and messages[u].role != "user":
            u -= 1
        if u >= lead:
            turn = u
            used += sum(count(messages[i]) for i in range(u, n))
    pin_all = pin_system == "all"

    def exceeded() -> TokenBudgetExceededError:
        # Everything that must be kept, for the error's count (off the hot path).
        need = (
            base
            + sum(count(messages[k]) for k in range(lead))
            + (sum(count(messages[k]) for k in range(turn, n)) if turn < n else 0)
        )
        if pin_all:
            need += sum(
                count(messages[k]) for k in range(lead, turn) if messages[k].role == "system"
            )
        required = [messages[k] for k in range(lead)] + [messages[k] for k in range(turn, n)]
        return _exceeded(need, budget, required)

    if used > budget:
        raise exceeded()

    groups: list[tuple[int, int]] = []  # kept groups, newest first: (first index, cost)
    late_pins: list[int] = []  # pinned system messages met during the walk, newest first
    start = turn
    i = turn - 1
    full = False
    while i >= lead:
        message = messages[i]
        if pin_all and message.role == "system":
            used += count(message)
            late_pins.append(i)
            while used > budget and groups:
                # A pinned message outranks the oldest kept group.
                _, cost = groups.pop()
                used -= cost
                full = True
            if used > budget:
                raise exceeded()
            start = groups[-1][0] if groups else turn
            i -= 1
            if full:
                break
            continue
        first = i
        if message.role == "tool":
            while first > lead and messages[first - 1].role == "tool":
                first -= 1
            before = messages[first - 1] if first > lead else None
            if before is not None and before.role == "assistant" and before.tool_calls:
                first -= 1
        cost = sum(count(messages[k]) for k in range(first, i + 1))
        if used + cost > budget:
            break
        used += cost
        groups.append((first, cost))
        start = first
        i = first - 1

    if pin_all and i >= lead and "system" in map(_role, islice(messages, lead, i + 1)):
        # System messages older than the window: pinned too, at the expense of the
        # oldest kept groups.
        older = [k for k in range(lead, i + 1) if messages[k].role == "system"]
        used += sum(count(messages[k]) for k in older)
        while used > budget and groups:
            _, cost = groups.pop()
            used -= cost
        if used > budget:
            raise exceeded()
        start = groups[-1][0] if groups else turn
        pinned.extend(older)

    # Start on a user message when the run has one; never on a tool result. Pinned
    # system messages passed over stay (they are in late_pins); others are dropped.
    first_user = start
    while first_user < n and messages[first_user].role != "user":
        first_user += 1
    j = start
    while j < n:
        message = messages[j]
        if pin_all and message.role == "system":
            j += 1
        elif j < first_user < n or (first_user == n and message.role == "tool"):
            used -= count(message)
            j += 1
        else:
            break
    start = j
    pinned.extend(k for k in reversed(late_pins) if k < start)
    pinned.sort()
    return Window(start, pinned, used)


def _check_budget(value: int, name: str) -> None:
    if type(value) is not int or value < 0:
        raise InvalidRequestError(f"{name} must be a non-negative int, got {value!r}")


def truncate_messages(
    messages: Sequence[Message],
    max_tokens: int,
    *,
    model: str | None = None,
    pin_system: PinSystem = "all",
) -> list[Message]:
    """The newest messages that fit in ``max_tokens``, with the system messages pinned.

    Counts like :func:`~promptkit_async.prompt.count_message_tokens` (the result's
    request count, reply priming included, is at most ``max_tokens``); the rules are in
    this module's docs. ``model`` picks the tokenizer (unknown or ``None``: the fallback
    encoding, an estimate). The first use of an encoding loads it synchronously.

    Returns:
        A new list; the input is not changed. A history that already fits comes back
        whole.

    Raises:
        TokenBudgetExceededError: the pinned system messages plus the newest user
            message (and anything after it) do not fit.
        InvalidRequestError: a negative or non-int ``max_tokens``.
    """
    _check_budget(max_tokens, "max_tokens")
    if not messages:
        return []
    if max_tokens < REPLY_PRIMING_TOKENS and not any(
        m.role in ("system", "user") for m in messages
    ):
        return []  # nothing is required and nothing fits; an empty request costs 0
    tokenizer = get_tokenizer(model)
    window = fit_window(
        messages,
        max_tokens,
        tokenizer.count_message,
        base=REPLY_PRIMING_TOKENS,
        pin_system=pin_system,
    )
    return window.apply(messages)


def _one(message: Message) -> int:
    return 1


def _one_unless_system(message: Message) -> int:
    return 0 if message.role == "system" else 1


def keep_last_messages(
    messages: Sequence[Message], n: int, *, pin_system: PinSystem = "all"
) -> list[Message]:
    """The system messages plus at most ``n`` of the newest other messages.

    Trimming by count (the tutorial's "keep the last 10 messages") with the same rules as
    :func:`truncate_messages`: pinned system messages (not counted in ``n``), whole tool
    groups (so fewer than ``n`` may be kept), a start on a user message where possible.

    Raises:
        InvalidRequestError: a negative or non-int ``n``.
    """
    _check_budget(n, "n")
    if not messages:
        return []
    count = _one_unless_system if pin_system == "all" else _one
    lead = 0
    while lead < len(messages) and messages[lead].role == "system":
        lead += 1
    # Leading system messages cost nothing in either mode: they are never counted in n.
    window = fit_window(
        messages,
        n + (0 if pin_system == "all" else lead),
        count,
        pin_system=pin_system,
        require_turn=False,
    )
    return window.apply(messages)
