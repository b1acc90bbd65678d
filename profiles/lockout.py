"""Lockout: one client holds 2,000 idle keep-alive connections (one ``GET /healthz`` each,
then silence) while normal traffic and probes go on. Issue 27: this used to lock everyone
out until the keep-alive timeout (75 s).

    .venv/bin/python -m profiles.lockout [--sockets 2000] [--seconds 30] [--root CHECKOUT]

Normal traffic: searches at ``--rps`` on a new connection each (new clients); probes:
``/healthz``, ``/readyz``, ``/metrics`` every 0.5 s, on the admin port when the server has
one (``--admin``), else on the data port. Prints the statuses of each, and how many idle
sockets the server closed. Pass: every normal request and every probe answered 200.
Writes profiles/out/reliability/lockout[-LABEL].json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from profiles.loadgen import OUT
from profiles.process import ROOT, free_port, serve
from profiles.workloads import search_payloads

GET = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


async def status_of(port: int, raw: bytes, timeout_s: float = 5.0) -> str:
    """One request on a new connection: its status, or what went wrong."""
    try:
        async with asyncio.timeout(timeout_s):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            try:
                w.write(raw)
                line = await r.readline()
                return line.split()[1].decode() if line.startswith(b"HTTP/") else "closed"
            finally:
                w.close()
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return type(exc).__name__


Held = list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]


async def hold_idle(port: int, n: int) -> tuple[Held, dict[str, int]]:
    """Open ``n`` connections, one GET each, then keep them open and silent (the writers
    are kept too: a collected StreamWriter closes its connection)."""
    held: Held = []
    opened = {"ok": 0, "refused": 0}
    for _ in range(n):
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(GET)
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await r.readexactly(length)
            ok = head.startswith(b"HTTP/1.1 200")
            opened["ok" if ok else "refused"] += 1
            held.append((r, w))
        except (OSError, TimeoutError, asyncio.IncompleteReadError, IndexError):
            opened["refused"] += 1
    return held, opened


async def run(
    port: int, admin: int | None, sockets: int, seconds: float, rps: float
) -> dict[str, Any]:
    payloads = search_payloads(5000.0)
    normal: dict[str, int] = {}
    probes: dict[str, int] = {}

    async def traffic() -> None:
        end, i, tasks = time.monotonic() + seconds, 0, []

        async def one(body: bytes) -> None:
            raw = (
                b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body
            )
            s = await status_of(port, raw)
            normal[s] = normal.get(s, 0) + 1

        while time.monotonic() < end:
            tasks.append(asyncio.ensure_future(one(payloads[i % len(payloads)])))
            i += 1
            await asyncio.sleep(1 / rps)
        await asyncio.gather(*tasks)

    async def probing() -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for path in ("/healthz", "/readyz", "/metrics"):
                raw = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
                s = await status_of(admin or port, raw)
                probes[s] = probes.get(s, 0) + 1
            await asyncio.sleep(0.5)

    t0 = time.monotonic()
    held, opened = await hold_idle(port, sockets)
    open_s = time.monotonic() - t0
    await asyncio.gather(traffic(), probing())
    closed = sum(1 for r, _ in held if r.at_eof() or r.exception() is not None)
    for _, w in held:
        w.close()
    return {
        "sockets": sockets,
        "idle_opened": opened,
        "open_s": round(open_s, 1),
        "idle_closed_by_server": closed,
        "seconds": seconds,
        "normal": normal,
        "probes": probes,
        "probe_port": "admin" if admin else "data",
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sockets", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--rps", type=float, default=5.0, help="normal searches per second")
    ap.add_argument("--admin", action="store_true", help="serve with --admin-port")
    ap.add_argument("--root", type=Path, default=None, help="serve this checkout's code")
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    port = free_port()
    admin = free_port() if args.admin else None
    flags = ["--log-level", "WARNING", "--data-dir", str(ROOT / "var")]
    if admin is not None:
        flags += ["--admin-port", str(admin)]
    root = (args.root or ROOT).resolve()
    with serve(flags, port, OUT, root=root):
        res = asyncio.run(run(port, admin, args.sockets, args.seconds, args.rps))
    log = (OUT / f"server-{port}.log").read_text(errors="replace").splitlines()
    res["log_lines"] = len(log)
    res["root"] = str(root)
    ok = {"200"}
    res["checks"] = {
        "normal_all_200": set(res["normal"]) <= ok and bool(res["normal"]),
        "probes_all_200": set(res["probes"]) <= ok and bool(res["probes"]),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    name = f"lockout-{args.label}.json" if args.label else "lockout.json"
    (OUT / name).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return 0 if all(res["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
