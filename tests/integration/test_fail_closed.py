"""Start-up fails closed and in one line: a blank key source is an error (never "no
auth"), a flag value out of range or not finite is refused before anything loads, and a
corrupt model file names itself. Real ``python -m app serve`` subprocesses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

CONFIG_EXIT = 2


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "app", "serve", *args, "--port", "0"]
    base = {k: v for k, v in os.environ.items() if not k.startswith("RERANK_API_KEYS")}
    full = {**base, "RERANK_LOG_FORMAT": "text", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT, env=full)


def one_line(res: subprocess.CompletedProcess[str], code: int, *says: str) -> str:
    assert res.returncode == code, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if "error:" in ln]
    assert len(lines) == 1, res.stderr
    assert "Running on" not in res.stdout
    for text in says:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("content", ["", "   \n\n  \t\n"])
def test_blank_key_file_is_a_start_up_error(tmp_path: Path, content: str) -> None:
    keys = tmp_path / "keys"
    keys.write_text(content)
    one_line(serve("--api-keys-file", str(keys)), CONFIG_EXIT, str(keys), "no key")


@pytest.mark.parametrize("content", ["", "  \n"])
def test_blank_metrics_key_file_is_a_start_up_error(tmp_path: Path, content: str) -> None:
    keys = tmp_path / "scrape"
    keys.write_text(content)
    one_line(serve("--metrics-keys-file", str(keys)), CONFIG_EXIT, "metrics_keys_file", "no key")


def test_scrape_keys_with_metrics_open_are_a_start_up_error(tmp_path: Path) -> None:
    """Scrape keys with ``--metrics-auth false`` would be ignored (/metrics open): refused."""
    keys = tmp_path / "scrape"
    keys.write_text("k\n")
    res = serve("--metrics-keys-file", str(keys), "--metrics-auth", "false")
    one_line(res, CONFIG_EXIT, "metrics_keys_file", "metrics_auth")


def test_missing_key_file_is_one_line(tmp_path: Path) -> None:
    keys = tmp_path / "nope"
    one_line(serve("--api-keys-file", str(keys)), CONFIG_EXIT, str(keys), "cannot read")


@pytest.mark.parametrize("value", ["", " ", " , ,"])
def test_blank_api_keys_env_is_a_start_up_error(value: str) -> None:
    one_line(serve(env={"RERANK_API_KEYS": value}), CONFIG_EXIT, "api_keys", "no key")


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--budget-ms", "nan"),
        ("--budget-ms", "inf"),
        ("--budget-ms", "-1"),
        ("--rerank-max-ms", "nan"),
        ("--body-timeout-s", "inf"),
        ("--header-timeout-s", "nan"),
        ("--cache-mb", "nan"),
        ("--es-url", "not-a-url"),
    ],
)
def test_bad_flag_values_are_refused_in_one_line(flag: str, value: str) -> None:
    name = flag.removeprefix("--").replace("-", "_")
    one_line(serve(flag, value), CONFIG_EXIT, name)


def _model_copy(src: Path, data: Path) -> Path:
    dst = data / "models" / "all-MiniLM-L6-v2"
    dst.mkdir(parents=True)
    for name in ("model.int8.onnx", "tokenizer.json", "config.json"):
        shutil.copy(src / name, dst / name)
    return dst


@pytest.mark.parametrize(
    ("name", "garbage"),
    [("tokenizer.json", '{"version": "1.0", "trunc'), ("config.json", "not json at all")],
)
def test_corrupt_model_files_are_named_in_one_line(
    tmp_path: Path, default_model_dir: Path, name: str, garbage: str
) -> None:
    dst = _model_copy(default_model_dir, tmp_path)
    (dst / name).write_text(garbage)
    one_line(serve("--data-dir", str(tmp_path)), CONFIG_EXIT, str(dst / name))
