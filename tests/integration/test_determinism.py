"""A (query, document) pair scores the same whatever else shares its model call.

Micro-batching puts many requests' texts into one call, and a length group pads them to
its longest; a score that moved with its neighbours would reorder close results, break
score thresholds and make page 2 disagree with page 1. int8 with ONNX Runtime's dynamic
quantisation did move (one activation scale for the whole call: ~0.02 measured); the
per-token scales of tools/rowquant.py make each token's numbers its own.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import numpy as np
import pytest

from rerank.cold import score_cold
from rerank.config import EngineConfig
from rerank.engine import ScoringEngine
from rerank.model import ModelKind
from tests.support import SMALL_CORPUS

QUERY = "how does a wing generate lift"
DOC = SMALL_CORPUS[0].text
WORDS = [
    "lift",
    "drag",
    "wing",
    "flow",
    "boundary",
    "layer",
    "pressure",
    "shock",
    "supersonic",
    "heat",
    "transfer",
    "panel",
    "flutter",
    "the",
    "of",
    "a",
    "in",
    "on",
    "with",
    "at",
    "speed",
    "plate",
    "cylinder",
    "vortex",
    "wake",
]


def neighbours(n: int, seed: int) -> list[str]:
    """Texts of many lengths, some as long as ``DOC`` (same length group, same padding)
    and many longer (``DOC`` padded further)."""
    rng = random.Random(seed)
    near = len(DOC.split())
    return [
        " ".join(rng.choices(WORDS, k=rng.choice([near, near + 2, rng.randint(3, 150)])))
        for _ in range(n)
    ]


@pytest.mark.parametrize("precision", ["fp32", "int8"])
@pytest.mark.parametrize("kind", ["bi", "cross"])
def test_a_pair_scores_the_same_whatever_shares_its_call(
    kind: str, precision: str, default_model_dir: Path, minilm_cross_dir: Path
) -> None:
    model_dir = default_model_dir if kind == "bi" else minilm_cross_dir
    config = EngineConfig(model_dir=model_dir, precision=precision, max_length=128, cache_mb=0)
    eng = ScoringEngine(config)
    try:
        assert eng.kind is (ModelKind.BI_ENCODER if kind == "bi" else ModelKind.CROSS_ENCODER)

        async def scores() -> list[float]:
            got = [float((await score_cold(eng, QUERY, [DOC])).scores[0])]
            for seed in range(4):
                docs = neighbours(24, seed)
                at = seed * 5
                res = await score_cold(eng, QUERY, [*docs[:at], DOC, *docs[at:]])
                assert not np.isnan(res.scores).any()
                got.append(float(res.scores[at]))
            return got

        got = asyncio.run(scores())
        # The calls did mix: without shared calls the test would prove nothing.
        assert eng.batcher.calls <= 5 * 2
        assert max(got) - min(got) <= 1e-5, got
    finally:
        eng.close()
