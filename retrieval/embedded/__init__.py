"""The embedded tantivy backend behind ``retrieval/backend.py``'s protocols, opened only by
``retrieval/factory.py``: ``search`` (BM25 on disk), ``dsl`` (the query DSL subset),
``index`` (builds and vectors), ``layout`` (builds behind a ``current`` pointer)."""
