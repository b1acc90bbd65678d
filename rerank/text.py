"""What text the model sees: which document fields, and how the query is prepared.

Each choice is a config option; the defaults are the ones measured best (docs/QUALITY.md).
"""

from __future__ import annotations

import re
from typing import Protocol

from rerank.config import RankingConfig
from rerank.types import DocFields, QueryPrep

_DEFAULT = RankingConfig()

_TRAILING_PUNCT = re.compile(r"[\s.?!,;:]+$")


class HasFields(Protocol):
    @property
    def title(self) -> str: ...
    @property
    def text(self) -> str: ...


def doc_text(doc: HasFields, fields: DocFields = _DEFAULT.doc_fields) -> str:
    if fields == "text":
        return doc.text or doc.title
    if fields == "title":
        return doc.title or doc.text
    if doc.title and doc.text:
        return f"{doc.title}. {doc.text}"
    return doc.title or doc.text


def prepare_query(query: str, mode: QueryPrep = _DEFAULT.query_prep) -> str:
    """``clean`` collapses whitespace and drops trailing punctuation (as in `` .`` endings)."""
    if mode == "clean":
        return _TRAILING_PUNCT.sub("", " ".join(query.split()))
    return query


__all__ = ["DocFields", "HasFields", "QueryPrep", "doc_text", "prepare_query"]
