"""Errors the scoring side raises; the HTTP layer maps them to status codes in one place."""


class RerankError(Exception):
    """Base class for scoring failures."""


class ModelLoadError(RerankError):
    """The model directory is missing, incomplete or of a kind we cannot serve."""


class InferenceError(RerankError):
    """ONNX Runtime failed on a batch; only the requests in that batch are affected."""
