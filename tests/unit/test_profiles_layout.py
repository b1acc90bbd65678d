"""profiles/ is a package run as ``python -m profiles.NAME`` from the repository root: no
module reaches for ``sys.path``, and the Makefile starts none of them by file path."""

from __future__ import annotations

import re

from tests.support import ROOT


def test_no_profile_module_edits_sys_path() -> None:
    modules = sorted((ROOT / "profiles").rglob("*.py"))
    assert len(modules) > 20  # the walk found the package
    hacks = [str(p.relative_to(ROOT)) for p in modules if "sys.path" in p.read_text()]
    assert not hacks, f"run these as python -m profiles.NAME instead: {hacks}"


def test_the_makefile_runs_profiles_as_modules() -> None:
    recipes = [x for x in (ROOT / "Makefile").read_text().splitlines() if x.startswith("\t")]
    assert not [x for x in recipes if re.search(r"profiles/\w+\.py", x)]
    modules = [m for x in recipes for m in re.findall(r"-m profiles\.(\w+)", x)]
    assert len(modules) >= 8  # bench (3), bench-cluster, -engine, -peers, quality, profile-*
    for module in modules:
        assert (ROOT / "profiles" / f"{module}.py").is_file(), module
