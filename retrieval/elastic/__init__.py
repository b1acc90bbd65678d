"""The Elasticsearch backend behind ``retrieval/backend.py``'s protocols, opened only by
``retrieval/factory.py``: ``search`` (``_msearch``), ``index`` (rebuild behind an alias),
``embed`` (vectors added in place), ``mapping`` (what a mapping says), ``migrate`` (a
team's index copied with vectors)."""
