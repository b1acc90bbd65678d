"""Corpora in BEIR layout, and the default one built from the Python standard library.

The default corpus is real English text present on every machine that can run the service
(the docstrings of the installed standard library), so no third-party data is committed.
Sources are parsed with ``ast``; nothing is imported or executed.
"""

from __future__ import annotations

import ast
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import orjson

from retrieval.errors import CorpusError
from retrieval.types import Document


def read_beir_corpus(dataset: Path) -> Iterator[Document]:
    path = dataset / "corpus.jsonl" if dataset.is_dir() else dataset
    if not path.is_file():
        raise CorpusError(f"no corpus.jsonl at {path}")
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
                yield Document(
                    str(row["_id"]), str(row.get("title") or ""), str(row.get("text") or "")
                )
            except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                raise CorpusError(f"{path}:{lineno}: not a BEIR corpus row ({exc})") from exc


def count_lines(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(1 for line in fh if line.strip())


_SKIP_DIRS = {
    "test",
    "tests",
    "idlelib",
    "site-packages",
    "dist-packages",
    "__pycache__",
    "turtledemo",
    "lib2to3",
    "ensurepip",
    "pydoc_data",
}


def stdlib_documents(min_chars: int = 120) -> Iterator[Document]:
    """Module, class and function docstrings of the standard library, one document each."""
    root = Path(sysconfig.get_paths()["stdlib"])
    seen: set[str] = set()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if _SKIP_DIRS.intersection(rel.parts[:-1]) or rel.name.startswith("test_"):
            continue
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, UnicodeDecodeError):
            continue
        for doc in _walk(tree, module, min_chars):
            if doc.doc_id not in seen:
                seen.add(doc.doc_id)
                yield doc


def _walk(tree: ast.Module, module: str, min_chars: int) -> Iterator[Document]:
    stack: list[tuple[ast.AST, str]] = [(tree, module)]
    while stack:
        node, qual = stack.pop()
        doc = ast.get_docstring(node, clean=True)  # type: ignore[arg-type]
        if doc and len(doc) >= min_chars:
            yield Document(qual, qual, " ".join(doc.split()))
        for child in ast.iter_child_nodes(node):
            public = not getattr(child, "name", "_").startswith("_")
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and (
                public or child.name == "__init__"
            ):
                stack.append((child, f"{qual}.{child.name}"))


def write_beir_corpus(docs: Iterator[Document], dataset: Path) -> int:
    dataset.mkdir(parents=True, exist_ok=True)
    n = 0
    tmp = dataset / "corpus.jsonl.tmp"
    with tmp.open("wb") as fh:
        for d in docs:
            fh.write(orjson.dumps({"_id": d.doc_id, "title": d.title, "text": d.text}) + b"\n")
            n += 1
    tmp.replace(dataset / "corpus.jsonl")
    return n


__all__ = [
    "Document",
    "count_lines",
    "read_beir_corpus",
    "stdlib_documents",
    "write_beir_corpus",
]
