"""Hypothesis strategies shared by the property tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st


def json_values(text: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    """JSON values (nested lists and objects, no NaN/infinity) with ``text`` strings."""
    scalar = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63),
        st.floats(allow_nan=False, allow_infinity=False),
        text,
    )
    return st.recursive(
        scalar,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
        max_leaves=12,
    )


def json_objects(text: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, Any]]:
    """JSON objects whose values are :func:`json_values`."""
    return st.dictionaries(text, json_values(text), max_size=4)
