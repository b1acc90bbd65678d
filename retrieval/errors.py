"""Errors the retrieval side raises; the HTTP layer maps them to status codes in one place."""


class RetrievalError(Exception):
    """Base class for retrieval failures."""


class BackendUnavailable(RetrievalError):
    """The backend could not be reached or every chunk of a request failed."""


class IndexMissing(RetrievalError):
    """The configured index does not exist (run `python -m app index`)."""


class CorpusError(RetrievalError):
    """A corpus file is missing or malformed."""
