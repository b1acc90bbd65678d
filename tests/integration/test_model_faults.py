"""An ONNX Runtime error on one input fails only the request that sent it (500, with the
request id in the body, header and log), and the engine keeps serving everyone else."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp.test_utils import TestClient

from app.config import Config
from rerank.config import EngineConfig
from rerank.engine import ScoringEngine
from rerank.errors import InferenceError
from rerank.tokenization import Batch
from tests.support import MakeApp


@pytest.fixture
async def faulty(
    make_app: MakeApp,
    default_model_dir: Path,
) -> AsyncIterator[tuple[TestClient, list[int]]]:
    eng = ScoringEngine(
        EngineConfig(model_dir=default_model_dir, precision="fp32", max_length=64, threads=1)
    )
    poison_id = eng.tokenizer.encode_seqs([("zyzzyva", None)])[0].ids[1]
    real_run = eng.model.run
    calls: list[int] = []

    def run(batch: Batch) -> object:
        calls.append(batch.input_ids.shape[0])
        if (batch.input_ids == poison_id).any():
            raise InferenceError("ORT: simulated kernel failure")
        return real_run(batch)

    eng.model.run = run  # type: ignore[method-assign]
    cfg = Config().override(budget_ms=60_000)
    client = await make_app(config=cfg, engine_=eng)
    yield client, calls
    await eng.aclose()


async def test_only_the_poisoned_request_fails(faulty: tuple[TestClient, list[int]]) -> None:
    client, calls = faulty

    async def rerank(docs: list[str]) -> tuple[int, dict[str, object], str]:
        resp = await client.post(
            "/v1/rerank", data=orjson.dumps({"query": "wing lift", "documents": docs})
        )
        return resp.status, await resp.json(), resp.headers["X-Request-ID"]

    good_docs = ["The lift of a wing.", "Pasta with tomato sauce.", "Boundary layers."]
    results = await asyncio.gather(
        rerank(good_docs),
        rerank(["A wing.", "zyzzyva the weevil", "Heat transfer."]),
        rerank(good_docs[::-1]),
    )
    (s1, b1, _), (s2, b2, rid), (s3, b3, _) = results
    assert s1 == 200 and s3 == 200
    assert b1["meta"]["scored"] == b3["meta"]["scored"] == 3  # type: ignore[index]
    assert s2 == 500
    assert b2["error"]["request_id"] == rid  # type: ignore[index]
    # The engine keeps serving afterwards.
    s4, b4, _ = await rerank(good_docs)
    assert s4 == 200 and b4["meta"]["scored"] == 3  # type: ignore[index]
    assert len(calls) >= 2
