"""Configuration: each default lives once (in its component's section), and the flat flags
and RERANK_* env vars still reach the nested sections."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import build_parser, main
from app.config import Config, HttpConfig, LimitsConfig, env_names, flat_fields, from_sources
from rerank.config import BatchingConfig, EngineConfig, RankingConfig
from rerank.engine import ScoringEngine
from rerank.fusion import fuse
from rerank.ranking import rank
from rerank.text import doc_text, prepare_query
from retrieval.breaker import CircuitBreaker
from retrieval.config import RetrievalConfig
from retrieval.elastic.search import ElasticBackend, make_client


def test_config_sections_are_the_components_defaults() -> None:
    cfg = Config()
    assert cfg.engine == EngineConfig()
    assert cfg.batching == BatchingConfig()
    assert cfg.ranking == RankingConfig()
    assert cfg.retrieval == RetrievalConfig()
    assert cfg.http == HttpConfig()
    assert cfg.limits == LimitsConfig()
    # The values the service has always served with, now in one place each.
    assert cfg.engine.precision == "int8" and cfg.ranking.fusion == "linear"


def _default(fn: object, name: str) -> object:
    return inspect.signature(fn).parameters[name].default  # type: ignore[arg-type]


def test_function_defaults_come_from_the_sections() -> None:
    ranking, retrieval = RankingConfig(), RetrievalConfig()
    for fn in (fuse, rank):
        assert _default(fn, "method") is inspect.Parameter.empty, "fusion is the caller's choice"
        assert _default(fn, "weight") == ranking.fusion_weight
        assert _default(fn, "rrf_k") == ranking.rrf_k
    assert _default(doc_text, "fields") == ranking.doc_fields
    assert _default(prepare_query, "mode") == ranking.query_prep
    assert _default(CircuitBreaker, "threshold") == retrieval.breaker_failures
    assert _default(CircuitBreaker, "cooldown_s") == retrieval.breaker_cooldown_s
    assert _default(make_client, "timeout_s") == retrieval.es_timeout_s
    assert _default(make_client, "connections") == retrieval.es_connections
    assert _default(ElasticBackend, "timeout_s") == retrieval.es_timeout_s


def test_setting_names_are_unique_across_sections() -> None:
    names = [f.name for _, f in flat_fields()]
    assert len(names) == len(set(names))
    assert "RERANK_MAX_LENGTH" in env_names() and "RERANK_ES_URL" in env_names()
    # Batcher tunables are measured constants, not flags.
    assert "RERANK_MARGIN_S" not in env_names()


def test_flags_and_env_reach_their_sections(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["serve", "--max-length", "128", "--es-url", "http://es:9200", "--port", "9000"]
    )
    env = {
        "RERANK_MAX_LENGTH": "64",  # the flag wins
        "RERANK_FUSION": "rrf",
        "RERANK_MAX_QUERY_CHARS": "100",
        "RERANK_BUDGET_MS": "50",
        "RERANK_BATCH_TOKENS": "2048",
        "RERANK_INDEX_DIR": str(tmp_path),
        "RERANK_METRICS_AUTH": "false",
    }
    cfg = from_sources(args, env)
    assert cfg.engine.max_length == 128
    assert cfg.retrieval.es_url == "http://es:9200" and cfg.http.port == 9000
    assert cfg.ranking.fusion == "rrf" and cfg.limits.max_query_chars == 100
    assert cfg.request.budget_ms == 50.0 and cfg.batching.batch_tokens == 2048
    assert cfg.resolved_index_dir == tmp_path and cfg.http.metrics_auth is False
    # Untouched sections keep their defaults.
    assert cfg.retrieval.es_index == RetrievalConfig().es_index


def test_each_section_validates_itself() -> None:
    with pytest.raises(ValueError, match="max_length"):
        EngineConfig(max_length=4)
    with pytest.raises(ValueError, match="fusion_weight"):
        RankingConfig(fusion_weight=2.0)
    with pytest.raises(ValueError, match="es_timeout_s"):
        RetrievalConfig(es_timeout_s=0)
    with pytest.raises(ValueError, match="max_documents"):
        LimitsConfig(max_documents=0)
    with pytest.raises(SystemExit, match="precision"):
        from_sources(env={"RERANK_PRECISION": "fp16"})
    with pytest.raises(SystemExit, match="port"):
        from_sources(env={"RERANK_PORT": "70000"})


def test_help_shows_env_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--max-length MAX_LENGTH" in out
    assert "(env RERANK_MAX_LENGTH; default 256)" in out
    assert "(env RERANK_PRECISION; default int8)" in out


def test_override_by_flat_name() -> None:
    cfg = Config().override(budget_ms=5.0, es_url="http://x", data_dir=Path("/d"))
    assert cfg.request.budget_ms == 5.0 and cfg.retrieval.es_url == "http://x"
    assert cfg.resolved_model_dir == Path("/d/models/all-MiniLM-L6-v2")
    assert cfg.engine_config().model_dir == cfg.resolved_model_dir
    with pytest.raises(TypeError, match="no such setting"):
        Config().override(nope=1)


@pytest.mark.slow
def test_engine_built_from_the_default_section_serves_int8(default_model_dir: Path) -> None:
    eng = ScoringEngine(dataclasses.replace(EngineConfig(), model_dir=default_model_dir))
    try:
        assert eng.precision == "int8" and eng.model.path.name == "model.int8.onnx"
        assert eng.tokenizer.max_length == EngineConfig().max_length
        assert eng.batcher.max_tokens == BatchingConfig().batch_tokens
    finally:
        eng.close()


def test_loading_the_config_loads_no_model_runtime() -> None:
    code = (
        "import sys, app.config; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'onnx', 'onnxruntime', 'tools'}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_offline_commands_say_which_extra_they_need(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "tools.convert", raising=False)
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the tools extra were absent
    with pytest.raises(SystemExit, match=r"pip install -e '\.\[tools\]'"):
        main(["model", "--data-dir", "/nonexistent"])
