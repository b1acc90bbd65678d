"""A static flame graph SVG of sampled stacks, coloured by the category of each frame
(profiles/report.py classifies)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from profiles.report import HTTP, OTHER, SERVICE, Samples, classify

_COLOURS = {
    "infer (ONNX Runtime)": "#e8743b",
    "tokenize (tokenizers)": "#f2c14e",
    "retrieve (tantivy / ES client)": "#5b8def",
    "JSON (orjson)": "#9b6ad6",
    "validation (pydantic)": "#c77dba",
    "logging": "#8fb339",
    "metrics (prometheus_client)": "#3fb8af",
    SERVICE[0]: "#e05656",
    HTTP[0]: "#7f8c8d",
    OTHER: "#bdbdbd",
}


def write_flamegraph(samples: Samples, path: Path, title: str, width: int = 1200) -> None:
    """A static flame graph (root at the bottom, width = samples); hover for the numbers."""
    tree: dict[str, Any] = {"n": 0, "kids": {}}
    for stack, n in samples:
        node = tree
        node["n"] += n
        for f in stack:
            node = node["kids"].setdefault(f, {"n": 0, "kids": {}, "path": []})
            node["n"] += n
    total = max(1, tree["n"])
    row, rects = 16, []
    max_depth = 0

    def walk(node: dict[str, Any], x: float, depth: int, path: list[str]) -> None:
        nonlocal max_depth
        for label, kid in sorted(node["kids"].items()):
            w = kid["n"] / total * width
            if w >= 0.3:
                max_depth = max(max_depth, depth)
                rects.append((x, depth, w, label, kid["n"], classify([label, *path[::-1]])))
                walk(kid, x, depth + 1, [*path, label])
            x += w

    walk(tree, 0.0, 0, [])
    height = (max_depth + 1) * row + 40
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="monospace" font-size="11">',
        f'<text x="4" y="14" font-size="13">{html.escape(title)} ({total} samples)</text>',
    ]
    for x, depth, w, label, n, cat in rects:
        y = height - (depth + 1) * row
        tip = html.escape(f"{label}: {n} samples, {100 * n / total:.1f}% [{cat}]")
        text = html.escape(label[: int(w / 6.6)]) if w > 25 else ""
        out.append(
            f'<g><title>{tip}</title><rect x="{x:.1f}" y="{y}" width="{w:.1f}" '
            f'height="{row - 1}" fill="{_COLOURS.get(cat, "#bdbdbd")}" rx="1"/>'
            + (f'<text x="{x + 2:.1f}" y="{y + 11}">{text}</text>' if text else "")
            + "</g>"
        )
    out.append("</svg>")
    path.write_text("\n".join(out))
