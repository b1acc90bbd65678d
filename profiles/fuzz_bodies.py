"""profiles/fuzz.py's generator: request bodies from the service's own ``/openapi.json``
(valid shapes, boundary values, hostile text), then mutated (wrong types, missing and extra
fields, out-of-range numbers, broken bytes)."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import strategies as st

# Text that has broken text pipelines before: invisible, bidirectional, combining,
# control, astral, syntax of the query languages behind us, and one huge token.
HOSTILE = [
    "",
    " ",
    "\u200b\u200c\u200d\ufeff",
    "\u202eevil\u202c",
    "مرحبا بالعالم",
    "שלום",
    "Z\u0351\u0352\u0353a\u0354l\u0356g\u0357o",
    "\x00\x01\x1b[31m\x7f",
    "👩‍👩‍👧‍👦🛩️",
    "𠀀𠀁翼の揚力",
    'title:wing OR text:* AND NOT "x"~2 \\ /re/ _id:1',
    '{"query": {"match_all": {}}, "script": {"source": "1"}}',
    "<script>alert(1)</script>",
    "' OR 1=1 --",
    "%s%n%x",
    "x" * 100_000,
    "word " * 5000,
]
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
ANY_JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
TEXT = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(codec="utf-8"), max_size=200),
    st.sampled_from(HOSTILE),
)


def resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = spec
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def from_schema(spec: dict[str, Any], schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A strategy for (mostly) valid values of an OpenAPI/JSON schema, with the boundary
    values of each constraint favoured. Handles what pydantic emits for our models."""
    schema = resolve(spec, schema)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return st.one_of([from_schema(spec, s) for s in schema[key]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "string":
        return TEXT.filter(lambda s: len(s.strip()) >= schema.get("minLength", 0))
    if kind in ("integer", "number"):
        lo, hi = schema.get("minimum"), schema.get("maximum")
        if kind == "integer":
            edges = [v for v in (lo, hi, 1, 10, 100, 1000) if v is not None]
            return st.one_of(
                st.sampled_from(edges), st.integers(min_value=lo, max_value=hi or 10_000)
            )
        lo = schema.get("exclusiveMinimum", lo)
        return st.floats(
            min_value=lo,
            max_value=hi,
            exclude_min="exclusiveMinimum" in schema,
            allow_nan=False,
            allow_infinity=False,
        )
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        items = from_schema(spec, schema.get("items", {}))
        lo = schema.get("minItems", 0)
        return st.lists(items, min_size=lo, max_size=min(schema.get("maxItems", 12), 12))
    if kind == "object":
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {k: from_schema(spec, v) for k, v in props.items() if k in required},
            optional={k: from_schema(spec, v) for k, v in props.items() if k not in required},
        )
    return ANY_JSON


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[Any]) -> Any:
    """A valid body, then (sometimes) broken in one of the ways clients break bodies."""
    body = draw(valid)
    how = draw(st.sampled_from(["none", "none", "none", "retype", "drop", "extra", "swap"]))
    if how == "none" or not isinstance(body, dict) or not body:
        return body
    key = draw(st.sampled_from(sorted(body)))
    if how == "retype":
        body[key] = draw(ANY_JSON)
    elif how == "drop":
        del body[key]
    elif how == "extra":
        body[draw(st.text(min_size=1, max_size=12))] = draw(ANY_JSON)
    else:
        body = draw(st.sampled_from([[body], body[key], {"wrapper": body}]))
    return body


def bodies(spec: dict[str, Any], path: str) -> st.SearchStrategy[bytes]:
    ref = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    as_json = mutated(from_schema(spec, ref)).map(orjson.dumps)
    broken = st.one_of(
        st.binary(max_size=200),
        as_json.map(lambda b: b[: len(b) // 2]),  # truncated
        as_json.map(lambda b: b.replace(b'"', b"\xff", 1)),  # invalid UTF-8
        st.just(b"[" * 5000),
    )
    # one_of flattens nested one_ofs and picks a branch uniformly: weigh explicitly,
    # three bodies in four are JSON.
    return st.integers(0, 3).flatmap(lambda i: broken if i == 0 else as_json)
