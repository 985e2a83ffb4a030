"""Launch (and optionally wait for) an asset backfill on a running Dagster webserver.

The command-line twin of the UI's "Materialize all > All > Launch backfill": one asset
backfill over slide partitions, through the same GraphQL mutation the UI sends, with
Dagster's Python client. The daemon (`dagster dev` runs one) then launches one run per
slide, queued and pool-limited by the instance configuration; unpartitioned assets
(exports, SQL models) run once, after the slides.

    .venv/bin/python scripts/ui/backfill.py                       # every asset, every slide
    .venv/bin/python scripts/ui/backfill.py --select 'group:ingest' --partitions a,b --wait
    .venv/bin/python scripts/ui/backfill.py --missing-only --url http://host:3000

`dagster asset materialize --partition ID` runs one slide in-process instead, and
`dagster job backfill -j __ASSET_JOB` re-runs the unpartitioned assets in every slide's
run (see docs/operations.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from urllib.parse import urlparse

from dagster_graphql import DagsterGraphQLClient

ASSETS_QUERY = """
query Assets {
  assetNodes {
    assetKey { path }
    groupName
    isMaterializable
    isPartitioned
    partitionKeys
  }
}
"""

LAUNCH_MUTATION = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on PartitionKeysNotFoundError { message }
    ... on UnauthorizedError { message }
  }
}
"""

STATUS_QUERY = """
query Status($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status numPartitions timestamp endTimestamp }
    ... on PythonError { message }
  }
}
"""

TERMINAL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


def client_for(url: str) -> DagsterGraphQLClient:
    parsed = urlparse(url if "://" in url else f"http://{url}")
    return DagsterGraphQLClient(
        parsed.hostname or "127.0.0.1",
        port_number=parsed.port,
        use_https=parsed.scheme == "https",
        path_prefix=parsed.path.rstrip("/"),
    )


def select_assets(nodes: list[dict], selection: str) -> list[dict]:
    """Nodes matching ``*``, ``group:NAME`` or comma-separated asset keys (``a/b,c``)."""
    nodes = [n for n in nodes if n["isMaterializable"]]
    if selection == "*":
        return nodes
    if selection.startswith("group:"):
        group = selection.removeprefix("group:")
        return [n for n in nodes if n["groupName"] == group]
    wanted = {part.strip() for part in selection.split(",") if part.strip()}
    chosen = [n for n in nodes if "/".join(n["assetKey"]["path"]) in wanted]
    missing = wanted - {"/".join(n["assetKey"]["path"]) for n in chosen}
    if missing:
        raise SystemExit(f"unknown asset(s): {', '.join(sorted(missing))}")
    return chosen


def launch(
    client: DagsterGraphQLClient,
    asset_keys: list[list[str]],
    partitions: list[str],
    *,
    title: str | None = None,
) -> str:
    """Launch one asset backfill; its id (raises with Dagster's message otherwise)."""
    params: dict = {
        "assetSelection": [{"path": key} for key in asset_keys],
        "partitionNames": partitions,
        "tags": [{"key": "pathgen/launched_by", "value": "scripts/ui/backfill.py"}],
    }
    if title:
        params["title"] = title
    result = client._execute(LAUNCH_MUTATION, {"params": params})["launchPartitionBackfill"]
    if result["__typename"] != "LaunchBackfillSuccess":
        raise RuntimeError(f"{result['__typename']}: {result.get('message', result)}")
    return result["backfillId"]


def wait(client: DagsterGraphQLClient, backfill_id: str, *, poll_seconds: float = 5) -> dict:
    while True:
        state = client._execute(STATUS_QUERY, {"id": backfill_id})["partitionBackfillOrError"]
        if state.get("status") in TERMINAL:
            return state
        time.sleep(poll_seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:3000", help="Dagster webserver")
    parser.add_argument("--select", default="*", help="'*', 'group:NAME' or keys 'a,b'")
    parser.add_argument("--partitions", default="all", help="'all' or slide ids 'a,b'")
    parser.add_argument(
        "--missing-only",
        action="store_true",
        help="only slides that miss a materialization of any selected partitioned asset",
    )
    parser.add_argument("--title", help="backfill title shown in the UI")
    parser.add_argument("--wait", action="store_true", help="wait until the backfill ends")
    args = parser.parse_args(argv)

    client = client_for(args.url)
    nodes = select_assets(client._execute(ASSETS_QUERY)["assetNodes"], args.select)
    partitioned = [n for n in nodes if n["isPartitioned"]]
    if not partitioned:
        raise SystemExit("the selection has no slide-partitioned asset")
    known = list(dict.fromkeys(k for n in partitioned for k in n["partitionKeys"]))
    if args.partitions == "all":
        partitions = known
    else:
        partitions = [p.strip() for p in args.partitions.split(",") if p.strip()]
        unknown = sorted(set(partitions) - set(known))
        if unknown:
            raise SystemExit(f"not registered slide partitions: {', '.join(unknown)}")
    if args.missing_only:
        partitions = _missing(client, partitioned, partitions)
    if not partitions:
        print("nothing to backfill")
        return 0
    keys = [n["assetKey"]["path"] for n in nodes]
    backfill_id = launch(client, keys, partitions, title=args.title)
    base = args.url.rstrip("/")
    print(f"backfill {backfill_id}: {len(keys)} assets x {len(partitions)} slides")
    print(f"  {base}/runs/b/{backfill_id}")
    if not args.wait:
        return 0
    state = wait(client, backfill_id)
    seconds = (state.get("endTimestamp") or time.time()) - state["timestamp"]
    print(f"backfill {backfill_id}: {state['status']} after {seconds:.0f}s")
    return 0 if state["status"] in ("COMPLETED_SUCCESS", "COMPLETED") else 1


MATERIALIZED_QUERY = """
query Materialized($path: [String!]!) {
  assetNodeOrError(assetKey: {path: $path}) {
    ... on AssetNode {
      assetPartitionStatuses {
        ... on DefaultPartitionStatuses { materializedPartitions }
      }
    }
  }
}
"""


def _missing(client: DagsterGraphQLClient, nodes: list[dict], partitions: list[str]) -> list[str]:
    """The slides among ``partitions`` that some node has not materialized."""
    missing: set[str] = set()
    for node in nodes:
        result = client._execute(MATERIALIZED_QUERY, {"path": node["assetKey"]["path"]})
        statuses = (result["assetNodeOrError"] or {}).get("assetPartitionStatuses") or {}
        done = set(statuses.get("materializedPartitions") or [])
        missing |= {p for p in partitions if p not in done}
    return [p for p in partitions if p in missing]


if __name__ == "__main__":
    sys.exit(main())
