"""Errors the retrieval side raises; the HTTP layer maps them to status codes in one place."""


class RetrievalError(Exception):
    """Base class for retrieval failures."""


class BackendUnavailable(RetrievalError):
    """The backend could not be reached or every chunk of a request failed."""


class BackendTimeout(BackendUnavailable):
    """The backend did not answer within the time it was given (``timeout_s``)."""

    def __init__(self, message: str, timeout_s: float) -> None:
        super().__init__(message)
        self.timeout_s = timeout_s


class IndexMissing(RetrievalError):
    """The configured index does not exist (a wrong --es-index, or nothing built yet)."""


class SetupError(RetrievalError):
    """The configuration points at an index this command cannot or must not use; nothing
    was changed. ``python -m app`` exits 2 on it (app/diagnose.py)."""


class CorpusError(RetrievalError):
    """A corpus file is missing or malformed."""


class RetrievalTimeout(BackendUnavailable):
    """No part of the request's retrieval answered before its deadline."""


class InvalidQuery(RetrievalError):
    """The backend rejected a sub-query as malformed (a query DSL error): the caller's
    fault, not the cluster's. ``field`` names the offending sub-query once the fan-out
    knows which one it was."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class UnsupportedQuery(InvalidQuery):
    """The backend cannot answer this kind of sub-query (the embedded index and DSL)."""


class IndexMismatch(SetupError):
    """The index lacks a field the service is configured to read (``--es-title-field``,
    ``--es-text-field``): a set-up problem, reported at start-up."""


class KnnUnavailable(SetupError):
    """Hybrid retrieval is on but the index cannot answer a vector search: no stored vectors
    carry this model's tag (run ``python -m app embed``), or, on Elasticsearch, the vector
    field is not an indexed ``dense_vector`` (``python -m app migrate`` makes one). A search
    by vector alone fails with it (field ``hybrid``)."""

    field = "hybrid"
