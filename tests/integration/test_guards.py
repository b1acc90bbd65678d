"""Back-pressure and auth over a real loopback socket: requests past the admission bound get
503 + Retry-After at once while the admitted ones keep their budget; API keys guard every
path but the health probes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from app.config import Config, from_sources
from app.http import IN_FLIGHT
from app.shutdown import DRAINING
from profiles.loadgen import open_loop, summarize
from profiles.workloads import search_payloads
from rerank.config import EngineConfig
from rerank.engine import ScoringEngine
from retrieval.embedded.search import EmbeddedBackend
from retrieval.errors import RetrievalError
from retrieval.types import Hit, SubQuery
from tests.support import MakeApp


class GatedBackend:
    """Holds every search until the test opens the gate: requests stay in flight on cue."""

    name = "gated"

    def __init__(self, inner: EmbeddedBackend) -> None:
        self.inner = inner
        self.gate = asyncio.Event()

    async def search_chunk(
        self, queries: Sequence[SubQuery], k: int, deadline: float | None = None
    ) -> list[list[Hit] | RetrievalError]:
        await self.gate.wait()
        return await self.inner.search_chunk(queries, k)

    async def ping(self) -> bool:
        return True

    def queue_age(self) -> float:
        return 0.0

    async def num_docs(self) -> int | None:
        return None

    async def close(self) -> None:
        return None


async def _until(cond: Any, timeout_s: float = 5.0) -> None:
    end = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_past_the_bound_503_at_once_and_admitted_requests_finish(
    make_app: MakeApp, small_backend: EmbeddedBackend
) -> None:
    cfg = Config().override(max_in_flight=2, budget_ms=60_000, retry_after_s=3)
    backend = GatedBackend(small_backend)
    client = await make_app(config=cfg, backend=backend)
    app = client.app
    body = orjson.dumps({"query": "wing lift"})
    held = [asyncio.ensure_future(client.post("/v1/search", data=body)) for _ in range(2)]
    await _until(lambda: app[IN_FLIGHT].scoring == 2)
    t0 = time.monotonic()
    resp = await client.post("/v1/search", data=body)
    took = time.monotonic() - t0
    err = await resp.json()
    assert resp.status == 503 and resp.headers["Retry-After"] == "3"
    assert err["error"]["code"] == "overloaded" and took < 1.0
    assert err["error"]["request_id"] == resp.headers["X-Request-ID"]  # the one error shape
    # One count: admission, the drain and the gauge read the same object.
    assert app[IN_FLIGHT] is app[DRAINING].in_flight and app[IN_FLIGHT].now >= 2
    scrape = (await (await client.get("/metrics")).text()).splitlines()
    gauge = [ln for ln in scrape if ln.startswith("rerank_http_requests_in_flight ")]
    assert gauge == [f"rerank_http_requests_in_flight {float(2 + 1)}"]  # held two + the scrape
    resp = await client.post("/v1/rerank", data=orjson.dumps({"query": "q", "documents": ["a"]}))
    assert resp.status == 503  # the bound covers both scoring endpoints
    health = await client.get("/healthz")
    assert health.status == 200  # and nothing else
    backend.gate.set()
    for r in await asyncio.gather(*held):
        assert r.status == 200
        assert (await r.json())["hits"][0]["id"] == "wing"
    assert app[IN_FLIGHT].scoring == 0 and app[IN_FLIGHT].rejected == 2
    resp = await client.post("/v1/search", data=body)
    assert resp.status == 200  # room again


async def test_overload_short(make_app: MakeApp, default_model_dir: Path) -> None:
    """The CI version of profiles/overload.py: far past what the machine can score, for two
    seconds. Only 200/503 (or 504 when an admitted request's retrieval did not answer
    within its budget on a loaded machine: never an empty 200), every 503 with
    Retry-After, the 200s within budget + margin."""
    budget_ms, margin_ms, limit = 150.0, 350.0, 4
    cfg = Config().override(max_in_flight=limit, budget_ms=budget_ms)
    # No embedding cache: every request scores its candidates through the model, so 400
    # requests a second really is past what two cores can do.
    engine = ScoringEngine(
        EngineConfig(model_dir=default_model_dir, precision="fp32", max_length=256, cache_mb=0)
    )
    client = await make_app(config=cfg, engine_=engine)
    app = client.app
    url = str(client.make_url("/v1/search"))
    heavier = [orjson.dumps({"query": p.decode(), "candidates": 50}) for p in (b"wing", b"heat")]
    samples = await open_loop(
        client.session, url, [*search_payloads(), *heavier], rate=400, duration_s=2.0
    )
    s = summarize(samples, 2.0)
    assert set(s.statuses) <= {200, 503, 504}, s
    assert s.statuses.get(503, 0) > 0 and s.statuses.get(200, 0) > 0, s
    assert s.rejected_without_retry_after == 0
    assert s.ok_p99_ms <= budget_ms + margin_ms, s
    assert s.rejected_p99_ms < budget_ms + margin_ms, s
    assert app[IN_FLIGHT].peak_scoring <= limit and app[IN_FLIGHT].scoring == 0
    assert (await client.get("/healthz")).status == 200
    await engine.aclose()


KEYS = "k-one,k-two"


@pytest.fixture
async def authed(make_app: MakeApp, tiny_engine: ScoringEngine) -> TestClient:
    cfg = Config().override(api_keys=KEYS, budget_ms=60_000)
    return await make_app(engine_=tiny_engine, config=cfg)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "Bearer wrong",
        "Bearer k-one-and-more",
        "Bearer k-on",
        "Basic k-one",
        "k-one",
        "Bearer ",
        "Bearer k-one,k-two",
        "Bearer \u00e9\u00e8",
    ],
)
async def test_without_a_valid_key_401(authed: TestClient, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    resp = await authed.post("/v1/search", data=orjson.dumps({"query": "wing"}), headers=headers)
    body = await resp.json()
    assert resp.status == 401 and body["error"]["code"] == "unauthorized"
    assert body["error"]["request_id"] == resp.headers["X-Request-ID"]
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("key", ["k-one", "k-two"])
async def test_each_key_is_accepted(authed: TestClient, key: str) -> None:
    for path, payload in [
        ("/v1/search", {"query": "wing"}),
        ("/v1/rerank", {"query": "wing", "documents": ["a"]}),
    ]:
        resp = await authed.post(
            path, data=orjson.dumps(payload), headers={"Authorization": f"bearer {key}"}
        )
        assert resp.status == 200, await resp.text()


async def test_health_probes_and_spec_stay_open(authed: TestClient) -> None:
    for path in ("/healthz", "/readyz", "/openapi.json"):
        assert (await authed.get(path)).status == 200, path


@pytest.mark.parametrize(("restrict", "status"), [(True, 401), (False, 200)])
async def test_metrics_can_be_restricted(
    make_app: MakeApp,
    tiny_engine: ScoringEngine,
    restrict: bool,
    status: int,
) -> None:
    cfg = Config().override(api_keys="k", metrics_auth=restrict)
    client = await make_app(engine_=tiny_engine, config=cfg)
    resp = await client.get("/metrics")
    assert resp.status == status
    if restrict:  # with the key it answers
        ok = await client.get("/metrics", headers={"Authorization": "Bearer k"})
        assert ok.status == 200 and "rerank_http_requests_total" in await ok.text()


async def test_keys_from_a_secret_file_and_env(
    tmp_path: Path, make_app: MakeApp, tiny_engine: ScoringEngine
) -> None:
    secret = tmp_path / "keys"
    secret.write_text("from-file\n\n  other  \n")
    cfg = from_sources(env={"RERANK_API_KEYS_FILE": str(secret), "RERANK_METRICS_AUTH": "false"})
    assert cfg.http.metrics_auth is False and cfg.http.api_keys_file == secret
    client = await make_app(engine_=tiny_engine, config=cfg)
    ok = await client.post(
        "/v1/rerank",
        data=orjson.dumps({"query": "q", "documents": ["a"]}),
        headers={"Authorization": "Bearer other"},
    )
    assert ok.status == 200
    with pytest.raises(SystemExit):
        from_sources(env={"RERANK_METRICS_AUTH": "maybe"})


@pytest.mark.parametrize("api_keys", [None, "api"])
async def test_a_scrape_only_key_opens_metrics_and_nothing_else(
    tmp_path: Path, make_app: MakeApp, tiny_engine: ScoringEngine, api_keys: str | None
) -> None:
    """A Prometheus secret must not be an API key: with ``--metrics-keys-file`` its key
    reads /metrics, is refused everywhere else, and /metrics needs a key (with or without
    API keys configured)."""
    secret = tmp_path / "scrape"
    secret.write_text("scraper\n")
    client = await make_app(engine_=tiny_engine, metrics_keys_file=secret, api_keys=api_keys)
    scraper = {"Authorization": "Bearer scraper"}
    assert (await client.get("/metrics")).status == 401
    assert (await client.get("/metrics", headers={"Authorization": "Bearer nope"})).status == 401
    assert (await client.get("/metrics", headers=scraper)).status == 200
    assert (await client.get("/healthz")).status == 200  # probes stay open
    body = orjson.dumps({"query": "q", "documents": ["a"]})
    resp = await client.post("/v1/rerank", data=body, headers=scraper)
    assert resp.status == (401 if api_keys else 200)  # never more than the open API gets
    if api_keys:
        api = {"Authorization": "Bearer api"}
        assert (await client.post("/v1/rerank", data=body, headers=api)).status == 200
        assert (await client.get("/metrics", headers=api)).status == 200


async def test_no_keys_no_auth(client_noauth: TestClient) -> None:
    resp = await client_noauth.post("/v1/search", data=orjson.dumps({"query": "wing"}))
    assert resp.status == 200


@pytest.fixture
async def client_noauth(make_app: MakeApp, tiny_engine: ScoringEngine) -> TestClient:
    cfg = Config().override(budget_ms=60_000)
    return await make_app(engine_=tiny_engine, config=cfg)
