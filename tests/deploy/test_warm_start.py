"""The first requests after a start are scored: ``/readyz`` says ready only once the engine has
run the shapes it serves (through its executor threads and batcher) and the whole request
path has been walked once (issue 14: the first ``/v1/rerank`` of 3 short documents came back
unscored on most fresh starts, the first ``/v1/search`` with no candidates at all).

The real service as a process (`python -m app serve`), default budget (20 ms), int8; each
start fresh."""

from __future__ import annotations

import os
from pathlib import Path

import aiohttp
import pytest

from tests.deploy.test_shutdown import base_overrides, get, service

pytestmark = pytest.mark.slow

DOCS = [
    "The wing flutter tests at transonic speeds.",
    "Boundary layer transition on a flat plate.",
    "Heat transfer in hypersonic flow.",
]


def _oversubscribed() -> float | None:
    """The 1-minute load average when it is over twice the cores (other sessions' test runs
    on a shared machine): then no request holds a 20 ms budget reliably, first or not."""
    load = os.getloadavg()[0]
    return load if load > 2 * len(os.sched_getaffinity(0)) else None


def _check(ok: bool, what: str) -> None:
    if ok:
        return
    load = _oversubscribed()
    if load is not None:
        pytest.xfail(f"{what}, with the load average at {load:.1f}: not a check of warm-up")
    raise AssertionError(what)


@pytest.mark.parametrize("rerank_first", [True, False])
async def test_first_requests_after_ready_are_scored(
    tmp_path: Path, default_model_dir: Path, small_index: Path, rerank_first: bool
) -> None:
    overrides = base_overrides(tmp_path, default_model_dir, small_index, grace=0.0, drain=5.0)
    async with service(overrides, tmp_path) as svc:
        # It listens only once warm (the site starts after the services): ready at once.
        assert await get(svc.port, "/readyz") == 200
        base = f"http://127.0.0.1:{svc.port}"
        async with aiohttp.ClientSession() as s:
            for kind in ("rerank", "search") if rerank_first else ("search", "rerank"):
                if kind == "rerank":
                    body = {"query": "wing flutter", "documents": DOCS}
                    async with s.post(base + "/v1/rerank", json=body) as r:
                        assert r.status == 200, await r.text()
                        got = await r.json()
                    # Every document scored within the default budget, first time.
                    _check(got["meta"]["scored"] == 3, f"first rerank: {got['meta']}")
                else:
                    async with s.post(base + "/v1/search", json={"query": "wing"}) as r:
                        assert r.status == 200, await r.text()
                        got = await r.json()
                    # Retrieval answered within the budget (it used to miss it entirely).
                    _check(got["candidates"] > 0 and bool(got["hits"]), f"first search: {got}")
