"""Candidate retrieval: Elasticsearch or the embedded BM25 index, sub-query dedup and chunking."""
