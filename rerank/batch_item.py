"""A queued item of the micro-batcher (``rerank/batcher.py``) and what settles its future."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import numpy as np

from rerank.due import Due
from rerank.errors import InferenceError
from rerank.observe import CallTrace
from rerank.types import ItemResult, Seq

Sink = Callable[[np.ndarray], None]


@dataclass(eq=False)
class Item:
    seq: Seq
    tokens: int  # estimated before tokenising; the cost model is fitted on the same
    due: Due  # shared by the request's items: a search's may still float (rerank/due.py)
    order: int
    group: Hashable  # the request: cut together
    future: asyncio.Future[ItemResult]
    sink: Sink | None
    solo: bool = False  # retried alone after a failed call
    queued_at: float = field(default_factory=time.perf_counter)
    trace: CallTrace | None = None  # the request's tracing handle (None: tracing off)
    deadline: float = math.inf  # ``due`` as of the batcher's last pick


def consume(f: asyncio.Future[ItemResult]) -> None:
    if not f.cancelled():  # results may come after the request stopped listening
        f.exception()  # mark errors as seen


def fail(item: Item, exc: Exception) -> None:
    err = exc if isinstance(exc, InferenceError) else InferenceError(f"inference failed: {exc}")
    if not item.future.done():
        item.future.set_exception(err)
