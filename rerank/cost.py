"""Predicts how long a model call takes, from the calls already made.

``seconds ≈ a + b · tokens`` fitted by least squares with exponential forgetting, so the
estimate follows the machine as load, thermal state or the neighbours change. The
batcher uses it to keep each call inside the earliest deadline it serves, and the pipeline
to know how many candidates still fit in a request's budget.
"""

from __future__ import annotations

import threading


class CostModel:
    def __init__(self, per_call_s: float = 0.002, per_token_s: float = 1e-4, decay: float = 0.9):
        self._decay = decay
        self._lock = threading.Lock()
        # Sufficient statistics of weighted least squares; seeded with two pseudo-points on
        # the prior line so the first predictions are sane.
        self._n = self._sx = self._sy = self._sxx = self._sxy = 0.0
        for tokens in (16.0, 1024.0):
            self._add(tokens, per_call_s + per_token_s * tokens)
        self.per_call_s, self.per_token_s = per_call_s, per_token_s

    def _add(self, x: float, y: float) -> None:
        d = self._decay
        self._n = self._n * d + 1.0
        self._sx = self._sx * d + x
        self._sy = self._sy * d + y
        self._sxx = self._sxx * d + x * x
        self._sxy = self._sxy * d + x * y

    def observe(self, tokens: int, seconds: float) -> None:
        """One model call that computed ``tokens`` (padded) tokens in ``seconds``."""
        if tokens <= 0 or seconds <= 0:
            return
        with self._lock:
            self._add(float(tokens), seconds)
            var = self._n * self._sxx - self._sx * self._sx
            if var > 1e-9 * self._n * self._n:
                b = (self._n * self._sxy - self._sx * self._sy) / var
                a = (self._sy - b * self._sx) / self._n
            else:  # calls all of one size: keep the intercept, rescale the slope
                a = self.per_call_s
                b = max(0.0, (self._sy / self._n - a) / max(self._sx / self._n, 1.0))
            # A negative intercept or slope is noise, not physics.
            self.per_call_s = max(0.0, a)
            self.per_token_s = max(b, 1e-9)

    def predict(self, tokens: int) -> float:
        return self.per_call_s + self.per_token_s * tokens


__all__ = ["CostModel"]
