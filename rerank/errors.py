"""Errors the scoring side raises; the HTTP layer maps them to status codes in one place."""


class RerankError(Exception):
    """Base class for scoring failures."""


class ModelLoadError(RerankError):
    """The model directory is missing, incomplete or of a kind we cannot serve."""


class InferenceError(RerankError):
    """ONNX Runtime failed on a batch; only the requests in that batch are affected."""


class WouldOverrun(RerankError):
    """An all-or-nothing request whose model work, behind what is already queued, is
    predicted to finish past its deadline: refused before it takes the model's time (and
    before its caller waits the whole limit for the same answer)."""

    def __init__(self, predicted_s: float, left_s: float) -> None:
        super().__init__(
            f"predicted {1000 * predicted_s:.0f} ms of model work (the queue ahead and these "
            f"documents) with {1000 * max(0.0, left_s):.0f} ms left"
        )
        self.predicted_s = predicted_s
        self.left_s = left_s
