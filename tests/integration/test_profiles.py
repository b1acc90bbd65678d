"""Each profile command, in a short mode, from an empty data dir but the model: it builds its
index, serves, loads, stops the service and writes its files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.slow  # the default model, a real server, a few seconds of load


@pytest.fixture
def data_dir(tmp_path: Path, default_model_dir: Path) -> Path:
    models = tmp_path / "data" / "models"
    models.mkdir(parents=True)
    (models / "all-MiniLM-L6-v2").symlink_to(default_model_dir)
    return tmp_path / "data"


def run_profile(module: str, data_dir: Path, out: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", f"profiles.{module}", "--seconds", "3"]
    cmd += ["--concurrency", "2", "--data-dir", str(data_dir), "--out", str(out)]
    return subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, env=dict(os.environ)
    )


def check_report(out: Path) -> str:
    report = (out / "report.md").read_text()
    for heading in ("## Load", "## Wall time per stage", "## CPU by category", "## Top 3"):
        assert heading in report, report
    assert "| retrieve (embedded index / ES wait) |" in report
    hot = report.split("## Top 3 hot spots")[1].split("## Files")[0]
    assert [line[:3] for line in hot.strip().splitlines()] == ["1. ", "2. ", "3. "], hot
    load = json.loads((out / "load.json").read_text())
    assert load["requests"] > 0 and load["errors"] == 0
    assert load["server"]["requests"] == load["requests"]  # /metrics agrees with the client
    return report


def test_cprofile_command_writes_prof_summary_and_report(data_dir: Path, tmp_path: Path) -> None:
    import pstats

    out = tmp_path / "cprofile"
    proc = run_profile("profile_cprofile", data_dir, out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    stats = pstats.Stats(str(out / "serve.prof"))
    names = {func[2] for func in stats.stats}  # type: ignore[attr-defined]
    assert "search" in names and "_call" in names  # the handler (main) and the scoring thread
    summary = (out / "summary.txt").read_text()
    assert "by cumulative time" in summary and "by own time" in summary
    check_report(out)


def test_pyspy_command_writes_flamegraph_speedscope_and_report(
    data_dir: Path, tmp_path: Path
) -> None:
    if shutil.which("py-spy", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("py-spy is not installed (dev extra)")
    out = tmp_path / "pyspy"
    proc = run_profile("profile_pyspy", data_dir, out)
    if proc.returncode != 0 and "could not attach" in proc.stderr + proc.stdout:
        pytest.skip(f"py-spy cannot sample processes here: {proc.stderr[-300:]}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    svg = (out / "flame.svg").read_text()
    assert svg.startswith("<svg") and "samples" in svg and svg.rstrip().endswith("</svg>")
    doc = json.loads((out / "speedscope.json").read_text())
    prof = doc["profiles"][0]
    assert prof["type"] == "sampled" and len(prof["samples"]) == len(prof["weights"]) > 0
    n_frames = len(doc["shared"]["frames"])
    assert all(0 <= i < n_frames for stack in prof["samples"] for i in stack)
    report = check_report(out)
    assert "infer (ONNX Runtime)" in report
