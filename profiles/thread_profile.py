"""`make bench`'s profile of the served process under load: py-spy attached for one
open-loop step, each thread's busy samples split by category (``profiles/report.py``), and
the event loop's hottest frames. The tables next to it say which thread a rate runs out of;
this says what that thread spends its time on.

Python frames only: ``--native`` stops the process for long enough to change what it
measures at these rates (seen: most requests of a 100 req/s run failed under it). A sample
counts where the thread was not asleep: running, or ready and waiting for a core. So a call
that wakes another thread (an executor's ``submit``, a socket write) weighs more here than
in CPU time, and the event loop's own C work (uvloop: sockets, callbacks, futures handed
between threads) shows as its innermost Python frame, ``Runner.run``.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from app.thread_cpu import group_of
from profiles import report
from profiles.profile_pyspy import pyspy_binary


def start(pid: int, seconds: float, stacks: Path, rate: int) -> subprocess.Popen[bytes] | str:
    """py-spy recording ``pid`` for ``seconds``; a string says why not."""
    exe = pyspy_binary()
    if exe is None:
        return "py-spy is not installed (the dev extra)"
    stacks.unlink(missing_ok=True)
    cmd = [exe, "record", "--pid", str(pid), "--threads", "--nonblocking", "--format", "raw"]
    cmd += ["--rate", str(rate), "--duration", str(max(1, round(seconds))), "-o", str(stacks)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen[bytes], stacks: Path) -> str | None:
    """Waits for py-spy; None when it wrote samples, else why not."""
    _, err = proc.communicate(timeout=120)
    if proc.returncode != 0 or not stacks.is_file():
        last = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        return f"py-spy failed (exit {proc.returncode}): {last[0][:200]}"
    return None


def summarize(samples: report.Samples, top: int = 8) -> dict[str, Any]:
    """Per thread group: its share of the process's samples and of its own by category;
    for the event loop, the innermost Python frames that took most samples."""
    threads: dict[str, Counter[str]] = {}
    loop: report.Samples = []
    for stack, n in report.busy(samples):
        head = stack[0]
        name = head.split(": ", 1)[1] if head.startswith("thread (") and ": " in head else "?"
        group = group_of(name)
        threads.setdefault(group, Counter())[report.classify(stack[::-1])] += n
        if group == "event_loop":
            loop.append((stack, n))
    total = sum(sum(c.values()) for c in threads.values()) or 1
    out: dict[str, Any] = {"samples": total, "threads": {}}
    for group, cats in sorted(threads.items(), key=lambda kv: -sum(kv[1].values())):
        mine = sum(cats.values())
        out["threads"][group] = {
            "share": round(mine / total, 3),
            "categories": {k: round(v / mine, 3) for k, v in cats.most_common()},
        }
    loop_total = sum(n for _, n in loop) or 1
    out["event_loop_frames"] = [
        {"frame": frame, "share": round(n / loop_total, 3), "category": cat}
        for frame, n, cat in report.hot_spots_sampled(loop, top)
    ]
    return out


def lines(profile: dict[str, Any]) -> list[str]:
    """The printed form: one table per thread group, then the loop's hottest frames."""
    if "skipped" in profile:
        return [f"\nprofile under load skipped: {profile['skipped']}"]
    out = [
        f"\nprofile at {profile['rate']:g} req/s ({profile['variant']}, py-spy, "
        f"{profile['samples']} busy samples): share of the samples by thread and category"
    ]
    out += ["| thread | share | categories (share of the thread's samples) |", "|---|---|---|"]
    for group, t in profile["threads"].items():
        cats = ", ".join(f"{k} {100 * v:.0f}%" for k, v in t["categories"].items() if v >= 0.02)
        out.append(f"| {group} | {100 * t['share']:.0f}% | {cats} |")
    out += ["", "event loop: hottest innermost Python frames", "| frame | share | category |"]
    out.append("|---|---|---|")
    for f in profile["event_loop_frames"]:
        frame = f"`{f['frame']}`"
        if f["frame"].startswith("Runner.run ("):
            frame += " (uvloop's C loop: sockets, callbacks, hand-offs between threads)"
        out.append(f"| {frame} | {100 * f['share']:.1f}% | {f['category']} |")
    return out
