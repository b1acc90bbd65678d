"""The CI version of profiles/fuzz.py: two hundred requests generated from the service's
own /openapi.json and mutated, against a real server on loopback: no 5xx, errors in shape."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from aiohttp import web

from app.config import Config
from app.server import create_app
from app.services import Services
from profiles.fuzz import Tally, fuzz
from profiles.process import free_port
from rerank.engine import ScoringEngine
from retrieval.embedded.search import EmbeddedBackend


@pytest.fixture
def served(tiny_engine: ScoringEngine, small_backend: EmbeddedBackend) -> Iterator[str]:
    """The app on its own loop in a thread: hypothesis drives plain blocking calls. What is
    fuzzed is the handling of input, so the random-weight engine serves (not make_app: that
    is a client on the test's loop)."""
    cfg = Config().override(max_doc_chars=4000)
    app = create_app(cfg, Services(cfg, tiny_engine, small_backend))
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    port = free_port()
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.run_until_complete(runner.cleanup())
        loop.run_until_complete(tiny_engine.batcher.close())  # its task runs on this loop
        loop.close()


def test_fuzz_short(served: str) -> None:
    tally = Tally()
    fuzz(served, 200, derandomize=True, tally=tally)
    assert tally.sent >= 200
    # Every 5xx but a deadline too small to retrieve in (504 retrieval_timeout) failed fuzz().
    assert not any(s >= 500 and s != 504 for s in tally.statuses), tally.statuses
    assert tally.statuses[504] == tally.codes["retrieval_timeout"]
    # The generator reaches both sides of the contract: accepted and rejected bodies.
    assert tally.statuses[200] > 20 and tally.statuses[422] > 20, tally.statuses
    assert tally.statuses[400] > 0
