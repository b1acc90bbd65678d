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

from profiles.fuzz_bodies import bodies, resolve


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
    return resolve(spec, doc["content"]["application/json"]["schema"])


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
                tei = resolve(spec, schema["properties"]["error"]).get("type") == "string"
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
