"""``pathgen``: the command line of the lakehouse (samples, register, run, sql)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import polars as pl


def _lakehouse(args: argparse.Namespace):
    from pathgen_dagster.resources.lakehouse import Lakehouse

    return Lakehouse.from_env(args.lakehouse)


def cmd_samples(args: argparse.Namespace) -> int:
    from pathgen_dagster.lib.ingest.samples import build_landing_zone, write_faulty_files

    started = time.perf_counter()
    paths = build_landing_zone(Path(args.directory))
    if args.with_faulty:
        paths += write_faulty_files(Path(args.directory))
    for path in paths:
        print(f"{path.stat().st_size:>12,d}  {path}")
    print(f"{len(paths)} files in {time.perf_counter() - started:.1f}s")
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    import dagster as dg

    from pathgen_dagster.sensors import register_landing

    with dg.DagsterInstance.get() as instance:
        added, rejected = register_landing(
            instance, _lakehouse(args), Path(args.landing), batch_size=args.batch_size
        )
    print(f"registered {len(added)} new slide partitions: {', '.join(added) or '-'}")
    for item in rejected:
        print(f"rejected {item.path.name}: {item.reason}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import dagster as dg

    from pathgen_dagster.partitions import SLIDES_PARTITION
    from pathgen_dagster.runner import run_slides

    with dg.DagsterInstance.get() as instance:
        slides = args.slide or instance.get_dynamic_partitions(SLIDES_PARTITION)
        outcomes = run_slides(instance, slides, selection=args.select, progress=print)
    failed = [o for o in outcomes if not o.success]
    print(f"{len(outcomes) - len(failed)} of {len(outcomes)} slides succeeded")
    for outcome in failed:
        print(f"FAILED {outcome.slide_id}: {outcome.error}")
    return 1 if failed and args.strict else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pathgen_dagster.demo import run_demo

    return run_demo(_lakehouse(args))


def cmd_sql(args: argparse.Namespace) -> int:
    query = args.query if args.query != "-" else sys.stdin.read()
    frame = _lakehouse(args).sql(query)
    with pl.Config(tbl_rows=args.max_rows, tbl_cols=-1, fmt_str_lengths=80, tbl_width_chars=200):
        print(frame)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import dagster as dg

    from pathgen_dagster.definitions import defs
    from pathgen_dagster.runner import run_whole_dataset

    if args.only:
        # An empty asset selection would run every asset: refuse names that select nothing.
        graph = defs().resolve_asset_graph()
        whole = {
            key.to_user_string()
            for key in graph.get_all_asset_keys()
            if graph.get(key).partitions_def is None and graph.get(key).is_materializable
        }
        unknown = sorted(set(args.only) - whole)
        if unknown:
            print(f"not a whole-dataset asset: {unknown}; known: {sorted(whole)}")
            return 2
    selection = (
        " or ".join(f'key:"{name}"' for name in args.only)
        if args.only
        else 'group:"training_data" or group:"exports"'
    )
    started = time.perf_counter()
    with dg.DagsterInstance.get() as instance:
        result = run_whole_dataset(instance, selection=selection)
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        metadata = materialization.metadata
        count = metadata.get("pairs", metadata.get("dagster/row_count"))
        where = metadata.get("directory")
        print(
            f"{materialization.asset_key.to_user_string():<26} "
            f"{count.value if count else '-':>8} rows" + (f"  {where.value}" if where else "")
        )
    for event in result.all_events:
        if event.is_step_failure:
            print(f"FAILED {event.step_key}: {event.step_failure_data.error.message.strip()}")
    print(f"export run {result.run_id} in {time.perf_counter() - started:.1f}s")
    return 0 if result.success else 1


def cmd_lineage(args: argparse.Namespace) -> int:
    from pathgen_dagster.lineage import PairNotFound, format_lineage, trace

    lakehouse = _lakehouse(args)
    pair_id = args.pair_id
    try:
        if pair_id is None:
            if lakehouse.version("training_pairs") is None:
                raise PairNotFound("training_pairs has never been built; materialize it first")
            pair_id = lakehouse.sql("SELECT min(pair_id) AS pair_id FROM training_pairs")[
                "pair_id"
            ][0]
            if pair_id is None:
                raise PairNotFound("training_pairs is empty")
        print(format_lineage(trace(lakehouse, pair_id)))
    except PairNotFound as error:
        print(f"lineage: {error}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pathgen", description=__doc__)
    parser.add_argument(
        "--lakehouse",
        default=os.environ.get("PATHGEN_LAKEHOUSE", "lakehouse"),
        help="folder of the Delta tables (env PATHGEN_LAKEHOUSE; default ./lakehouse)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    samples = commands.add_parser("samples", help="write the sample slide landing zone")
    samples.add_argument("directory")
    samples.add_argument("--with-faulty", action="store_true", help="also write unreadable files")
    samples.set_defaults(func=cmd_samples)

    register = commands.add_parser("register", help="register new landing slides as partitions")
    register.add_argument("--landing", default=os.environ.get("PATHGEN_LANDING", "landing"))
    register.add_argument("--batch-size", type=int, default=500)
    register.set_defaults(func=cmd_register)

    run = commands.add_parser("run", help="materialize assets for slide partitions, slide by slide")
    run.add_argument("--select", default="*", help="Dagster asset selection (default: all)")
    run.add_argument("--slide", action="append", help="slide id (repeat); default: every slide")
    run.add_argument("--strict", action="store_true", help="exit 1 when any slide fails")
    run.set_defaults(func=cmd_run)

    demo = commands.add_parser("demo", help="run every stage for every slide and summarise")
    demo.set_defaults(func=cmd_demo)

    sql = commands.add_parser("sql", help="DuckDB SQL over every Delta table ('-' reads stdin)")
    sql.add_argument("query")
    sql.add_argument("--max-rows", type=int, default=50)
    sql.set_defaults(func=cmd_sql)

    export = commands.add_parser(
        "export", help="build dataset_stats, quarantine_report and every export of training_pairs"
    )
    export.add_argument(
        "--only", action="append", help="asset to build (repeat), e.g. webdataset_export"
    )
    export.set_defaults(func=cmd_export)

    lineage = commands.add_parser(
        "lineage", help="where a pair came from: slide file -> tile -> patch -> ... -> checks"
    )
    lineage.add_argument("pair_id", nargs="?", help="pair id; omit to trace the first pair")
    lineage.set_defaults(func=cmd_lineage)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
