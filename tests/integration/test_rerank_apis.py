"""The three rerank APIs (Cohere v1/Jina, Cohere v2, text-embeddings-inference) over a real
loopback socket: the request bodies real clients send (research: the cohere SDK sends JSON
null for an argument passed as None, langchain-cohere always sends
``"max_tokens_per_doc": null``, litellm sends ``return_documents`` to v2), the scoring
policy (every document scored unless the caller sets a budget; past ``--rerank-max-ms`` a
503, never nulls), and scores on [0, 1] for both model kinds."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from app import rerank_schemas, schemas
from app.http import SERVICES
from app.paths import SCORING_PATHS
from app.rerank_shapes import SHAPES
from rerank.config import EngineConfig
from rerank.engine import ScoringEngine
from rerank.scorer import LOWEST_LOGIT
from tests.integration.test_api import same_shape
from tests.support import MakeApp

DOCS = [
    "Pasta with tomatoes and basil.",
    "The wing lift rises in the propeller slipstream.",
    "Football scores of the weekend.",
    "Lift of a wing immersed in a slipstream.",
]
QUERY = "wing lift in a slipstream"


async def post(client: TestClient, path: str, payload: Any, **headers: str) -> tuple[int, Any, Any]:
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    resp = await client.post(
        path, data=body, headers={"Content-Type": "application/json", **headers}
    )
    return resp.status, await resp.json(), resp.headers


@pytest.fixture
async def client(make_app: MakeApp) -> TestClient:
    return await make_app(max_documents=100)


@pytest.fixture(scope="module")
def cross_engine(cross_model_dir: Path) -> Iterator[ScoringEngine]:
    eng = ScoringEngine(EngineConfig(model_dir=cross_model_dir, precision="fp32", max_length=64))
    yield eng
    eng.close()


def many_docs(n: int, salt: str) -> list[str]:
    """Documents nobody has scored yet (the embedding cache keys on the text)."""
    return [f"{salt} document {i} about wing lift and flow number {i * 7919}" for i in range(n)]


# --- the shapes ------------------------------------------------------------------------


async def test_v2_takes_what_cohere_clients_send_and_answers_every_document(
    client: TestClient,
) -> None:
    # langchain-cohere 0.6.0, every call: max_tokens_per_doc null; ClientV2 with None: nulls;
    # litellm: return_documents; cohere 7.x: relevant_spans; all unknown or null: ignored.
    payload = {
        "model": "rerank-v3.5",
        "query": QUERY,
        "documents": DOCS,
        "top_n": None,
        "max_tokens_per_doc": None,
        "priority": 1,
        "return_documents": True,
        "relevant_spans": {"mode": "enabled", "threshold": 0.2, "max_spans": 2},
    }
    status, body, headers = await post(client, "/v2/rerank", payload, **{"X-Request-ID": "q-7"})
    assert status == 200, body
    same_shape(rerank_schemas.RerankResponseV2, body)
    assert body["id"] == headers["X-Request-ID"] == "q-7"
    assert client.app is not None
    assert body["model"] == client.app[SERVICES].engine.model_dir.name != "rerank-v3.5"
    assert sorted(r["index"] for r in body["results"]) == [0, 1, 2, 3]
    assert {r["index"] for r in body["results"][:2]} == {1, 3}
    scores = [r["relevance_score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert all(set(r) == {"index", "relevance_score"} for r in body["results"])
    assert body["meta"]["partial"] is False and body["meta"]["scored"] == 4


@pytest.mark.parametrize(("top_n", "expect"), [(1.0, 1), (2, 2), (10, 4), (10.0, 4), (None, 4)])
async def test_top_n_integral_floats_pass_and_more_than_there_are_means_all(
    client: TestClient, top_n: Any, expect: int
) -> None:
    for path in ("/v1/rerank", "/v2/rerank"):
        status, body, _ = await post(
            client, path, {"query": QUERY, "documents": DOCS, "top_n": top_n}
        )
        assert status == 200, body
        assert len(body["results"]) == expect
    status, body, _ = await post(client, "/rerank", {"query": QUERY, "texts": DOCS, "top_n": top_n})
    assert status == 200 and len(body) == expect


@pytest.mark.parametrize(
    ("path", "payload", "field"),
    [
        ("/v2/rerank", {"query": QUERY, "documents": DOCS, "top_n": 1.5}, "top_n"),
        ("/v2/rerank", {"query": QUERY, "documents": DOCS, "top_n": True}, "top_n"),
        ("/v2/rerank", {"query": QUERY, "documents": DOCS, "top_n": 0}, "top_n"),
        ("/v2/rerank", {"query": QUERY, "documents": DOCS, "priority": "high"}, "priority"),
        ("/v2/rerank", {"query": QUERY, "documents": []}, "documents"),
        ("/v2/rerank", {"query": None, "documents": DOCS}, "query"),
        ("/v1/rerank", {"query": QUERY, "documents": DOCS, "return_documents": "yes"}, None),
        ("/v1/rerank", {"query": QUERY, "documents": ["d"] * 101}, "documents"),
        ("/v1/rerank", {"query": QUERY, "documents": DOCS, "budget_ms": 0}, "budget_ms"),
    ],
)
async def test_bad_rerank_input_is_a_422_naming_the_field(
    client: TestClient, path: str, payload: Any, field: str | None
) -> None:
    status, body, _ = await post(client, path, payload)
    assert status == 422, body
    same_shape(schemas.ErrorResponse, body)
    if field is not None:
        assert body["error"]["field"] == field


async def test_v1_tolerates_nulls_and_echoes_documents(client: TestClient) -> None:
    payload = {
        "model": None,
        "query": QUERY,
        "documents": [DOCS[0], {"text": DOCS[1], "title": "Wings", "extra": 1}],
        "top_n": None,
        "return_documents": True,
        "rank_fields": None,
        "max_chunks_per_doc": None,
        "max_tokens_per_doc": None,
        "budget_ms": None,
    }
    status, body, headers = await post(client, "/v1/rerank", payload)
    assert status == 200, body
    same_shape(rerank_schemas.RerankResponse, body)
    assert body["id"] == headers["X-Request-ID"]
    assert body["results"][0]["index"] == 1
    assert body["results"][0]["document"] == {"text": DOCS[1], "title": "Wings", "extra": 1}
    assert body["results"][1]["document"] == {"text": DOCS[0]}
    status, body, _ = await post(client, "/v1/rerank", {**payload, "return_documents": None})
    assert status == 200 and all("document" not in r for r in body["results"])


async def test_tei_answers_a_bare_array_best_first_raw_or_mapped(client: TestClient) -> None:
    # litellm huggingface/: raw_scores false, truncation_direction "Right", return_text true.
    payload = {
        "raw_scores": False,
        "truncation_direction": "Right",
        "query": QUERY,
        "texts": DOCS,
        "return_text": True,
        "truncate": None,
    }
    status, mapped, headers = await post(client, "/rerank", payload)
    assert status == 200, mapped
    same_shape(rerank_schemas.TeiRerankResponse, mapped)
    assert headers["X-Rerank-Scored"] == "4" and headers["X-Rerank-Partial"] == "false"
    assert [list(r) for r in mapped] == [["index", "text", "score"]] * 4
    assert all(r["text"] == DOCS[r["index"]] for r in mapped)
    scores = [r["score"] for r in mapped]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    # Elasticsearch's hugging_face body; raw scores: the cosine itself.
    status, raw, _ = await post(
        client, "/rerank", {"texts": DOCS, "query": QUERY, "raw_scores": True}
    )
    assert status == 200 and [list(r) for r in raw] == [["index", "score"]] * 4
    assert [r["index"] for r in raw] == [r["index"] for r in mapped]
    for m, r in zip(mapped, raw, strict=True):
        assert -1 <= r["score"] <= 1
        assert m["score"] == pytest.approx((1 + r["score"]) / 2, abs=1e-6)
    # ... and v1 gives the same mapped scores.
    _, v1, _ = await post(client, "/v1/rerank", {"query": QUERY, "documents": DOCS})
    assert [r["relevance_score"] for r in v1["results"]] == pytest.approx(scores, abs=1e-6)


@pytest.mark.parametrize(
    ("payload", "headers", "status", "kind"),
    [
        ({"query": QUERY, "texts": []}, {}, 422, "validation"),
        ({"query": QUERY}, {}, 422, "validation"),
        ({"query": QUERY, "texts": DOCS, "truncation_direction": "Left"}, {}, 422, "validation"),
        (b"{not json", {}, 400, "validation"),
        ({"query": QUERY, "texts": DOCS}, {"X-Rerank-Budget-Ms": "soon"}, 422, "validation"),
    ],
)
async def test_tei_errors_have_the_tei_body(
    client: TestClient, payload: Any, headers: dict[str, str], status: int, kind: str
) -> None:
    got, body, _ = await post(client, "/rerank", payload, **headers)
    assert got == status
    same_shape(rerank_schemas.TeiError, body)
    assert body["error_type"] == kind and isinstance(body["error"], str) and body["error"]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.path)
@pytest.mark.parametrize("raw", ["", "(%", "0", "-1", "nan", "1e9"])
async def test_an_invalid_budget_header_is_refused_even_beside_a_body_budget(
    client: TestClient, shape: Any, raw: str
) -> None:
    """The header is published as a number in (0, max]; the body's budget_ms winning does
    not make a bad header valid."""
    body = {"query": QUERY, shape.documents_field: DOCS, "budget_ms": 5000}
    got, err, _ = await post(client, shape.path, body, **{"X-Rerank-Budget-Ms": raw})
    assert got == 422
    msg = err["error"] if shape.path == "/rerank" else err["error"]["message"]
    assert "X-Rerank-Budget-Ms" in msg


# --- the scoring policy ----------------------------------------------------------------


def test_every_rerank_route_is_bounded_by_admission() -> None:
    assert {s.path for s in SHAPES} <= SCORING_PATHS


async def test_without_a_budget_every_document_is_scored_cold(make_app: MakeApp) -> None:
    """The issue's case: 40 documents cold under the 20 ms search budget came back all
    null. The rerank routes do not use it."""
    client = await make_app(budget_ms=20.0)
    for path, key in (("/v1/rerank", "documents"), ("/v2/rerank", "documents")):
        docs = many_docs(40, path)
        status, body, _ = await post(client, path, {"query": QUERY, key: docs})
        assert status == 200, body
        assert body["meta"] == {**body["meta"], "partial": False, "scored": 40}
        assert len(body["results"]) == 40
        assert all(isinstance(r["relevance_score"], float) for r in body["results"])
    status, body, headers = await post(
        client, "/rerank", {"query": QUERY, "texts": many_docs(40, "t")}
    )
    assert status == 200 and len(body) == 40 and headers["X-Rerank-Scored"] == "40"


async def test_past_the_server_limit_503_with_retry_after_never_nulls(
    make_app: MakeApp,
) -> None:
    client = await make_app(rerank_max_ms=0.001, retry_after_s=2)
    for path, key in (("/v1/rerank", "documents"), ("/v2/rerank", "documents")):
        docs = many_docs(8, f"{path} unseen")  # not in the cache: the model has work to do
        status, body, headers = await post(client, path, {"query": QUERY, key: docs})
        assert status == 503, body
        assert headers["Retry-After"] == "2"
        assert body["error"]["code"] == "over_time_limit"
        assert "over the server's limit of 0.001 ms" in body["error"]["message"]
    status, body, headers = await post(
        client, "/rerank", {"query": QUERY, "texts": many_docs(8, "x")}
    )
    assert status == 503 and headers["Retry-After"] == "2"
    assert body == {**body, "error_type": "overloaded"} and "predicted" in body["error"]
    # A caller's budget above the limit is cut to it, and then a partial answer is allowed.
    status, body, _ = await post(
        client, "/v2/rerank", {"query": QUERY, "documents": many_docs(8, "y"), "budget_ms": 5000}
    )
    assert status == 200 and body["meta"]["partial"] is True


async def test_work_predicted_past_the_limit_is_refused_at_once(
    make_app: MakeApp, tiny_engine: ScoringEngine
) -> None:
    """The issue's 5,000-request probe: a rerank that would wait behind the queue past
    ``--rerank-max-ms`` gets its 503 before taking any model time, not after waiting the
    whole limit for it; within the forecast it is scored whole."""
    import time

    client = await make_app(engine_=tiny_engine, rerank_max_ms=2000.0)
    cost = tiny_engine.cost
    saved = cost.per_call_s, cost.per_token_s
    calls = tiny_engine.batcher.calls
    try:
        cost.per_call_s, cost.per_token_s = 0.0, 0.1  # 100 ms a token: 8 docs > 10 s
        t0 = time.monotonic()
        status, body, headers = await post(
            client, "/v2/rerank", {"query": QUERY, "documents": many_docs(8, "late")}
        )
        assert status == 503 and headers["Retry-After"], body
        assert body["error"]["code"] == "over_time_limit"
        assert (
            "predicted" in body["error"]["message"]
            and "limit of 2000 ms" in body["error"]["message"]
        )
        assert time.monotonic() - t0 < 1.0  # not after waiting out the 2 s
        assert tiny_engine.batcher.calls == calls  # no model time spent on it
        cost.per_call_s, cost.per_token_s = saved
        status, body, _ = await post(
            client, "/v2/rerank", {"query": QUERY, "documents": many_docs(8, "fits")}
        )
        assert status == 200 and body["meta"]["scored"] == 8, body
    finally:
        cost.per_call_s, cost.per_token_s = saved


@pytest.mark.parametrize("how", ["body", "header"])
async def test_a_budget_the_caller_sets_may_cut_and_the_answer_says_so(
    client: TestClient, how: str
) -> None:
    docs = many_docs(12, how)
    extra: dict[str, Any] = {"budget_ms": 0.001} if how == "body" else {}
    hdrs = {"X-Rerank-Budget-Ms": "0.001"} if how == "header" else {}
    status, body, _ = await post(
        client, "/v2/rerank", {"query": QUERY, "documents": docs, **extra}, **hdrs
    )
    assert status == 200, body
    assert body["meta"]["partial"] is True and body["meta"]["scored"] == 0
    # Every document, each with a number: unscored ones last, in request order, at 0.0.
    assert [r["index"] for r in body["results"]] == list(range(12))
    assert all(r["relevance_score"] == 0.0 for r in body["results"])
    status, body, _ = await post(
        client, "/v1/rerank", {"query": QUERY, "documents": docs, "top_n": 3, **extra}, **hdrs
    )
    assert status == 200 and body["meta"]["partial"] is True and len(body["results"]) == 3
    # TEI: headers say it; raw scores get the floor of the cosine.
    tei = {"query": QUERY, "texts": docs, "raw_scores": True, **extra}
    status, body, headers = await post(client, "/rerank", tei, **hdrs)
    assert status == 200 and len(body) == 12
    assert headers["X-Rerank-Partial"] == "true" and headers["X-Rerank-Scored"] == "0"
    assert all(r["score"] == -1.0 for r in body)


async def test_a_budget_that_suffices_scores_everything(client: TestClient) -> None:
    status, body, _ = await post(
        client,
        "/v2/rerank",
        {"query": QUERY, "documents": DOCS},
        **{"X-Rerank-Budget-Ms": "60000"},
    )
    assert status == 200 and body["meta"]["partial"] is False and body["meta"]["scored"] == 4


# --- scores for both model kinds -------------------------------------------------------


async def test_cross_encoder_scores_are_the_sigmoid_of_the_raw_logit(
    make_app: MakeApp, cross_engine: ScoringEngine
) -> None:
    client = await make_app(engine_=cross_engine)
    status, raw, _ = await post(
        client, "/rerank", {"query": QUERY, "texts": DOCS, "raw_scores": True}
    )
    assert status == 200
    status, v2, _ = await post(client, "/v2/rerank", {"query": QUERY, "documents": DOCS})
    assert status == 200 and v2["model"] == cross_engine.model_dir.name
    assert [r["index"] for r in raw] == [r["index"] for r in v2["results"]]
    for r, c in zip(raw, v2["results"], strict=True):
        assert c["relevance_score"] == pytest.approx(1 / (1 + math.exp(-r["score"])), rel=1e-6)
        assert 0 <= c["relevance_score"] <= 1
    # Unscored under a cut budget: the lowest float32 on the raw scale, 0.0 mapped.
    docs = many_docs(6, "cross")
    status, cut, headers = await post(
        client, "/rerank", {"query": QUERY, "texts": docs, "raw_scores": True, "budget_ms": 0.001}
    )
    assert status == 200 and headers["X-Rerank-Partial"] == "true"
    assert all(r["score"] == LOWEST_LOGIT for r in cut)
