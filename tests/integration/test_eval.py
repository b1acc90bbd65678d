"""The eval command: same code path as /v1/search, IR metrics from ir-measures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from app.config import Config
from app.evaluate import evaluate
from tests.es_standin import StandIn
from tests.support import SMALL_CORPUS

QUERIES = {
    "q1": ("lift of a wing in a propeller slipstream", "wing"),
    "q2": ("flutter of flat panels in supersonic flow", "panel"),
    "q3": ("heat transfer to blunt bodies", "heat"),
}


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    d = tmp_path / "tiny"
    (d / "qrels").mkdir(parents=True)
    (d / "corpus.jsonl").write_bytes(
        b"".join(
            orjson.dumps({"_id": x.doc_id, "title": x.title, "text": x.text}) + b"\n"
            for x in SMALL_CORPUS
        )
    )
    (d / "queries.jsonl").write_bytes(
        b"".join(orjson.dumps({"_id": q, "text": t}) + b"\n" for q, (t, _) in QUERIES.items())
    )
    (d / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n"
        + "".join(f"{q}\t{doc}\t2\n" for q, (_, doc) in QUERIES.items())
    )
    return d


def _check_shape(report: dict[str, object], n: int) -> None:
    for system in ("retrieval", "model", "fused"):
        assert set(report[system]) == {"ndcg@10", "mrr@10", f"recall@{n}"}  # type: ignore[call-overload]


def test_eval_cli_writes_json(tiny_dataset: Path, tmp_path: Path, default_model_dir: Path) -> None:
    out = tmp_path / "report.json"
    cmd = [
        sys.executable,
        "-m",
        "app",
        "eval",
        "--dataset",
        str(tiny_dataset),
        "--json",
        str(out),
        "--per-query",
        "--data-dir",
        str(tmp_path / "var"),
        "--model-dir",
        str(default_model_dir),
        "--candidates",
        "5",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "fused" in proc.stdout and "q2" in proc.stdout  # table and per-query rows
    report = orjson.loads(out.read_bytes())
    _check_shape(report, 5)
    assert report["queries"] == 3
    assert report["model"]["mrr@10"] == 1.0  # each query's one relevant doc comes first
    assert set(report["per_query"]) == set(QUERIES)


async def test_eval_on_the_es_backend_through_the_standin(
    tiny_dataset: Path, tmp_path: Path, default_model_dir: Path, es_standin: tuple[StandIn, str]
) -> None:
    standin, url = es_standin
    cfg = Config().override(
        es_url=url,
        es_index="tiny",
        data_dir=tmp_path,
        model_dir=default_model_dir,
        candidates=4,
    )
    report = await evaluate(cfg, tiny_dataset, progress=False)
    assert len(standin.docs[standin.aliases["tiny"]]) == len(SMALL_CORPUS)  # it indexed
    _check_shape(report, 4)
    assert report["config"]["backend"] == "elasticsearch"
    assert len(standin.msearch_calls) == 3
    loads = standin.bulk_calls
    assert loads >= 1
    await evaluate(cfg, tiny_dataset, progress=False)  # already indexed: not reloaded
    assert standin.bulk_calls == loads


@pytest.mark.slow
async def test_fused_beats_retrieval_on_a_cranfield_slice(
    cranfield: Path, tmp_path: Path, default_model_dir: Path
) -> None:
    cfg = Config().override(data_dir=tmp_path, model_dir=default_model_dir)
    report = await evaluate(cfg, cranfield, limit=30, progress=False)
    assert report["queries"] == 30
    fused, base = report["fused"]["ndcg@10"], report["retrieval"]["ndcg@10"]
    assert fused > base + 0.02, report


async def test_eval_never_reloads_the_serving_index(
    tiny_dataset: Path, tmp_path: Path, default_model_dir: Path, es_standin: tuple[StandIn, str]
) -> None:
    standin, url = es_standin
    standin.docs["documents"] = {"live": {"title": "serving", "text": "do not touch"}}
    cfg = Config().override(
        es_url=url, data_dir=tmp_path, model_dir=default_model_dir, candidates=3
    )
    await evaluate(cfg, tiny_dataset, progress=False, limit=1)
    assert standin.docs["documents"] == {"live": {"title": "serving", "text": "do not touch"}}
    assert len(standin.docs[standin.aliases["eval-tiny"]]) == len(SMALL_CORPUS)
