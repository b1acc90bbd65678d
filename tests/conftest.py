"""Fixtures shared by the test folders; plain data and helpers are in tests/support.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from app.config import Config
from rerank.config import EngineConfig
from rerank.engine import ScoringEngine
from retrieval.embedded.index import build_index
from retrieval.embedded.search import EmbeddedBackend
from tests.es_standin import StandIn
from tests.noida import noida_index, noida_url  # noqa: F401  (fixtures)
from tests.support import CRANFIELD, SMALL_CORPUS, MakeApp, default_checkpoint, write_model_dir
from tools.convert import convert_checkpoint


@pytest.fixture(scope="session")
def default_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model converted fresh from the packaged weights (not var/), fp32 and int8."""
    from tools.quantize import quantize_int8

    out = convert_checkpoint(default_checkpoint(), tmp_path_factory.mktemp("minilm"))
    quantize_int8(out)
    return out


@pytest.fixture(scope="session")
def minilm_cross_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MiniLM-L6 cross-encoder built here from the packaged weights with a seeded
    one-logit head (tools/crossencoder.py): the real size and cost of the most common
    reranker, fp32 and int8, no download."""
    from tools.crossencoder import build_cross_encoder

    return build_cross_encoder(default_checkpoint(), tmp_path_factory.mktemp("minilm-cross"))


def warm(eng: ScoringEngine) -> None:
    """As serving does before /readyz (which waits for ``engine.ready``); on a thread of its
    own, since the first test to ask for an engine fixture may already run an event loop."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, eng.warm_up(candidates=20)).result()


@pytest.fixture(scope="session")
def engine(default_model_dir: Path) -> Iterator[ScoringEngine]:
    """fp32, not the service's int8: tests compare scores with the reference forward pass
    and with each other across configurations, which int8 approximates (it is independent
    of batch neighbours: tests/integration/test_determinism.py). tests/unit/test_config.py
    checks the int8 default."""
    config = EngineConfig(model_dir=default_model_dir, max_length=256, precision="fp32")
    eng = ScoringEngine(config)
    warm(eng)
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def cranfield() -> Path:
    if not (CRANFIELD / "corpus.jsonl").is_file():
        pytest.skip(f"Cranfield collection not found at {CRANFIELD} (../shared is absent)")
    return CRANFIELD


@pytest.fixture(scope="session")
def cross_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model_dir(tmp_path_factory.mktemp("cross"), "logits")


@pytest.fixture(scope="session")
def tag(engine: ScoringEngine) -> str:
    """The session engine's vector tag: index-time vectors stored with it are used."""
    t = engine.vector_tag("title_text")
    assert t is not None
    return t


@pytest.fixture(scope="session")
def tiny_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScoringEngine]:
    """A bi-encoder with random weights (tests/support.py TINY), int8 as the service serves:
    for tests of HTTP behaviour (status codes, headers, limits, error bodies), which need a
    real engine on the request path but not a good ranking, nor the default model's weights
    or its conversion. Tests that assert an order use ``engine``."""
    model_dir = write_model_dir(tmp_path_factory.mktemp("tiny-bi"), "sentence_embedding")
    eng = ScoringEngine(EngineConfig(model_dir=model_dir, max_length=128, threads=1))
    warm(eng)
    yield eng
    eng.close()


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


@pytest.fixture
async def es_small(es_standin: tuple[StandIn, str]) -> AsyncIterator[tuple[StandIn, str]]:
    """The stand-in holding SMALL_CORPUS as index ``docs``, loaded by the real indexer."""
    from retrieval.elastic.index import index_documents
    from retrieval.elastic.search import make_client

    standin, url = es_standin
    client = make_client(url, timeout_s=10)
    async for _ in index_documents(client, "docs", SMALL_CORPUS):
        pass
    await client.close()
    yield standin, url


@pytest.fixture
def make_app(
    request: pytest.FixtureRequest,
    aiohttp_client: Callable[..., Awaitable[TestClient]],
    small_backend: EmbeddedBackend,
) -> MakeApp:
    """``await make_app(**overrides)``: a test client of the production app (the same
    middleware chain ``serve`` runs) on the session ``engine`` and the small embedded index.
    Overrides are flat config names (``budget_ms=5000``); ``config=`` starts from a given
    config instead of the defaults; ``backend=``, ``engine_=`` (e.g. ``tiny_engine``) and
    ``metrics=`` swap a part. The real ``engine`` is built only when no ``engine_`` is given."""

    async def make(
        *,
        backend: object = None,
        engine_: ScoringEngine | None = None,
        metrics: object = None,
        config: Config | None = None,
        **overrides: object,
    ) -> TestClient:
        from app.server import create_app
        from app.services import Services

        cfg = (config or Config()).override(**overrides)
        eng = engine_ or request.getfixturevalue("engine")
        services = Services(cfg, eng, backend or small_backend)  # type: ignore[arg-type]
        return await aiohttp_client(create_app(cfg, services, metrics))  # type: ignore[arg-type]

    return make
