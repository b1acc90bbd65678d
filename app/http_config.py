"""The HTTP side's settings: the listener, admission and shedding, connection limits and
timeouts, and who may call (a section of ``app/config.py``'s ``Config``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from rerank.config import check_at_least, opt


@dataclass(frozen=True)
class HttpConfig:
    """The listener: where, how much at once, how it stops, who may call."""

    host: str = opt("127.0.0.1", "address to listen on")
    port: int = opt(8080, "port to listen on")
    max_in_flight: int = opt(
        64,
        "most requests admitted at once to the scoring routes (the bound adapts below it "
        "when searches or reranks come back late); beyond it 503 with Retry-After at once",
    )
    retry_after_s: int = opt(1, "Retry-After seconds sent with 503 and 504 answers")
    queue_target_ms: float = opt(
        10.0,
        "when the oldest search waiting for the embedded index's search thread has waited "
        "longer than this for `--queue-interval-ms` on end, the queue is standing: searches "
        "get 503 + Retry-After at once until it drains",
    )
    queue_interval_ms: float = opt(
        100.0, "how long a queue may wait over `--queue-target-ms` before it is standing"
    )
    shutdown_grace_s: float = opt(
        3.0,
        "after SIGTERM, /readyz answers 503 at once but new connections are accepted this "
        "long (for load balancers to notice), then refused",
    )
    drain_timeout_s: float = opt(
        25.0, "after the grace, how long requests in flight may take before they are cancelled"
    )
    api_keys: str | None = opt(
        None, "comma-separated API keys; unset: no auth; blank: error", secret=True, keep_empty=True
    )
    api_keys_file: Path | None = opt(
        None,
        "file with one API key per line (a mounted secret), added to API_KEYS; blank: error",
    )
    metrics_auth: bool = opt(True, "with API keys set, /metrics needs a key too")
    metrics_keys_file: Path | None = opt(
        None,
        "file with keys (one per line) that open /metrics and nothing else: a scraper's "
        "secret that cannot search; blank: error",
    )
    header_timeout_s: float = opt(
        10.0,
        "request headers must be complete this long after the connection opened (or after "
        "the first byte of the next request); else 408 and the connection is closed (0: off)",
    )
    body_timeout_s: float = opt(
        10.0, "a request body must be read whole this long after its headers; else 408 + close"
    )
    keepalive_timeout_s: float = opt(
        75.0,
        "an idle keep-alive connection is closed after this long (keep it above the load "
        "balancer's idle timeout, e.g. 60 s on AWS ALB)",
    )
    lingering_s: float = opt(
        1.0, "after an early answer (408/413) the unread body is drained this long, then closed"
    )
    max_connections: int = opt(
        1024,
        "open connections on the data port; at the cap the longest-idle keep-alive ones are "
        "closed first, if none: 503 + Retry-After. Keep it well under `ulimit -n`",
    )
    max_connections_per_client: int = opt(
        512, "connections one client address may hold; its idle ones reclaimed first (0: off)"
    )
    write_timeout_s: float = opt(10.0, "a client reading nothing this long is dropped (0: off)")
    write_buffer_bytes: int = opt(
        256 * 1024, "most bytes of answer a connection holds unsent (more: sent as it reads)"
    )
    admin_port: int | None = opt(
        None, "a port serving only probes and /metrics, with its own slots (unset: off)"
    )

    def __post_init__(self) -> None:
        for name in ("port", "admin_port"):  # admin_port None: off
            if not 0 <= (getattr(self, name) or 0) <= 65535:
                raise ValueError(f"{name} must be within 0..65535")
        check_at_least(self, 1, "max_in_flight", "max_connections")
        check_at_least(self, 0, "retry_after_s", "shutdown_grace_s", "drain_timeout_s")
        check_at_least(self, 0, "header_timeout_s", "lingering_s", "write_timeout_s")
        check_at_least(self, 0, "max_connections_per_client")
        check_at_least(self, 0.1, "queue_target_ms", "queue_interval_ms")
        check_at_least(self, 4096, "write_buffer_bytes")
        if not (0 < self.body_timeout_s < math.inf and 0 < self.keepalive_timeout_s < math.inf):
            raise ValueError("body_timeout_s and keepalive_timeout_s must be > 0")
        if self.api_keys is not None and not self.api_keys.replace(",", "").strip():
            # Fail closed: a blank key source must not silently mean "no auth".
            raise ValueError("api_keys is set but holds no key (unset it to run without auth)")
