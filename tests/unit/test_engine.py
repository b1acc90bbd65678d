"""The engine with a fake model behind its seam (``rerank.model.Model``): no ONNX Runtime
session, a vector computed from each row's real token ids, and a record of every call. What
the engine does around the model is checked against what the model alone says: outputs
back in input order whatever the length sort and grouping, the same score whatever shares
the call, and cached document vectors that spare the model."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rerank.cold import score_cold
from rerank.config import EngineConfig
from rerank.engine import ScoringEngine
from rerank.model import ModelKind
from rerank.scorer import QueryScorer
from rerank.tokenization import Batch
from rerank.types import Doc
from tests.support import default_checkpoint

DIMS = 16
DOCS = [
    "wing",
    "lift of a wing in a propeller slipstream, measured at several angles of attack " * 4,
    "boundary layer",
    "heat transfer to a blunt body in hypersonic flow, stagnation point " * 2,
    "panel flutter at supersonic speed",
]


class FakeBiEncoder:
    """A bi-encoder without weights: each row's vector counts its real token ids modulo
    ``DIMS`` (padding ignored), L2-normalised. ``rows`` is every row it was given."""

    kind = ModelKind.BI_ENCODER

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[tuple[int, ...]] = []

    def run(self, batch: Batch) -> np.ndarray:
        out = np.zeros((batch.input_ids.shape[0], DIMS), np.float32)
        for r, (ids, mask) in enumerate(zip(batch.input_ids, batch.attention_mask, strict=True)):
            real = tuple(int(i) for i in ids[mask.astype(bool)])
            self.rows.append(real)
            np.add.at(out[r], np.array(real) % DIMS, 1.0)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[tuple[ScoringEngine, FakeBiEncoder]]:
    (tmp_path / "tokenizer.json").write_bytes(
        (default_checkpoint() / "tokenizer.json").read_bytes()
    )
    model = FakeBiEncoder(tmp_path / "tokenizer.json")
    config = EngineConfig(model_dir=tmp_path, max_length=64, threads=1, cache_mb=8)
    engine = ScoringEngine(config, model=model)
    yield engine, model
    engine.close()


def _alone(engine: ScoringEngine, model: FakeBiEncoder, text: str) -> np.ndarray:
    """The fake's vector for one text, run by itself (no engine around it)."""
    out: np.ndarray = model.run(engine.tokenizer.pad(engine.tokenizer.encode_seqs([(text, None)])))
    return out[0]


async def test_scores_come_back_in_document_order_whatever_the_length_grouping(
    fake: tuple[ScoringEngine, FakeBiEncoder],
) -> None:
    engine, model = fake
    query = "wing lift"
    got = await score_cold(engine, query, DOCS, time.monotonic() + 30)
    q = _alone(engine, model, query)
    want = np.array([_alone(engine, model, d) @ q for d in DOCS], np.float32)
    np.testing.assert_allclose(got.scores, want, atol=1e-6)
    # Each alone: the same score whatever else shares the model call.
    for i, d in enumerate(DOCS):
        (one,) = (await score_cold(engine, query, [d])).scores
        assert abs(float(one) - float(want[i])) < 1e-6
    assert got.times.real_tokens > 0 and got.times.padded_tokens >= got.times.real_tokens


async def test_cached_document_vectors_spare_the_model(
    fake: tuple[ScoringEngine, FakeBiEncoder],
) -> None:
    engine, model = fake
    docs = [Doc(f"d{i}", t, cache_id=f"d{i}") for i, t in enumerate(DOCS)]

    async def search(query: str) -> tuple[dict[str, float], int, int]:
        before = len(model.rows)
        scorer = QueryScorer(engine, query, time.monotonic() + 30)
        await scorer.submit(docs)
        await scorer.wait()
        got = scorer.collect()
        scorer.release()
        return got.scores, got.cache_hits, len(model.rows) - before

    first, hits, rows = await search("wing lift")
    assert hits == 0 and rows == len(docs) + 1  # every document, and the query
    again, hits, rows = await search("wing lift")
    assert hits == len(docs) and rows == 1  # the query only
    assert again == pytest.approx(first, abs=1e-6)
    other, hits, rows = await search("heat transfer")
    assert hits == len(docs) and rows == 1
    assert other != pytest.approx(first, abs=1e-6)
