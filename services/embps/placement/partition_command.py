"""`embps partition`: reads a job's training split, partitions its samples and embedding rows over
hosts (HET-GMP's objective, hash placement as the start) and writes the placement file.

The per-host batch B is the job's global batch over the hosts.  It prints the objective (expected
remote rows fetched per iteration, link-cost weighted) of hash placement and after every round."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from embps.common.job_config import JobConfig
from embps.datasets import open_dataset

COMMAND = "partition"
HELP = "place a job's samples and rows on hosts by the sample-row graph (HET-GMP), write a placement file"


def add_arguments(parser) -> None:
    parser.add_argument("--job", required=True, help="the job's TOML file (its dataset, batch and seed)")
    parser.add_argument("--hosts", type=int, required=True, help="hosts to place on (one shard and trainer each)")
    parser.add_argument("--samples", type=int, default=None, help="partition the first N training samples "
                                                                 "(default: the whole train split)")
    parser.add_argument("--seed", type=int, default=None, help="fixes the refinement order (default: the job's)")
    parser.add_argument("--rounds", type=int, default=5, help="refinement rounds (default: %(default)s)")
    parser.add_argument("--store-rate", type=float, default=0.01,
                        help="mirrors per host, as a fraction of the rows it does not own (default: %(default)s)")
    parser.add_argument("--out", required=True, help="the placement file to write")


def run(args) -> int:
    from .graph import read_graph
    from .partition_settings import PartitionSettings
    from .partitioner import partition
    from .placement_file import save_placement

    console = Console()
    job = JobConfig.load(args.job)
    try:
        settings = PartitionSettings(hosts=args.hosts, batch=job.global_batch // max(args.hosts, 1),
                                     rounds=args.rounds, seed=job.seed if args.seed is None else args.seed,
                                     store_rate=args.store_rate)
        dataset = open_dataset(job.dataset, **job.dataset_options)
    except ValueError as error:
        console.print(f"[bold red]embps partition[/bold red]: {error}")
        return 2
    started = time.monotonic()
    with _progress(console) as bar:
        task = bar.add_task("reading samples", total=args.samples or dataset.info.n_train)
        try:
            graph = read_graph(dataset, args.samples, progress=lambda k: bar.advance(task, k))
        except ValueError as error:
            console.print(f"[bold red]embps partition[/bold red]: {error}")
            return 2

        def show(what: str, done: int, total: int) -> None:
            bar.update(task, description=what, completed=done, total=total)
        console.print(f"graph: {graph.n_samples:,} samples, {int(graph.used.sum()):,} rows used, "
                      f"{graph.edges.size:,} edges (read in {time.monotonic() - started:.1f} s); "
                      f"{settings.hosts} hosts, batch {settings.batch} per host")
        result = partition(graph, settings, progress=show, report=console.print)
    save_placement(args.out, result.placement)
    stats = result.hosts
    console.print(f"samples per host {stats.samples.tolist()}, rows per host {stats.rows.tolist()}, "
                  f"mirrors per host {[len(m) for m in result.placement.mirrors]}")
    console.print(f"objective {result.objectives[-1]:,.2f} = {result.objectives[-1] / result.objectives[0]:.3f} "
                  f"of hash placement's; {time.monotonic() - started:.1f} s; wrote {args.out}")
    return 0


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)
