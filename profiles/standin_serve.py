"""The Elasticsearch stand-in (``tests/es_standin.py``) as a process, for benchmarks: every
``_msearch`` answered after a fixed delay that ``POST /_standin/delay?ms=N`` changes at run
time (a real cluster answers in 10-100 ms; the stand-in shows what that does to the service
without a cluster on the machine).

    .venv/bin/python -m profiles.standin_serve --port 9200 [--delay-ms 30]
"""

from __future__ import annotations

import argparse

from aiohttp import web

from tests.es_standin import StandIn


def build(delay_ms: float) -> web.Application:
    standin = StandIn()
    delay = {"s": delay_ms / 1000.0}
    standin.delay = lambda bodies: delay["s"]

    async def set_delay(request: web.Request) -> web.Response:
        delay["s"] = float(request.query["ms"]) / 1000.0
        return web.json_response({"delay_ms": delay["s"] * 1000.0})

    app = standin.app()
    app.router.add_post("/_standin/delay", set_delay)
    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    args = ap.parse_args()
    web.run_app(build(args.delay_ms), host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
