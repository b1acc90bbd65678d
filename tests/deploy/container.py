"""Run the built image without a Docker engine: ``buildah run`` with chroot isolation (no OCI
runtime, no cgroups), as root, on the vfs store ``make image`` uses. The network is the
host's, so the service's port is reached on loopback. What a runtime adds and buildah run
does not, done here: the image's ENTRYPOINT + CMD as the command (buildah run wants one), a
read-only root filesystem (the container's root bound read-only onto itself in a private
mount namespace, ``buildah run`` inside it) with tmpfs where a manifest mounts an emptyDir,
and the service's own pid to signal (a runtime's PID 1 receives SIGTERM; a SIGTERM to
``buildah run`` kills the command instead)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STORAGE_DRIVER = os.environ.get("STORAGE_DRIVER", "vfs")
ENV = {**os.environ, "BUILDAH_ISOLATION": "chroot"}


def buildah(*args: str) -> list[str]:
    binary = shutil.which("buildah")
    assert binary, "buildah is not installed (apt-get install buildah)"
    return [binary, "--storage-driver", STORAGE_DRIVER, *args]


async def check_output(*args: str, limit_s: float = 120.0) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args, env=ENV, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), limit_s)
    assert proc.returncode == 0, f"{shlex.join(args)}: {err.decode()}"
    return out.decode()


def inspect(image: str) -> dict[str, Any]:
    """``buildah inspect`` of an image (its Docker config holds the HEALTHCHECK)."""
    out = subprocess.run(
        buildah("inspect", "--type", "image", image),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    info: dict[str, Any] = json.loads(out.stdout)
    return info


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    except OSError:
        return []


@dataclass
class Container:
    name: str
    proc: asyncio.subprocess.Process
    argv: list[str]
    lines: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def service_pid(self) -> int | None:
        """The command's own process: the one a runtime would make PID 1 (buildah's chroot
        helpers sit between it and ``buildah run``)."""
        todo, tail = [self.proc.pid], self.argv[1:]
        while todo:
            pid = todo.pop()
            cmd = _cmdline(pid)
            if cmd[1:] == tail and cmd and "buildah" not in cmd[0]:
                return pid
            todo += _children(pid)
        return None

    def ids(self, pid: int) -> tuple[list[str], list[str]]:
        """A process's (real, effective, saved, fs) uids and gids."""
        status = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        )
        return status["Uid"].split(), status["Gid"].split()

    async def exec(self, argv: Sequence[str], env: Mapping[str, str] = {}) -> int:
        """Another command in the same container (as ``docker exec``; the HEALTHCHECK)."""
        flags = [f"--env={k}={v}" for k, v in env.items()]
        proc = await asyncio.create_subprocess_exec(
            *buildah("run", *flags, self.name, "--", *argv), env=ENV
        )
        return await asyncio.wait_for(proc.wait(), 120)


@contextlib.asynccontextmanager
async def run(
    image: str,
    env: Mapping[str, str] = {},
    argv: Sequence[str] | None = None,
    user: str | None = None,
    read_only: bool = False,
    tmpfs: Sequence[str] = (),
) -> AsyncIterator[Container]:
    """A container of ``image`` running ``argv`` (default: its ENTRYPOINT + CMD) with
    ``env`` over the image's ENV; removed on exit (killed first if still running)."""
    info = json.loads(await check_output(*buildah("inspect", "--type", "image", image)))
    config = info["Docker"]["config"]
    if argv is None:
        argv = (config.get("Entrypoint") or []) + (config.get("Cmd") or [])
    name = (await check_output(*buildah("from", "--quiet", image))).strip()
    run_dir = ""
    try:
        flags = [f"--env={k}={v}" for k, v in env.items()]
        flags += [f"--mount=type=tmpfs,destination={p}" for p in tmpfs]
        flags += [f"--user={user}"] if user else []
        run_cmd = buildah("run", *flags, name, "--", *argv)
        if read_only:
            root = (await check_output(*buildah("mount", name))).strip()
            # buildah run creates (and afterwards removes) /run/.containerenv, so /run gets an
            # empty directory of its own: root's, mode 755, as unwritable to the service's user
            # as the read-only root. (Without it buildah 1.28 panics after the command.)
            run_dir = tempfile.mkdtemp(prefix="rerank-run-")
            os.chmod(run_dir, 0o755)
            script = (
                f"mount --bind {root} {root} && mount -o remount,bind,ro {root} && "
                f"mount --bind {run_dir} {root}/run && exec "
            )
            run_cmd = [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                script + shlex.join(run_cmd),
            ]
        proc = await asyncio.create_subprocess_exec(
            *run_cmd,
            env=ENV,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        box = Container(name, proc, list(argv))

        async def keep_reading() -> None:
            assert proc.stdout is not None
            async for raw in proc.stdout:
                box.lines.append(raw.decode(errors="replace").rstrip())

        box.reader = asyncio.create_task(keep_reading())
        try:
            yield box
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
                await proc.wait()
            await box.reader
    finally:
        await check_output(*buildah("rm", name))
        if run_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
