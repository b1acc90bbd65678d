"""The subset of Elasticsearch's query DSL the embedded index answers: ``bool``
(must/should/filter/must_not), ``match``, ``multi_match``, ``term``, ``terms``, ``ids`` and
``match_all``, on its fields ``title`` and ``text`` (and ``_id``). Anything else is an
``UnsupportedQuery`` naming the construct, never a silent approximation.

Text in ``match``/``multi_match`` goes through the index's analyzer into term queries, as
plain-text sub-queries do; ``term``/``terms`` take values as indexed tokens (as in
Elasticsearch, a ``term`` on an analysed field matches one token, lower-cased and stemmed).
"""

from __future__ import annotations

from typing import Any

import tantivy

from retrieval.errors import UnsupportedQuery

TEXT_FIELDS = ("title", "text")  # the embedded index's text fields (index.py's schema)
SUPPORTED = "bool, match, multi_match, term, terms, ids, match_all"
_ID_FIELDS = {"_id": "doc_id", "doc_id": "doc_id"}


class Translator:
    """Turns one DSL query object into a tantivy query for the embedded schema."""

    def __init__(self, schema: tantivy.Schema, analyzer: tantivy.TextAnalyzer) -> None:
        self._schema, self._analyzer = schema, analyzer

    def translate(self, query: Any) -> tantivy.Query:
        if not isinstance(query, dict) or len(query) != 1:
            raise UnsupportedQuery("a query object must have exactly one key (its type)")
        ((kind, spec),) = query.items()
        build = getattr(self, f"_{kind}", None) if kind in SUPPORTED.split(", ") else None
        if build is None:
            raise UnsupportedQuery(
                f"the embedded index does not support `{kind}` queries (it supports: "
                f"{SUPPORTED}; or use --es-url)"
            )
        out: tantivy.Query = build(spec)
        return out

    # --- leaves ----------------------------------------------------------------------
    def _field(self, name: Any, text_only: bool = False) -> str:
        if name in TEXT_FIELDS:
            return str(name)
        if not text_only and name in _ID_FIELDS:
            return _ID_FIELDS[name]
        raise UnsupportedQuery(
            f"the embedded index has no field {name!r} (fields: {', '.join(TEXT_FIELDS)}"
            + ("" if text_only else ", _id")
            + ")"
        )

    def _text(
        self, fields: list[tuple[str, float]], text: Any, operator: Any, kind: str = "best_fields"
    ) -> tantivy.Query:
        if not isinstance(text, str):
            raise UnsupportedQuery("match text must be a string")
        if operator not in (None, "or", "OR", "and", "AND"):
            raise UnsupportedQuery(f"unknown operator {operator!r}")
        terms = self._analyzer.analyze(text)
        if not terms:
            return tantivy.Query.empty_query()
        occur = tantivy.Occur.Must if str(operator).lower() == "and" else tantivy.Occur.Should
        per_field = []
        for field, boost in fields:
            q = tantivy.Query.boolean_query(
                [(occur, tantivy.Query.term_query(self._schema, field, t)) for t in terms]
            )
            per_field.append(q if boost == 1.0 else tantivy.Query.boost_query(q, boost))
        if len(per_field) == 1:
            return per_field[0]
        if kind == "most_fields":  # the fields' scores add up
            return tantivy.Query.boolean_query([(tantivy.Occur.Should, q) for q in per_field])
        return tantivy.Query.disjunction_max_query(per_field)  # best_fields, as ES's default

    def _match(self, spec: Any) -> tantivy.Query:
        if not isinstance(spec, dict) or len(spec) != 1:
            raise UnsupportedQuery("`match` takes one field")
        ((name, body),) = spec.items()
        body = body if isinstance(body, dict) else {"query": body}
        _only(body, {"query", "operator", "boost"}, "match")
        boost = _boost(body)
        return self._text(
            [(self._field(name, True), boost)], body.get("query"), body.get("operator")
        )

    def _multi_match(self, spec: Any) -> tantivy.Query:
        if not isinstance(spec, dict):
            raise UnsupportedQuery("`multi_match` takes an object")
        _only(spec, {"query", "fields", "operator", "type", "boost"}, "multi_match")
        kind = spec.get("type", "best_fields")
        if kind not in ("best_fields", "most_fields"):
            raise UnsupportedQuery("`multi_match` supports types best_fields and most_fields only")
        given = spec.get("fields")
        if given is not None and not isinstance(given, list):
            raise UnsupportedQuery("`multi_match.fields` takes an array of field names")
        fields = []
        for raw in given or list(TEXT_FIELDS):
            name, _, weight = str(raw).partition("^")
            try:
                fields.append((self._field(name, True), float(weight) if weight else 1.0))
            except ValueError as exc:
                raise UnsupportedQuery(f"bad field boost {raw!r}") from exc
        q = self._text(fields, spec.get("query"), spec.get("operator"), kind)
        boost = _boost(spec)
        return q if boost == 1.0 else tantivy.Query.boost_query(q, boost)

    def _term(self, spec: Any) -> tantivy.Query:
        if not isinstance(spec, dict) or len(spec) != 1:
            raise UnsupportedQuery("`term` takes one field")
        ((name, body),) = spec.items()
        value = body.get("value") if isinstance(body, dict) else body
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise UnsupportedQuery("`term` takes a string or number value")
        return tantivy.Query.term_query(self._schema, self._field(name), str(value))

    def _terms(self, spec: Any) -> tantivy.Query:
        if not isinstance(spec, dict) or len(spec) != 1:
            raise UnsupportedQuery("`terms` takes one field")
        ((name, values),) = spec.items()
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise UnsupportedQuery("`terms` takes a list of strings")
        return tantivy.Query.term_set_query(self._schema, self._field(name), values)

    def _ids(self, spec: Any) -> tantivy.Query:
        values = spec.get("values") if isinstance(spec, dict) else None
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise UnsupportedQuery('`ids` takes {"values": [strings]}')
        return tantivy.Query.term_set_query(self._schema, "doc_id", values)

    def _match_all(self, spec: Any) -> tantivy.Query:
        return tantivy.Query.all_query()

    # --- bool ------------------------------------------------------------------------
    def _bool(self, spec: Any) -> tantivy.Query:
        if not isinstance(spec, dict):
            raise UnsupportedQuery("`bool` takes an object")
        _only(spec, {"must", "should", "filter", "must_not"}, "bool")
        clauses: list[tuple[tantivy.Occur, tantivy.Query]] = []
        for key, occur in (
            ("must", tantivy.Occur.Must),
            ("should", tantivy.Occur.Should),
            ("filter", tantivy.Occur.Must),
            ("must_not", tantivy.Occur.MustNot),
        ):
            parts = spec.get(key, [])
            for part in parts if isinstance(parts, list) else [parts]:
                q = self.translate(part)
                if key == "filter":  # matches, does not score
                    q = tantivy.Query.const_score_query(q, 0.0)
                clauses.append((occur, q))
        if not any(o in (tantivy.Occur.Must, tantivy.Occur.Should) for o, _ in clauses):
            clauses.append((tantivy.Occur.Must, tantivy.Query.all_query()))  # ES: must_not alone
        return tantivy.Query.boolean_query(clauses)


def _only(spec: dict[str, Any], allowed: set[str], kind: str) -> None:
    extra = sorted(set(spec) - allowed)
    if extra:
        raise UnsupportedQuery(
            f"the embedded index does not support {', '.join(map(repr, extra))} in `{kind}`"
        )


def _boost(spec: dict[str, Any]) -> float:
    boost = spec.get("boost", 1.0)
    if not isinstance(boost, int | float) or isinstance(boost, bool) or boost < 0:
        raise UnsupportedQuery("`boost` must be a non-negative number")
    return float(boost)


__all__ = ["SUPPORTED", "Translator"]
