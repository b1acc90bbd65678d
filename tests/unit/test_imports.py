"""The layering rules, read from the source: no import cycle among the project's modules
(app/, rerank/, retrieval/, tools/), and rerank/ and retrieval/ never import app/ or
aiohttp.

Every import counts, at module level, inside a function or under ``if TYPE_CHECKING:``: a
lazy import hides a cycle from Python, and a type-only one from the interpreter, but
neither from the reader, who still goes back and forth between the two modules. An import
through ``importlib`` would hide from this walk too: the project has none (checked below).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("app", "rerank", "retrieval", "tools")
# Type-only edges exempt from the cycle check, each with why (a run-time edge is never
# exempt: test_known_exemptions_are_still_needed). Each closes a cycle that only the
# reader walks; the owner of the module named first removes it.
KNOWN: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def imported(tree: ast.AST, module: str, type_only: bool = True) -> set[str]:
    """Every module named by an import anywhere in ``tree`` (``from a import b`` names both
    ``a`` and ``a.b``: ``b`` may be a module); ``type_only=False``: only those imported at
    run time (``if TYPE_CHECKING:`` blocks skipped)."""
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if not type_only and isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            # The project imports absolutely; a relative import would slip past this walk.
            assert node.level == 0 and node.module, f"{module}: relative import"
            base = node.module
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def graph(type_only: bool = True, exempt: bool = True) -> dict[str, set[str]]:
    paths = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    names = {module_name(p) for p in paths}
    edges: dict[str, set[str]] = {}
    for p in paths:
        mod = module_name(p)
        deps = imported(ast.parse(p.read_text(), str(p)), mod, type_only)
        edges[mod] = {
            d for d in deps if d in names and d != mod and not (exempt and (mod, d) in KNOWN)
        }
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (found := dfs(dep)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := dfs(node)) is not None:
            return found
    return None


def test_the_walk_sees_lazy_imports_and_finds_a_cycle() -> None:
    """The checker itself: a cycle hidden in a function body is found."""
    a = ast.parse("import os\ndef f():\n    from app import b\n")
    assert "app.b" in imported(a, "app.a")
    guarded = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import app.b\n")
    assert "app.b" in imported(guarded, "app.a")  # type-only imports count too
    assert "app.b" not in imported(guarded, "app.a", type_only=False)
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_project_modules() -> None:
    edges = graph()
    assert {"app.server", "app.routes", "rerank.engine", "retrieval.fanout"} <= edges.keys()
    backends = {"retrieval.elastic.search", "retrieval.embedded.search"}
    assert {"tools.convert", *backends} <= edges.keys()
    cycle = find_cycle(edges)
    assert cycle is None, " -> ".join(cycle or [])


def test_known_exemptions_are_still_needed() -> None:
    """An exemption outliving its reason would hide a new cycle through the same edge; an
    exempt edge is type-only (a run-time cycle is never exempt)."""
    every, at_run_time = graph(exempt=False), graph(type_only=False, exempt=False)
    for mod, dep in KNOWN:
        assert dep in every[mod], f"{mod} -> {dep}: no longer imported, drop the exemption"
        assert dep not in at_run_time[mod], f"{mod} -> {dep} is imported at run time"
        assert find_cycle({**every, mod: {dep}}) is not None, f"{mod} -> {dep}: no cycle left"


def test_rerank_and_retrieval_import_neither_app_nor_aiohttp() -> None:
    for pkg in ("rerank", "retrieval"):
        for p in sorted((ROOT / pkg).rglob("*.py")):
            deps = imported(ast.parse(p.read_text(), str(p)), module_name(p))
            bad = {d for d in deps if d.split(".")[0] in {"app", "aiohttp"}}
            assert not bad, f"{p.relative_to(ROOT)} imports {sorted(bad)}"


def test_app_http_is_a_leaf() -> None:
    """Every app module may import app/http.py because it imports no other app module at
    run time (``app.logs`` aside, which imports none)."""
    edges = graph(type_only=False)
    assert edges["app.http"] <= {"app.logs"}
    assert edges["app.logs"] == set()


def test_no_module_is_imported_by_name_at_run_time() -> None:
    """``importlib.import_module`` and ``__import__`` hide an edge from the cycle check
    (as ``app/cli.py`` once loaded ``tools.*`` while ``tools/evaluate.py`` imported app/)."""
    for pkg in PACKAGES:
        for p in sorted((ROOT / pkg).rglob("*.py")):
            deps = imported(ast.parse(p.read_text(), str(p)), module_name(p))
            text = p.read_text()
            assert "importlib" not in deps and "__import__(" not in text, p.relative_to(ROOT)


def test_tools_hold_model_tooling_only() -> None:
    """tools/ (the offline model tooling: convert, quantise, check) imports nothing of the
    service: the service's own commands (eval included) live in app/."""
    for p in sorted((ROOT / "tools").rglob("*.py")):
        deps = imported(ast.parse(p.read_text(), str(p)), module_name(p))
        bad = {d for d in deps if d.split(".")[0] in {"app", "retrieval"}}
        assert not bad, f"{p.relative_to(ROOT)} imports {sorted(bad)}"


def test_the_engine_is_at_the_bottom_of_rerank() -> None:
    """The scoring engine knows nothing of requests: nothing it imports, type-only imports
    and their imports included, reaches the per-request scorer, the pipeline, ranking or
    the cold-path helper."""
    edges = graph()
    seen, todo = set(), ["rerank.engine"]
    while todo:
        for dep in edges.get(todo.pop(), ()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    request_level = {"rerank.scorer", "rerank.pipeline", "rerank.ranking", "rerank.cold"}
    assert not seen & request_level, sorted(seen & request_level)
