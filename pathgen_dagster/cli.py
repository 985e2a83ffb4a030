"""``pathgen``: the command line of the lakehouse (samples, register, run, sql)."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import polars as pl

from pathgen_dagster.profiles import ProfileError, machine_profile


def _lakehouse(args: argparse.Namespace):
    from pathgen_dagster.resources.lakehouse import Lakehouse

    return Lakehouse.from_env(args.lakehouse)


def cmd_samples(args: argparse.Namespace) -> int:
    from pathgen_dagster.lib.ingest.samples import (
        build_benchmark_slide,
        build_landing_zone,
        write_faulty_files,
    )

    started = time.perf_counter()
    build = build_benchmark_slide if args.large else build_landing_zone
    paths = build(Path(args.directory))
    if args.with_faulty:
        paths += write_faulty_files(Path(args.directory))
    for path in paths:
        print(f"{path.stat().st_size:>12,d}  {path}")
    print(f"{len(paths)} files in {time.perf_counter() - started:.1f}s")
    return 0


PROJECT_DAGSTER_YAML = Path(__file__).resolve().parents[1] / "dagster.yaml"


class InstanceSetupError(RuntimeError):
    """DAGSTER_HOME is not usable; the message says what to do."""


def ensure_dagster_home(environ=os.environ) -> Path:
    """The instance folder ``$DAGSTER_HOME``, created with the project's dagster.yaml if new.

    An unset DAGSTER_HOME is refused with the command to set it: Dagster would otherwise
    fall back to a throw-away instance and the UI would never see these runs.
    """
    home = environ.get("DAGSTER_HOME", "").strip()
    if not home:
        raise InstanceSetupError(
            "DAGSTER_HOME is not set. Set it to the instance folder, e.g. "
            "`export DAGSTER_HOME=$PWD/dagster_home` (make register and make ui use that one)"
        )
    path = Path(home)
    config = path / "dagster.yaml"
    if not config.exists():
        if not PROJECT_DAGSTER_YAML.exists():
            raise InstanceSetupError(
                f"DAGSTER_HOME={path} has no dagster.yaml and the project's "
                f"{PROJECT_DAGSTER_YAML} is missing; copy one there"
            )
        path.mkdir(parents=True, exist_ok=True)
        config.write_text(instance_config())
        print(
            f"created the Dagster instance {path} with {PROJECT_DAGSTER_YAML.name} "
            "(runs at once from the machine's profile); "
            "pool limits: run deploy/set_pools.sh (make register does)",
            file=sys.stderr,
        )
    return path


def instance_config() -> str:
    """The project's dagster.yaml with ``max_concurrent_runs`` set to the machine profile's
    slides at once (a run is one slide on about one core; ``pathgen profile``)."""
    text, replaced = re.subn(
        r"^(\s*max_concurrent_runs:) *\d+.*$",
        rf"\g<1> {machine_profile().slides_at_once}  # this machine's profile (pathgen profile)",
        PROJECT_DAGSTER_YAML.read_text(),
        count=1,
        flags=re.MULTILINE,
    )
    if not replaced:
        raise InstanceSetupError(f"{PROJECT_DAGSTER_YAML} sets no concurrency.runs.max_concurrent_runs")
    return text


def _instance():
    import dagster as dg

    ensure_dagster_home()
    return dg.DagsterInstance.get()


def cmd_register(args: argparse.Namespace) -> int:
    from pathgen_dagster.lib.ingest.registry import LINK_ROOTS_ENV
    from pathgen_dagster.sensors import register_landing

    roots = tuple(Path(r) for r in os.environ.get(LINK_ROOTS_ENV, "").split(":") if r.strip())
    with _instance() as instance:
        added, rejected = register_landing(
            instance,
            _lakehouse(args),
            Path(args.landing),
            batch_size=args.batch_size,
            allowed_roots=roots,
        )
        if rejected:
            from assets.slide_errors import slide_errors_observation

            instance.report_runless_asset_event(slide_errors_observation(_lakehouse(args)))
    print(f"registered {len(added)} new slide partitions: {', '.join(added) or '-'}")
    for item in rejected:
        print(f"rejected {item.path.name}: {item.reason}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from pathgen_dagster.partitions import SLIDES_PARTITION
    from pathgen_dagster.runner import quiet_console, run_slides, slide_summary

    quiet_console()
    with _instance() as instance:
        slides = args.slide or instance.get_dynamic_partitions(SLIDES_PARTITION)
        outcomes = run_slides(
            instance,
            slides,
            selection=args.select,
            progress=print,
            isolate=not args.in_process,
            memory_limit_mb=args.memory_limit_mb,
            jobs=args.jobs,
        )
    summary = slide_summary(_lakehouse(args), outcomes)
    with pl.Config(tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=100, tbl_width_chars=200):
        print(summary.drop("error"))
    failed = [o for o in outcomes if not o.success]
    no_pairs = summary.filter(pl.col("status") == "ok").filter(pl.col("pairs") == 0)
    print(f"{len(outcomes) - len(failed)} of {len(outcomes)} slides succeeded")
    for outcome in failed:
        print(f"FAILED {outcome.slide_id}: {outcome.error}")
    for slide_id in no_pairs["slide"].to_list():
        print(f"WARNING {slide_id}: 0 training pairs (see caption_quality for why)")
    if failed and not args.allow_failures:
        return 1
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    import dagster as dg

    from pathgen_dagster import run_health

    with dg.DagsterInstance.get() as instance:
        cleared = run_health.clear_dead_runs(instance) if args.clear_dead else None
        running = run_health.runs_in_progress(instance)
        reruns = run_health.slides_needing_rerun(instance)
    for line in run_health.format_report(running, reruns, cleared):
        print(line)
    return 1 if any(h.state == "dead" for h in running) else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pathgen_dagster.demo import run_demo

    return run_demo(_lakehouse(args))


def cmd_sql(args: argparse.Namespace) -> int:
    import duckdb

    query = args.query if args.query != "-" else sys.stdin.read()
    lakehouse = _lakehouse(args)
    try:
        frame = lakehouse.sql(query)
    except duckdb.Error as error:
        print(f"pathgen sql: {error}", file=sys.stderr)
        for table, columns in _columns_of_tables(lakehouse, query).items():
            print(f"columns of {table}: {', '.join(columns)}", file=sys.stderr)
        return 1
    with pl.Config(tbl_rows=args.max_rows, tbl_cols=-1, fmt_str_lengths=80, tbl_width_chars=200):
        print(frame)
    return 0


def _columns_of_tables(lakehouse, query: str) -> dict[str, list[str]]:
    """Columns of each existing table the query names, for a helpful error."""
    import re

    from pathgen_dagster.lib.schemas import TABLES

    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", query))
    return {
        name: spec.column_names
        for name, spec in TABLES.items()
        if name in words and lakehouse.version(name) is not None
    }


def cmd_export(args: argparse.Namespace) -> int:
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
    with _instance() as instance:
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
    from pathgen_dagster.lineage import (
        PairNotFound,
        format_instruction_lineage,
        format_lineage,
        is_instruction_id,
        trace,
        trace_instruction,
    )

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
        if is_instruction_id(pair_id):
            print(format_instruction_lineage(trace_instruction(lakehouse, pair_id)))
        else:
            print(format_lineage(trace(lakehouse, pair_id)))
    except PairNotFound as error:
        print(f"lineage: {error}", file=sys.stderr)
        return 1
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    profile = machine_profile()
    limits = profile.pool_limits()
    if args.dagster_yaml:
        print(instance_config(), end="")
        return 0
    if args.pools:
        print("\n".join(f"{pool} {limit}" for pool, limit in limits.items()))
        return 0
    print(profile.describe())
    print("pools: " + ", ".join(f"{pool}={limit}" for pool, limit in limits.items()))
    print(f"runs at once (a new instance's max_concurrent_runs): {profile.slides_at_once}")
    print(f"patch_embeddings runs in pool {profile.encoder_pool!r}")
    return 0


def cmd_docs(args: argparse.Namespace) -> int:
    from quality.report import DATA_DOCS_URL_ENV, serve_data_docs

    try:
        with serve_data_docs(_lakehouse(args), host=args.host, port=args.port) as url:
            print(f"great-expectations data docs at {url} (Ctrl-C stops)", flush=True)
            print(
                f"  for links from the checks in the UI: export {DATA_DOCS_URL_ENV}="
                f"{url.removesuffix('/index.html')} before `make ui`",
                flush=True,
            )
            while True:
                time.sleep(3600)
    except FileNotFoundError as error:
        print(f"pathgen docs: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"pathgen docs: cannot listen on {args.host}:{args.port}: {error}; try --port", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
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
    samples.add_argument(
        "--large",
        action="store_true",
        help="write only the benchmark slide instead: 80k x 60k at 40x, ~40%% real H&E tissue",
    )
    samples.set_defaults(func=cmd_samples)

    register = commands.add_parser("register", help="register new landing slides as partitions")
    register.add_argument("--landing", default=os.environ.get("PATHGEN_LANDING", "landing"))
    register.add_argument("--batch-size", type=int, default=500)
    register.set_defaults(func=cmd_register)

    run = commands.add_parser("run", help="materialize assets for slide partitions, slide by slide")
    run.add_argument("--select", default="*", help="Dagster asset selection (default: all)")
    run.add_argument("--slide", action="append", help="slide id (repeat); default: every slide")
    run.add_argument(
        "--allow-failures",
        action="store_true",
        help="exit 0 even when slides failed (default: exit 1 when any slide failed)",
    )
    run.add_argument("--strict", action="store_true", help=argparse.SUPPRESS)  # now the default
    run.add_argument(
        "--in-process",
        action="store_true",
        help="run the slides in this process (faster start; a crash then ends the whole run)",
    )
    run.add_argument(
        "--memory-limit-mb",
        type=int,
        help="cap each slide's process at this many MiB of address space (RLIMIT_AS)",
    )
    run.add_argument(
        "--jobs",
        type=int,
        help="slides at once, each in its own process (default: the machine's profile, "
        "`pathgen profile`; 1 with --in-process)",
    )
    run.set_defaults(func=cmd_run)

    runs = commands.add_parser(
        "runs", help="runs in progress, dead runs (process gone) and slides to re-run"
    )
    runs.add_argument(
        "--clear-dead",
        action="store_true",
        help="mark runs whose process is gone FAILED and free the pool slots they hold",
    )
    runs.set_defaults(func=cmd_runs)

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

    profile = commands.add_parser(
        "profile", help="the machine's profile: slides at once and pool limits (set_pools.sh)"
    )
    profile.add_argument("--pools", action="store_true", help="only 'POOL LIMIT' lines")
    profile.add_argument(
        "--dagster-yaml",
        action="store_true",
        help="the project's dagster.yaml with this machine's runs at once (a new instance's)",
    )
    profile.set_defaults(func=cmd_profile)

    docs = commands.add_parser("docs", help="serve the great-expectations data docs to a browser")
    docs.add_argument("--host", default="127.0.0.1")
    docs.add_argument("--port", type=int, default=3001)
    docs.set_defaults(func=cmd_docs)

    lineage = commands.add_parser(
        "lineage", help="where a pair came from: slide file -> tile -> patch -> ... -> checks"
    )
    lineage.add_argument(
        "pair_id", nargs="?", help="pair or instruction id; omit to trace the first pair"
    )
    lineage.set_defaults(func=cmd_lineage)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (InstanceSetupError, ProfileError) as error:
        print(f"pathgen {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
