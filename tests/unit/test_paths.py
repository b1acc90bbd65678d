"""The route table (app/paths.py) and the lists derived from it: the same paths the
modules each wrote by hand before (issue 26)."""

from __future__ import annotations

from app import paths
from app.rerank_shapes import SHAPES


def test_the_lists_derived_from_the_route_table() -> None:
    assert {"/v1/search", "/v1/rerank", "/v2/rerank", "/rerank"} == paths.SCORING_PATHS
    assert {"/healthz", "/readyz", "/metrics"} == paths.QUIET_PATHS
    assert {"/healthz", "/readyz", "/metrics"} == paths.ADMIN_PATHS
    assert {"/healthz", "/readyz", "/openapi.json"} == paths.ALWAYS_OPEN
    assert paths.open_paths(metrics_auth=True) == paths.ALWAYS_OPEN
    assert paths.open_paths(metrics_auth=False) == paths.ALWAYS_OPEN | {"/metrics"}


def test_every_rerank_api_is_a_scoring_route_of_the_table() -> None:
    by_path = {r.path: r for r in paths.ROUTES}
    assert len(by_path) == len(paths.ROUTES)  # each path once
    for shape in SHAPES:
        route = by_path[shape.path]
        assert route.scoring and route.method == "POST" and route.auth == "always"
