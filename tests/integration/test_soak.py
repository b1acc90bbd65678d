"""The CI version of profiles/soak.py: the real service as its own process, a few seconds of
steady load after a warm-up; every request answered 200 and RSS growth bounded."""

from __future__ import annotations

import asyncio
from pathlib import Path

from profiles.process import free_port, serve
from profiles.soak import soak


def test_soak_short(default_model_dir: Path, small_index: Path, tmp_path: Path) -> None:
    port = free_port()
    args = ["--model-dir", str(default_model_dir), "--index-dir", str(small_index)]
    args += ["--budget-ms", "200", "--log-level", "WARNING"]
    with serve(args, port, tmp_path) as proc:
        res = asyncio.run(
            soak(
                f"http://127.0.0.1:{port}",
                proc.pid,
                rate=30,
                warmup_s=2.0,
                duration_s=6.0,
                sample_s=1.0,
            )
        )
        assert proc.poll() is None, "the server died under load"
    statuses = res["summary"]["statuses"]
    assert statuses == {"200": 180}, res["summary"]
    assert len(res["rss_mb"]) >= 6
    # A few seconds cannot show a slow leak (the hour-long run does); this catches a fast
    # one: per-request garbage of tens of KiB would add tens of MiB here.
    assert res["rss_growth_pct"] < 10.0, res["rss_mb"]
