"""Hypothesis strategies that build random valid values for any Avro schema."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

_PRIMITIVES: dict[str, st.SearchStrategy[Any]] = {
    "null": st.none(),
    "boolean": st.booleans(),
    "int": st.integers(-(2**31), 2**31 - 1),
    "long": st.integers(-(2**63), 2**63 - 1),
    "float": st.floats(width=32, allow_nan=False),
    "double": st.floats(allow_nan=False),
    "string": st.text(max_size=40),
    "bytes": st.binary(max_size=40),
}


def from_schema(schema: Any, named: dict[str, Any] | None = None) -> st.SearchStrategy[Any]:
    """Values valid for a parsed (fastavro) or raw Avro schema."""
    named = {} if named is None else named
    if isinstance(schema, str):
        if schema in _PRIMITIVES:
            return _PRIMITIVES[schema]
        return st.deferred(lambda: from_schema(named[schema], named))
    if isinstance(schema, list):
        return st.one_of([from_schema(branch, named) for branch in schema])
    kind = schema["type"]
    if "name" in schema and kind in ("record", "enum", "fixed"):
        named[schema["name"]] = schema
        if "namespace" in schema:
            named[f"{schema['namespace']}.{schema['name']}"] = schema
    if kind == "record":
        return st.fixed_dictionaries(
            {f["name"]: from_schema(f["type"], named) for f in schema["fields"]}
        )
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "array":
        return st.lists(from_schema(schema["items"], named), max_size=4)
    if kind == "map":
        return st.dictionaries(
            st.text(max_size=10), from_schema(schema["values"], named), max_size=4
        )
    if kind == "fixed":
        return st.binary(min_size=schema["size"], max_size=schema["size"])
    return from_schema(kind, named)
