"""`embps reshard --from OLD.toml --to NEW.toml`: moves the rows of every table (with their optimizer
state) from one shard layout to another, OFFLINE: stop every writer first; the shards keep running.

If the layouts share a shard (growing or shrinking in place, or the same shards from hash placement to a
placement file, `[cluster] placement = "FILE"`, and back) every row ends on exactly one shard, the one the
new layout routes it to; rows are deleted from their old shard only after their new shard has them.
Disjoint layouts are a copy: the old shards are left as they were.  Before and after, every shard is
scanned: rows per shard, distinct keys and an order-independent checksum over (key, row, optimizer state)
must match.  --verify-only moves nothing and only checks that the new layout holds the rows of the old one,
each on its own shard.  Exit status: 0 verified, 1 verification failed, 2 could not run (nothing lost).
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from embps.common.cluster_config import ClusterConfig

from .reshard import DEFAULT_BATCH_ROWS, ReshardError, ReshardReport, reshard

COMMAND = "reshard"
HELP = "move table rows (with optimizer state) from one shard layout to another, offline, and verify"


def add_arguments(parser) -> None:
    parser.add_argument("--from", dest="old", required=True, metavar="OLD.toml",
                        help="cluster config of the current layout ([[shards]] address = ...)")
    parser.add_argument("--to", dest="new", required=True, metavar="NEW.toml", help="cluster config of the new layout")
    parser.add_argument("--tables", default="", help="comma-separated tables (default: every table of the old layout)")
    parser.add_argument("--verify-only", action="store_true",
                        help="move nothing; check that the new layout holds the old layout's rows, each on its shard")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted reshard (accept rows on shards only the new layout names)")
    parser.add_argument("--batch-rows", type=int, default=DEFAULT_BATCH_ROWS,
                        help="rows per call (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    console = Console(stderr=True)
    try:
        old, new = ClusterConfig.load(args.old), ClusterConfig.load(args.new)
    except (OSError, ValueError, TypeError) as error:
        console.print(f"[red]reshard: cannot read the layouts: {error}[/red]")
        return 2
    tables = [t.strip() for t in args.tables.split(",") if t.strip()] or None
    try:
        report = reshard(old, new, tables, verify_only=args.verify_only, resume=args.resume,
                         batch_rows=args.batch_rows, progress=not args.no_progress, console=console)
    except ReshardError as error:
        console.print(f"[red]reshard failed: {error}[/red]")
        return 2
    print_report(report, Console(file=sys.stdout, width=max(Console().width, 100)))
    if not report.ok:
        console.print("[red]reshard: VERIFICATION FAILED[/red]: "
                      + "; ".join(f"{t.table}: {p}" for t in report.tables for p in t.problems))
        return 1
    return 0


def print_report(report: ReshardReport, console: Console) -> None:
    what = "verified" if report.verify_only else "resharded"
    console.print(f"{what} {len(report.tables)} table(s), {report.mode} "
                  f"({', '.join(f'{a} {r}' for a, r in report.roles.items())})")
    for t in report.tables:
        grid = Table(title=f"table {t.table}", title_justify="left")
        grid.add_column("shard")
        grid.add_column("role")
        grid.add_column("rows before", justify="right")
        grid.add_column("rows after", justify="right")
        for address, role in report.roles.items():
            before, after = t.before.per_shard.get(address), t.after.per_shard.get(address)
            grid.add_row(address, role, "" if before is None else str(before), "" if after is None else str(after))
        grid.add_row("total (distinct keys)", "", str(t.before.rows), str(t.after.rows), style="bold")
        console.print(grid)
        console.print(f"  checksum before {t.before.checksum:#018x}, after {t.after.checksum:#018x}")
        console.print(f"  rows moved {t.moved}, deleted from their old shard {t.deleted}")
        if t.ok:
            console.print("  [green]OK[/green]: same rows, optimizer state and checksum; every row on its shard")
        for problem in t.problems:
            console.print(f"  [red]MISMATCH[/red]: {problem}")
