"""Schema-driven fuzzing of the HTTP API: requests generated from the service's own
``/openapi.json`` (valid shapes, boundary values, hostile text), then mutated (wrong types,
missing and extra fields, out-of-range numbers, broken bytes). Property: no 5xx, every error
in the documented shape, the process alive at the end.

    .venv/bin/python -m profiles.fuzz [--requests 10000] [--seed N]

Starts the real service on the default model and index (``make model index``) and writes
profiles/out/reliability/fuzz.json. ``tests/integration/test_fuzz.py`` runs the same generator,
a few
hundred requests, in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
from hypothesis import HealthCheck, given, settings
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


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = spec
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def from_schema(spec: dict[str, Any], schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A strategy for (mostly) valid values of an OpenAPI/JSON schema, with the boundary
    values of each constraint favoured. Handles what pydantic emits for our models."""
    schema = _resolve(spec, schema)
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


@dataclass
class Tally:
    statuses: Counter[int] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return sum(self.statuses.values())


class Client:
    """Plain keep-alive HTTP/1.1, reconnecting after the server closes the connection."""

    def __init__(self, base: str) -> None:
        u = urlsplit(base)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        for attempt in (0, 1):
            try:
                self.conn.request(
                    "POST", path, body=body, headers={"Content-Type": "application/json"}
                )
                resp = self.conn.getresponse()
                return resp.status, resp.read()
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
                if attempt:
                    raise
        raise AssertionError("unreachable")


def _documented(spec: dict[str, Any], path: str, status: int) -> dict[str, Any]:
    """The body schema the spec gives for ``status`` on ``path`` (its 422 one for an
    undocumented error, which the check then reports by its shape)."""
    responses = spec["paths"][path]["post"]["responses"]
    doc = responses.get(str(status)) or responses["422"]
    return _resolve(spec, doc["content"]["application/json"]["schema"])


def _budget_too_small(status: int, answer: bytes) -> bool:
    """A 504 ``retrieval_timeout`` is the contract's answer to a ``deadline_ms`` too small to
    retrieve anything in (never an empty 200): not a server fault."""
    if status != 504:
        return False
    with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError):
        return bool(orjson.loads(answer)["error"]["code"] == "retrieval_timeout")
    return False


def check(
    tally: Tally, path: str, body: bytes, status: int, answer: bytes, spec: dict[str, Any]
) -> None:
    """No 5xx (but the 504 of a too-small budget); every answer in the shape the spec
    documents for the route: an error object with a ``code`` (or, where the route's API has
    its own, TEI's ``error`` string with an ``error_type``), a JSON object or array on
    success."""
    tally.statuses[status] += 1
    problem = None
    if status >= 500 and not _budget_too_small(status, answer):
        problem = f"{status} on {path}"
    else:
        try:
            data = orjson.loads(answer)
        except orjson.JSONDecodeError:
            problem = f"non-JSON {status} on {path}"
        else:
            schema = _documented(spec, path, status)
            if status >= 400:
                tei = _resolve(spec, schema["properties"]["error"]).get("type") == "string"
                err = data.get("error") if isinstance(data, dict) else None
                code = data.get("error_type") if tei and isinstance(data, dict) else None
                if not tei and isinstance(err, dict):
                    code = err.get("code")
                if not isinstance(code, str) or (tei and not isinstance(err, str)):
                    problem = f"{status} without a documented error body on {path}"
                else:
                    tally.codes[code] += 1
            elif status == 200:
                want = list if schema.get("type") == "array" else dict
                if not isinstance(data, want):
                    problem = f"200 with a body that is not a {want.__name__} on {path}"
    if problem is not None:
        tally.failures.append(f"{problem}: {body[:300]!r} -> {answer[:300]!r}")
        raise AssertionError(tally.failures[-1])


def fuzz(
    base: str,
    n: int,
    seed: int | None = None,
    derandomize: bool = False,
    tally: Tally | None = None,
) -> Tally:
    """Send ``n`` generated requests to the service at ``base``; raises on the first
    property violation (after hypothesis has shrunk it to a minimal body)."""
    tally = Tally() if tally is None else tally
    client = Client(base)
    client.conn.request("GET", "/openapi.json")
    spec = orjson.loads(client.conn.getresponse().read())
    paths = [p for p, ops in spec["paths"].items() if "post" in ops]
    strategy = st.one_of([st.tuples(st.just(p), bodies(spec, p)) for p in paths])

    @settings(
        max_examples=n,
        deadline=None,
        database=None,
        derandomize=derandomize,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def one(case: tuple[str, bytes]) -> None:
        path, body = case
        status, answer = client.post(path, body)
        check(tally, path, body, status, answer, spec)

    if seed is not None:
        from hypothesis import seed as seed_

        one = seed_(seed)(one)
    one()
    return tally


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument(
        "--server-args",
        default="--max-length 32",
        help="more `app serve` flags; the default keeps scoring cheap: what is fuzzed is the "
        "handling of input, and full-length scoring of every generated document would make "
        "10,000 requests take an hour on two cores",
    )
    args = ap.parse_args()
    from profiles.loadgen import OUT, rss_mb
    from profiles.process import free_port, serve

    seed = args.seed if args.seed is not None else int(time.time())
    port = free_port()
    t0 = time.monotonic()
    result: dict[str, Any] = {
        "requests_asked": args.requests,
        "seed": seed,
        "server_args": args.server_args,
    }
    with serve(["--log-level", "ERROR", *args.server_args.split()], port, OUT) as proc:
        rss0 = rss_mb(proc.pid)
        tally = Tally()
        try:
            fuzz(f"http://127.0.0.1:{port}", args.requests, seed, tally=tally)
            result["violation"] = None
        except AssertionError as exc:
            result["violation"] = str(exc)[:2000]
        result["alive_after"] = proc.poll() is None
        result["rss_mb"] = {"start": round(rss0, 1), "end": round(rss_mb(proc.pid), 1)}
    result |= {
        "sent": tally.sent,
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "error_codes": dict(tally.codes.most_common()),
        "seconds": round(time.monotonic() - t0, 1),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "fuzz.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    ok = result["violation"] is None and result["alive_after"]
    return 0 if ok and not any(int(s) >= 500 for s in result["statuses"]) else 1


if __name__ == "__main__":
    sys.exit(main())
