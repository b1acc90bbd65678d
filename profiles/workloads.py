"""What the runs send: the served workload of the profiles (an embedded index and its
queries), unique query texts cut from a corpus, the reliability runs' fixed search bodies,
and Cranfield's queries and document texts."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from retrieval.types import Hit

ROOT = Path(__file__).resolve().parent.parent
CRANFIELD = ROOT.parent / "shared" / "datasets" / "cranfield"
PY = sys.executable

# Queries on the default corpus (standard-library docstrings).
QUERIES = [
    "sort a list in place",
    "open a file for reading",
    "thread lock acquire release",
    "parse json string",
    "regular expression match groups",
    "current date and time",
    "http request headers",
    "random number between",
    "path exists directory",
    "decode bytes to string",
    "socket connect timeout",
    "subprocess output pipe",
    "iterate dictionary keys values",
    "copy a file",
    "format a decimal number",
    "compress data gzip",
]


@dataclass
class Workload:
    """Queries against an index; ``candidates``: what retrieval returned for each query,
    where a run scores them itself (bench.py: BM25 top-20)."""

    name: str
    index_dir: Path
    queries: list[str]
    candidates: list[list[Hit]] = field(default_factory=list)


def search_payloads(budget_ms: float | None = None) -> list[bytes]:
    extra = {} if budget_ms is None else {"budget_ms": budget_ms}
    return [
        orjson.dumps({"query": q, "subqueries": [QUERIES[(i + 1) % len(QUERIES)]], **extra})
        for i, q in enumerate(QUERIES)
    ]


def cranfield_queries(dataset: Path = CRANFIELD) -> list[str]:
    return [json.loads(line)["text"] for line in (dataset / "queries.jsonl").open()]


def cranfield_texts(dataset: Path = CRANFIELD) -> list[str]:
    """Each document as the rerank routes get it: ``title. text``."""
    docs = [json.loads(line) for line in (dataset / "corpus.jsonl").open()]
    return [f"{d.get('title', '')}. {d['text']}".strip(". ") for d in docs]


def unique_queries(corpus: Path, n: int, seed: int = 0) -> Iterator[str]:
    """``n`` different query texts: windows of 3-7 words at varying offsets of the corpus
    documents, shuffled; no text repeats."""
    docs = []
    with corpus.open() as f:
        for line in f:
            d = json.loads(line)
            words = re.findall(r"[A-Za-z][A-Za-z_]+", f"{d['title']} {d['text']}")
            if len(words) >= 3:
                docs.append(words)
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[str] = []
    for _ in range(n * 20):
        words = rng.choice(docs)
        size = rng.randint(3, 7)
        start = rng.randint(0, max(0, len(words) - size))
        q = " ".join(words[start : start + size]).lower()
        if q not in seen:
            seen.add(q)
            out.append(q)
            if len(out) == n:
                break
    if len(out) < n:
        raise SystemExit(f"only {len(out)} unique queries from {corpus}; fewer/shorter steps")
    return iter(out)


def _run(cmd: Sequence[str]) -> None:
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run(list(map(str, cmd)), cwd=ROOT, check=True)


def indexed(index_dir: Path) -> bool:
    """A built embedded index: the ``current`` pointer, or the older flat layout."""
    return (index_dir / "current").is_file() or (index_dir / "meta.json").is_file()


def prepare(data_dir: Path) -> Workload:
    """The default model and an embedded index; Cranfield queries when ``../shared`` has
    them, else queries cut from the default corpus (standard-library docstrings)."""
    if not (data_dir / "models" / "all-MiniLM-L6-v2" / "model.int8.onnx").is_file():
        _run([PY, "-m", "app", "model", "--data-dir", str(data_dir)])
    if (CRANFIELD / "corpus.jsonl").is_file():
        index_dir = data_dir / "index" / "cranfield"
        if not indexed(index_dir):
            _run(
                [
                    PY,
                    "-m",
                    "app",
                    "index",
                    "--dataset",
                    str(CRANFIELD),
                    "--index-dir",
                    str(index_dir),
                    "--data-dir",
                    str(data_dir),
                ]
            )
        lines = (CRANFIELD / "queries.jsonl").read_text().splitlines()
        return Workload("cranfield", index_dir, [json.loads(x)["text"] for x in lines if x])
    index_dir = data_dir / "index" / "default"
    if not indexed(index_dir):
        _run([PY, "-m", "app", "index", "--default", "--data-dir", str(data_dir)])
    queries = []
    with (data_dir / "corpus" / "stdlib" / "corpus.jsonl").open() as f:
        for line in f:
            words = json.loads(line)["text"].split()[:8]
            if len(words) >= 3:
                queries.append(" ".join(words))
            if len(queries) >= 300:
                break
    return Workload("default corpus (stdlib docstrings)", index_dir, queries)
