"""py-spy sampling of the live serving process under load (``make profile-pyspy``).

    .venv/bin/python -m profiles.profile_pyspy [--seconds 20] [--concurrency 4] [--rate 100]

The service starts as it runs in production (no profiler inside it); once it is ready,
``py-spy record --pid`` attaches for the load window only, with ``--native`` so that the
frames of ONNX Runtime, tokenizers and tantivy show under the Python call that entered them.
Attaching needs ptrace rights (root with CAP_SYS_PTRACE, or ptrace_scope 0). When that is
refused, py-spy launches the service itself instead (a child may be traced), and startup is
then part of the samples. When ``--native`` fails, it retries without it. Both are said in
the report.

Writes to profiles/out/pyspy/: ``stacks.txt`` (collapsed stacks, flamegraph.pl input),
``flame.svg``, ``speedscope.json`` (https://www.speedscope.app), ``report.md``, ``load.json``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from profiles import flame, harness, loadgen, report, workloads
from profiles.process import free_port


def pyspy_binary() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.is_file() else shutil.which("py-spy")


class Recorder:
    """``py-spy record`` attached to a running pid, stopped with SIGINT (it then writes)."""

    def __init__(self, exe: str, stacks: Path, rate: int, log: Path) -> None:
        self.exe, self.stacks, self.rate, self.log = exe, stacks, rate, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.native = True
        self.notes: list[str] = []

    def _cmd(self, pid: int, native: bool) -> list[str]:
        cmd = [self.exe, "record", "--pid", str(pid), "--format", "raw", "--threads"]
        cmd += ["--rate", str(self.rate), "--output", str(self.stacks)]
        return [*cmd, "--native"] if native else cmd

    def start(self, server: subprocess.Popen[bytes]) -> None:
        for native in (True, False):
            with self.log.open("ab") as log:
                self.proc = subprocess.Popen(
                    self._cmd(server.pid, native), stdout=log, stderr=subprocess.STDOUT
                )
            time.sleep(2.0)  # attaching, or failing to, takes well under that
            if self.proc.poll() is None:
                self.native = native
                if not native:
                    self.notes.append("`--native` failed here: Python frames only.")
                return
        raise PermissionError(f"py-spy could not attach; see {self.log}")

    def stop(self, server: subprocess.Popen[bytes]) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(60)


def stop_children(parent: subprocess.Popen[bytes]) -> None:
    """SIGINT the service py-spy launched and wait for it: py-spy then writes and exits."""
    pids = []
    for task in Path(f"/proc/{parent.pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            pids += [int(p) for p in (task / "children").read_text().split()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + 60
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)


def main() -> int:
    ap = harness.common_args(__doc__.splitlines()[0])
    ap.add_argument("--rate", type=int, default=100, help="samples per second (100)")
    args = ap.parse_args()
    args.data_dir = args.data_dir.resolve()
    exe = pyspy_binary()
    if exe is None:
        print("py-spy is not installed: pip install -e '.[dev]'", file=sys.stderr)
        return 2
    out = args.out or harness.OUT / "pyspy"
    out.mkdir(parents=True, exist_ok=True)
    stacks = out / "stacks.txt"
    stacks.unlink(missing_ok=True)
    (out / "py-spy.log").unlink(missing_ok=True)
    machine = loadgen.machine()
    wl = workloads.prepare(args.data_dir)
    port = free_port()
    serve = harness.serve_args(args.data_dir, wl, port, args.serve_arg)
    rec = Recorder(exe, stacks, args.rate, out / "py-spy.log")
    try:
        cmd = [harness.PY, "-m", "app", *serve]
        summary = harness.load_and_save(
            cmd, port, out, wl, args, on_ready=rec.start, on_done=rec.stop
        )
    except PermissionError as exc:
        print(f"{exc}; launching the service under py-spy instead", file=sys.stderr)
        rec.notes.append(
            "py-spy could not attach to a running process here: it launched the service "
            "itself, so startup (imports, model load) is in the samples."
        )
        cmd = [exe, "record", "--format", "raw", "--threads", "--native", "--rate"]
        cmd += [str(args.rate), "--output", str(stacks), "--", harness.PY, "-m", "app", *serve]
        summary = harness.load_and_save(cmd, port, out, wl, args, on_done=stop_children)
    if not stacks.is_file():
        print(f"py-spy wrote no samples; see {out / 'py-spy.log'}", file=sys.stderr)
        return 1

    samples = report.read_collapsed(stacks)
    busy = report.busy(samples)
    total = sum(n for _, n in samples)
    n_busy = sum(n for _, n in busy)
    title = "py-spy --native" if rec.native else "py-spy"
    flame.write_flamegraph(busy, out / "flame.svg", f"{title}: rerank-service under load, busy")
    report.write_speedscope(samples, out / "speedscope.json", "rerank-service")
    hot = [
        f"`{frame}` [{cat}]: {n} samples ({100 * n / max(1, n_busy):.1f}% of busy samples)"
        for frame, n, cat in report.hot_spots_sampled(samples)
    ]
    report.write_report(
        out / "report.md",
        title=f"Sampling profile ({title}) of the serving process",
        machine=machine,
        intro=(
            f"{args.rate} samples/s of every thread of the live process during the load "
            "window, with native frames: each sample is charged to the innermost library it "
            "is in (ONNX Runtime, tokenizers, tantivy, orjson, pydantic...), else to our "
            "code, else to the HTTP server and event loop. Threads blocked in epoll, on a "
            "lock or on an empty queue are idle and left out."
        ),
        summary=summary,
        wl_name=wl.name,
        n_queries=len(wl.queries),
        cpu=report.category_table(
            report.categories_of(busy), f"busy samples ({n_busy} of {total})"
        ),
        hot=hot,
        files=[
            "`flame.svg`: flame graph of the busy samples (open in a browser; hover for counts)",
            "`speedscope.json`: every sample, idle included: load in https://www.speedscope.app",
            "`stacks.txt`: collapsed stacks (flamegraph.pl input)",
            "`load.json`: the load and the /metrics deltas; `server.log`: the JSON log",
        ],
        notes=rec.notes,
    )
    print(f"wrote {out}/report.md, flame.svg, speedscope.json")
    print((out / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
