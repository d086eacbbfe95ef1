"""The flat public API stays honest: everything in __all__ exists and is documented."""

from __future__ import annotations

import inspect
import types

import pytest

import promptkit_async


def test_all_names_exist_and_are_sorted() -> None:
    names = promptkit_async.__all__
    assert len(names) == len(set(names))
    assert names == sorted(names)
    for name in names:
        assert hasattr(promptkit_async, name), name


def test_public_names_have_docstrings() -> None:
    for name in promptkit_async.__all__:
        obj = getattr(promptkit_async, name)
        # Type aliases (e.g. Middleware = Callable[...]) carry no docstring; Python 3.10
        # reports them as classes.
        if isinstance(obj, types.GenericAlias):
            continue
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"{name} has no docstring"


def test_tutorial_import_paths_work() -> None:
    from promptkit_async.pipeline import Pipeline
    from promptkit_async.pipeline.middleware import (
        ProviderMiddleware,
        ProviderMiddlewareConfig,
        StateMiddleware,
    )
    from promptkit_async.statestore import InMemoryStateStore
    from promptkit_async.types import Message

    assert Pipeline is promptkit_async.Pipeline
    assert {ProviderMiddleware, ProviderMiddlewareConfig, StateMiddleware, InMemoryStateStore}
    assert Message is promptkit_async.Message


def test_renamed_names_still_work_for_one_release_with_a_warning() -> None:
    from promptkit_async import errors

    with pytest.warns(DeprecationWarning, match="TokenBudgetExceededError"):
        old = promptkit_async.ContextWindowExceededError  # type: ignore[attr-defined]
    assert old is promptkit_async.TokenBudgetExceededError
    with pytest.warns(DeprecationWarning, match="TokenBudgetExceededError"):
        assert errors.ContextWindowExceededError is errors.TokenBudgetExceededError  # type: ignore[attr-defined]
    assert "ContextWindowExceededError" not in promptkit_async.__all__


async def test_pipeline_close_verbs_are_one_thing() -> None:
    pipe = promptkit_async.Pipeline(
        promptkit_async.ProviderMiddleware(promptkit_async.MockProvider(["hi"]))
    )
    await pipe.shutdown()  # the tutorial's name
    assert pipe.closed
    other = promptkit_async.Pipeline()
    async with other:
        pass
    assert other.closed
    await other.aclose()  # again: safe
