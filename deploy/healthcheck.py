"""Container health check without curl: ``python healthcheck.py [PATH]`` GETs PATH (default
``/healthz``) on the service in this container and exits 0 on HTTP 200, 1 otherwise.

Used by the image's HEALTHCHECK (``/healthz``: the process answers) and by docker-compose
(``/readyz``: model loaded and Elasticsearch reachable). Standard library only.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else "/healthz"
    host = os.environ.get("RERANK_HOST", "")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    # The admin port when there is one: it answers while the data port is saturated.
    port = os.environ.get("RERANK_ADMIN_PORT") or os.environ.get("RERANK_PORT") or "8080"
    url = f"http://{host}:{port}{path}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(url, timeout=float(os.environ.get("HEALTHCHECK_TIMEOUT_S", "2"))) as r:
            ok = r.status == 200
    except (OSError, urllib.error.URLError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
