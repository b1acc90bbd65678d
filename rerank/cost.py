"""Predicts how long a model call takes, from the calls already made.

``seconds ≈ per_call + per_token · tokens``. The two terms are learnt apart, each as an
exponentially weighted average, so the estimate follows the machine as load or neighbours
change: small calls (a query alone) measure the fixed cost of a call, large calls the cost
of a token once the fixed part is taken off. A single least-squares line over calls that
are nearly all large extrapolates a wild intercept for small ones; this does not.

The batcher uses it to keep each call inside the earliest deadline it serves and to drop
work that can no longer finish in time.
"""

from __future__ import annotations

import threading

SMALL = 64  # tokens: a call this small is mostly fixed cost


class CostModel:
    def __init__(
        self, per_call_s: float = 0.002, per_token_s: float = 1e-4, alpha: float = 0.2
    ) -> None:
        self.per_call_s, self.per_token_s = per_call_s, per_token_s
        self._alpha = alpha
        self._lock = threading.Lock()

    def observe(self, tokens: int, seconds: float) -> None:
        """One model call over ``tokens`` (as estimated before the call) took ``seconds``."""
        if tokens <= 0 or seconds <= 0:
            return
        a = self._alpha
        with self._lock:
            # One slow call (a neighbour had the cores) moves the estimate at most to twice
            # the prediction: otherwise a burst of outliers makes every item look hopeless,
            # nothing runs, and nothing corrects the estimate again.
            seconds = min(seconds, 2.0 * self.predict(tokens))
            if tokens <= SMALL:
                fixed = max(0.0, seconds - self.per_token_s * tokens)
                self.per_call_s += a * (fixed - self.per_call_s)
            else:
                per_token = max(0.0, seconds - self.per_call_s) / tokens
                self.per_token_s += a * (per_token - self.per_token_s)

    def predict(self, tokens: int) -> float:
        return self.per_call_s + self.per_token_s * tokens


__all__ = ["CostModel"]
