"""Request defaults live in the config sections only (issue 26): a search that leaves a
setting out gets the served config's, and the fusion methods are one Literal."""

from __future__ import annotations

from typing import get_args

from app.config import Config
from app.schemas import SearchRequest
from app.search import SearchParams
from rerank.types import FusionMethod


def test_a_search_without_sizes_gets_the_served_configs() -> None:
    cfg = Config().override(candidates=7, retrieve=30)
    assert SearchParams("q").sized(cfg) == (7, 30)
    assert SearchParams("q", candidates=50).sized(cfg) == (50, 50)  # retrieve >= candidates
    assert SearchParams("q", candidates=5, retrieve=9).sized(cfg) == (5, 9)
    p = SearchParams("q")
    assert p.fusion is None and p.fusion_weight is None  # ranking.fusion, fusion_weight
    assert p.hybrid is None  # retrieval.hybrid


def test_the_fusion_methods_are_written_once() -> None:
    schema = SearchRequest.model_json_schema()["properties"]["fusion"]
    allowed = next(b["enum"] for b in schema["anyOf"] if "enum" in b)
    assert allowed == list(get_args(FusionMethod))
