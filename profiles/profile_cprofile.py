"""cProfile of the serving process under load (``make profile-cprofile``).

    .venv/bin/python -m profiles.profile_cprofile [--seconds 20] [--concurrency 4]

Writes to profiles/out/cprofile/: ``serve.prof`` (``python -m pstats``, snakeviz),
``summary.txt`` (top functions by cumulative and by own time), ``report.md``, ``load.json``.
cProfile is deterministic: it times every Python call, which slows Python-heavy code down
(compare the req/s with the py-spy run); the shares by category are by own time.
"""

from __future__ import annotations

import io
import pstats
import signal
import sys
from collections import Counter

from profiles import harness, loadgen, report, workloads
from profiles.process import free_port


def label(func: tuple[str, int, str]) -> str:
    file, line, name = func
    if file == "~" and line == 0:
        return name  # a builtin: "{method 'run' of '...InferenceSession' objects}"
    return f"{name} ({_short(file)}:{line})"


def _short(file: str) -> str:
    for marker in ("site-packages/", "/lib/python3.", str(harness.ROOT) + "/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return file


def main() -> int:
    args = harness.common_args(__doc__.splitlines()[0]).parse_args()
    args.data_dir = args.data_dir.resolve()
    out = args.out or harness.OUT / "cprofile"
    out.mkdir(parents=True, exist_ok=True)
    machine = loadgen.machine()
    wl = workloads.prepare(args.data_dir)
    port = free_port()
    prof_path = out / "serve.prof"
    prof_path.unlink(missing_ok=True)
    cmd = [
        harness.PY,
        "-m",
        "profiles.cprofile_serve",
        str(prof_path),
        *harness.serve_args(args.data_dir, wl, port, args.serve_arg),
    ]
    summary = harness.load_and_save(
        cmd,
        port,
        out,
        wl,
        args,
        on_ready=lambda p: p.send_signal(signal.SIGUSR1),
        on_done=lambda p: p.send_signal(signal.SIGUSR2),
    )
    if not prof_path.is_file():
        print(f"no profile written; see {out / 'server.log'}", file=sys.stderr)
        return 1

    stats = pstats.Stats(str(prof_path))
    buf = io.StringIO()
    stats.stream = buf  # type: ignore[attr-defined]
    stats.strip_dirs()
    buf.write("== top 40 by cumulative time ==\n")
    stats.sort_stats("cumulative").print_stats(40)
    buf.write("\n== top 40 by own time (tottime) ==\n")
    stats.sort_stats("tottime").print_stats(40)
    (out / "summary.txt").write_text(buf.getvalue())

    raw = pstats.Stats(str(prof_path)).stats  # type: ignore[attr-defined]
    own: Counter[str] = Counter()
    ranked = []
    for func, (_cc, calls, tottime, cumtime, _callers) in raw.items():
        lab = label(func)
        if report.is_idle(lab):
            continue
        own[report.classify([func[0] + " " + lab])] += tottime
        ranked.append((tottime, cumtime, calls, lab))
    ranked.sort(reverse=True)
    busy = sum(own.values())
    hot = [
        f"`{lab}`: {t:.2f} s own time ({100 * t / busy:.1f}% of busy CPU), {c} calls, "
        f"{cum:.2f} s cumulative"
        for t, cum, c, lab in ranked[:3]
    ]
    report.write_report(
        out / "report.md",
        title="cProfile of the serving process",
        machine=machine,
        intro=(
            "Deterministic profile of every Python call: the main thread (event loop, HTTP, "
            "JSON, validation, ranking) during the load window, and the scoring and retrieval "
            "threads from their start. Native work (ONNX Runtime, tokenizers, tantivy, orjson) "
            "shows as the own time of the builtin that calls it. cProfile's overhead makes "
            "Python-heavy parts look bigger than they are: read the py-spy report for "
            "proportions, this one for call counts and call paths."
        ),
        summary=summary,
        wl_name=wl.name,
        n_queries=len(wl.queries),
        cpu=report.category_table(own, f"busy own time ({busy:.2f} s, idle waits excluded)"),
        hot=hot,
        files=[
            f"`{prof_path.name}`: `python -m pstats {prof_path}` or `snakeviz {prof_path}`",
            "`summary.txt`: top 40 by cumulative and by own time",
            "`load.json`: the load and the /metrics deltas; `server.log`: the JSON log",
        ],
    )
    print(f"wrote {out}/report.md, summary.txt, serve.prof")
    print((out / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
