"""Start-up errors read like a tool's: ``python -m app`` (a real subprocess) prints one line
naming the path and the fix, exits non-zero, and shows the traceback only with ``--debug``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

MODEL = Path("models") / "all-MiniLM-L6-v2"


def run(*args: str, wrap: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [*(wrap or []), sys.executable, "-m", "app", *args, "--port", "0"]
    env = {**os.environ, "RERANK_LOG_FORMAT": "text"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)


def one_line_error(res: subprocess.CompletedProcess[str], *says: str) -> str:
    assert res.returncode == 2, res.stderr  # a set-up error: nothing was done (app/diagnose.py)
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    lines = [ln for ln in res.stderr.splitlines() if "error:" in ln]
    assert len(lines) == 1, res.stderr
    for text in says:
        assert text in lines[0], lines[0]
    return lines[0]


def model_copy(src: Path, data_dir: Path, *names: str) -> Path:
    dst = data_dir / MODEL
    dst.mkdir(parents=True)
    for name in names:
        shutil.copy(src / name, dst / name)
    return dst


def test_missing_model_dir_says_make_model(tmp_path: Path) -> None:
    res = run("serve", "--data-dir", str(tmp_path))
    line = one_line_error(res, str(tmp_path / MODEL), "python -m app model")
    assert "quantize" not in line


def test_only_int8_missing_says_quantize(tmp_path: Path, default_model_dir: Path) -> None:
    model_copy(default_model_dir, tmp_path, "model.onnx", "tokenizer.json", "config.json")
    one_line_error(run("serve", "--data-dir", str(tmp_path)), "python -m app quantize")


def test_truncated_model_names_the_file_and_the_fix(
    tmp_path: Path, default_model_dir: Path
) -> None:
    dst = model_copy(default_model_dir, tmp_path, "tokenizer.json", "config.json")
    (dst / "model.int8.onnx").write_bytes(
        (default_model_dir / "model.int8.onnx").read_bytes()[:50_000]
    )
    one_line_error(
        run("serve", "--data-dir", str(tmp_path)),
        str(dst / "model.int8.onnx"),
        "truncated",
        "python -m app model",
    )
    debug = run("serve", "--data-dir", str(tmp_path), "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_missing_index_says_index(tmp_path: Path, default_model_dir: Path) -> None:
    model_copy(default_model_dir, tmp_path, "model.int8.onnx", "tokenizer.json", "config.json")
    one_line_error(
        run("serve", "--data-dir", str(tmp_path)),
        str(tmp_path / "index" / "default"),
        "python -m app index",
    )


def _read_only(path: Path) -> list[str]:
    """A command prefix that sees ``path`` read-only: chmod for a normal user; for root
    (who writes anyway) a read-only bind mount in a private mount namespace."""
    if os.geteuid() != 0:
        for d in [path, *(p for p in path.rglob("*") if p.is_dir())]:
            d.chmod(0o555)
        return []
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount --bind -o ro {path} {path} && ! touch {path}/x"],
        capture_output=True,
    )
    if probe.returncode != 0:
        pytest.skip("cannot make a read-only directory here (root without mount namespaces)")
    return ["unshare", "-m", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', str(path)]


def test_read_only_data_dir_names_the_path(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    wrap = _read_only(data)
    res = run("index", "--default", "--no-embed", "--data-dir", str(data), wrap=wrap)
    one_line_error(res, str(data / "corpus"), "writable", "--data-dir")


def test_read_only_index_names_the_index(
    tmp_path: Path, default_model_dir: Path, small_index: Path
) -> None:
    data = tmp_path / "data"
    model_copy(default_model_dir, data, "model.int8.onnx", "tokenizer.json", "config.json")
    shutil.copytree(small_index, data / "index" / "default")
    wrap = _read_only(data)
    res = run("serve", "--data-dir", str(data), wrap=wrap)
    one_line_error(res, str(data / "index" / "default"), "writable")
