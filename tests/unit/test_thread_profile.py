"""`make bench`'s py-spy summary: samples grouped by thread group and category, waiting
workers left out, the event loop's hottest frames (synthetic collapsed stacks)."""

from __future__ import annotations

import pytest

from profiles import report, thread_profile

LOOP = "thread (10): MainThread"
WAIT = "_worker (concurrent/futures/thread.py:81)"  # an executor thread waiting for work


def _samples() -> report.Samples:
    def s(text: str, n: int) -> tuple[list[str], int]:
        return text.split(";"), n

    return [
        s(f"{LOOP};Runner.run (asyncio/runners.py:118)", 50),
        s(f"{LOOP};Runner.run (asyncio/runners.py:118);search (app/routes.py:98)", 20),
        s(f"{LOOP};Runner.run (asyncio/runners.py:118);emit (logging/__init__.py:1113)", 10),
        s("thread (11): scoring_0;run (threading.py:975);Session.run (onnxruntime/x.py:406)", 15),
        s("thread (12): scoring_1;run (threading.py:975);Session.run (onnxruntime/x.py:406)", 5),
        s(f"thread (11): scoring_0;run (threading.py:975);{WAIT}", 400),
        s(f"thread (13): tantivy_0;run (threading.py:975);{WAIT}", 300),
    ]


def test_samples_are_grouped_by_thread_and_waiting_workers_do_not_count() -> None:
    got = thread_profile.summarize(_samples(), top=2)
    assert got["samples"] == 100
    assert list(got["threads"]) == ["event_loop", "scoring"]  # busiest first; tantivy waited
    loop, scoring = got["threads"]["event_loop"], got["threads"]["scoring"]
    assert loop["share"] == pytest.approx(0.8) and scoring["share"] == pytest.approx(0.2)
    assert scoring["categories"] == {"infer (ONNX Runtime)": 1.0}
    assert loop["categories"]["logging"] == pytest.approx(0.125)
    assert loop["categories"]["service Python (app, rerank, retrieval)"] == pytest.approx(0.25)
    frames = got["event_loop_frames"]
    assert [f["frame"] for f in frames] == [
        "Runner.run (asyncio/runners.py:118)",
        "search (app/routes.py:98)",
    ]
    assert frames[0]["share"] == pytest.approx(50 / 80)


def test_the_printed_form_names_the_loop_and_says_when_it_was_skipped() -> None:
    profile = {"rate": 200.0, "variant": "this", **thread_profile.summarize(_samples())}
    text = "\n".join(thread_profile.lines(profile))
    assert "profile at 200 req/s" in text and "| event_loop | 80% |" in text
    assert "uvloop's C loop" in text
    skipped = thread_profile.lines({"skipped": "py-spy is not installed (the dev extra)"})
    assert skipped == ["\nprofile under load skipped: py-spy is not installed (the dev extra)"]
