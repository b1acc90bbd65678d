"""Every error a client can see, and the one table that maps domain errors to HTTP."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from rerank.errors import InferenceError, ModelLoadError, RerankError
from retrieval.errors import (
    BackendUnavailable,
    IndexMismatch,
    IndexMissing,
    InvalidQuery,
    KnnUnavailable,
    RetrievalError,
    RetrievalTimeout,
    UnsupportedQuery,
)


@dataclass
class ApiError(Exception):
    status: int
    code: str
    message: str
    field: str | None = None


class OverTimeLimit(Exception):
    """A rerank request without a budget could not score every document within the
    server's limit (``--rerank-max-ms``): 503 with Retry-After, never a partial answer."""


class ClientGone(Exception):
    """The client closed the connection before its request was answered: status 499 in the
    metrics and the access log, an INFO line, never a server error."""


# Most specific first: the first matching class wins.
_DOMAIN: list[tuple[type[Exception], int, str]] = [
    (OverTimeLimit, 503, "over_time_limit"),
    (UnsupportedQuery, 422, "unsupported_query"),
    (InvalidQuery, 422, "invalid_query"),
    # Asked for by vector alone where the index holds none: valid, but in conflict with the
    # index as it is (`app embed` resolves it); with lexical queries too, the part is lost.
    (KnnUnavailable, 409, "knn_unavailable"),
    (IndexMissing, 503, "index_missing"),
    (IndexMismatch, 503, "index_mismatch"),
    (RetrievalTimeout, 504, "retrieval_timeout"),
    (BackendUnavailable, 503, "retrieval_unavailable"),
    (RetrievalError, 502, "retrieval_failed"),
    (ModelLoadError, 503, "model_unavailable"),
    (InferenceError, 500, "inference_failed"),
    (RerankError, 500, "scoring_failed"),
]


def from_domain(exc: Exception) -> ApiError | None:
    for cls, status, code in _DOMAIN:
        if isinstance(exc, cls):
            return ApiError(status, code, str(exc), getattr(exc, "field", None))
    return None


def from_validation(exc: ValidationError) -> ApiError:
    """Name the offending field with a JSON-path-like location (``documents[3].text``).

    For union fields pydantic reports one error per branch; a type mismatch on one branch
    is noise when another branch got further, so those are dropped first."""
    errors = exc.errors(include_url=False)
    specific = [e for e in errors if not str(e["type"]).endswith("_type")]
    # The deepest location is the one that names the actual field (``documents[0].text``
    # rather than ``documents[0]``).
    err = max(specific or errors, key=lambda e: len(e["loc"]))
    path = ""
    for part in err["loc"]:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in _BRANCH_LABELS or "[" in part or "-" in part:
            continue  # union branch labels, not fields
        else:
            path += ("." if path else "") + part
    return ApiError(422, "invalid_field", f"{path or 'body'}: {err['msg']}", path or None)


_BRANCH_LABELS = {
    "str",
    "int",
    "float",
    "SubQueryIn",
    "RerankDocument",
    "TextSubQuery",
    "IdsSubQuery",
    "DslSubQuery",
}
