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
    """The configured index does not exist (run `python -m app index`)."""


class CorpusError(RetrievalError):
    """A corpus file is missing or malformed."""
