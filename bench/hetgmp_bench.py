"""HET-GMP benchmark: what the graph placement, the mirrors and the staleness bound buy in real training
runs on hosts that each run a shard and a trainer with its gateway (network namespaces on this machine,
embps.testing.netns_hosts, the cluster benchmark's harness and byte counting).

Hosts: H hosts (2 with --quick, 4 full), each running shard h, gateway h and trainer h (JobLayout.on_hosts),
and the oracle cacher on a host of its own; every link shaped by tc tbf to the cluster benchmark's rate
(RATE_MBIT).  Data: the structured synthetic data (64 segments, datasets/synthetic.py) at the training
benchmarks' scale 0.01, its train split cut to n_train samples so that the placement covers all of it.
Model, optimizers and timing are bench/train_bench.py's (train_bench.job_config, s/step over the middle
half of each run, train_command.summarize), with HET-GMP's embedding dim D = 128 (its paper's setting and
its multi-GPU example's; train_bench's 32 with --dim 32).  The placement is partition_bench's (its
settings: H hosts, per-host batch = global batch / H, 5 rounds, mirrors for 1% of the rows each host does
not own).

Contenders, every one the same number of steps of the same global batch size:
  direct-hash     direct mode, jump-hash placement (global batches as today: the split in order)
  direct-graph    direct mode, the graph placement (each trainer iterates its own samples, as HET-GMP's do)
  sync-graph      sync mode, the graph placement
  bounded-s{S}    bounded mode with the graph placement and its mirrors, S in STALENESS
Every contender with the graph placement trains on the same global batches (the placement deals them);
direct-hash's differ by construction (hash placement deals the split in order).

Figures (goals in GOALS):
  placement_remote_rows_vs_hash  remote row fetches per iteration, direct-graph / direct-hash, counted by
                                 replaying each run's training batches (the oracle cacher's dealing, the
                                 planner's keys, the job's router); the gateways' own counters
                                 (rows_fetched, remote_rows_fetched), which also count evaluation's and
                                 warm-up's reads, are context beside it.
  mirrors_remote_bytes_vs_hash   kernel-counted bytes the training hosts sent over the job, bounded-s100 /
                                 direct-hash (the oracle's feed of samples, the same for both, is context;
                                 so is mirrors_remote_service_bytes_vs_hash, the ratio of the services'
                                 part alone, kernel-counted by port as in cluster_bench: without DDP's
                                 allreduce of the dense gradients, which no placement or mirror changes)
  bounded_vs_sync_speedup        s/step of sync-graph / s/step of bounded-s100, links at RATE_MBIT
  bounded_auc_loss_s100          held-out AUC of sync-graph minus that of bounded-s100

MovieLens-100k (real users and items) is partitioned and replayed offline only (context
movielens_remote_rows_vs_hash_replayed): the training jobs here are the synthetic data's DLRM.

Prints `figure`/`context` lines and writes bench/results/hetgmp.json and .png (hetgmp-quick.* with --quick).
Needs root and iproute2; says why and exits 0 otherwise.
"""

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402

import cluster_bench  # noqa: E402
import partition_bench  # noqa: E402
import train_bench  # noqa: E402
from bench_common import BenchRun, Report, save_figure  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
GOALS = {
    "placement_remote_rows_vs_hash": ("<=", 0.6),
    "mirrors_remote_bytes_vs_hash": ("<=", 0.3),
    "bounded_vs_sync_speedup": (">=", 1.3),
    "bounded_auc_loss_s100": ("<=", 0.005),
}
ORACLE_HOST = "oracle"
STALENESS = (0, 10, 100)
RATE_MBIT = 50.0           # the cluster benchmark's lowest rate (its full run's), where links bind
HETGMP_DIM = 128           # D in HET-GMP's experiments: rows 4x train_bench's, the dense model 1.2x
console = Console()


@dataclass(frozen=True)
class Config:
    train: train_bench.Config
    hosts: int
    n_train: int
    segments: int = 64
    store_rate: float = 0.01
    rate_mbit: float = RATE_MBIT
    sample_seconds: float = 0.05
    max_quiet_wait: float = 5.0
    results_name: str = "hetgmp"


def parse_args() -> Config:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 hosts, global batch 1024, 30 steps")
    parser.add_argument("--steps", type=int, help="training steps per run")
    parser.add_argument("--rate", type=float, help=f"link rate in Mbit/s (default {RATE_MBIT:g})")
    parser.add_argument("--dim", type=int, default=HETGMP_DIM, help=f"embedding dim (default {HETGMP_DIM})")
    args = parser.parse_args()
    if args.quick:
        train = train_bench.Config(steps=30, global_batch=1024, rounds=1, eval_batches=2, trainers=2, shards=2,
                                   dim=args.dim)
        cfg = Config(train, hosts=2, n_train=100_000, max_quiet_wait=2.0, results_name="hetgmp-quick")
    else:
        train = train_bench.Config(steps=100, global_batch=2048, rounds=1, eval_batches=4, trainers=4, shards=4,
                                   dim=args.dim)
        cfg = Config(train, hosts=4, n_train=400_000)
    if args.steps:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=args.steps))
    if args.rate:
        cfg = dataclasses.replace(cfg, rate_mbit=args.rate)
    return cfg


# ---- data and placement ---------------------------------------------------------------------------

def partition_config(cfg: Config) -> partition_bench.Config:
    return partition_bench.Config(scales=(), hosts=cfg.hosts, batch=cfg.train.global_batch // cfg.hosts,
                                  segments=cfg.segments, seed=cfg.train.seed)


def dataset(cfg: Config):
    return partition_bench.synthetic(partition_config(cfg), cfg.train.scale, cfg.n_train)


def make_placement(cfg: Config, data, path: Path, report: Report, tag: str = ""):
    """partition_bench's partition of data's whole train split, written to path."""
    from embps.placement.graph import read_graph
    from embps.placement.partitioner import partition
    from embps.placement.placement_file import save_placement
    started = time.perf_counter()
    settings = dataclasses.replace(partition_bench.settings(partition_config(cfg)), store_rate=cfg.store_rate)
    result = partition(read_graph(data), settings, report=lambda line: console.print(line))
    save_placement(path, result.placement)
    report.note(f"{tag}partition_seconds", time.perf_counter() - started, "s")
    report.note(f"{tag}objective_hash", result.objectives[0], "rows/iteration")
    report.note(f"{tag}objective_graph", result.objectives[-1], "rows/iteration")
    report.note(f"{tag}objective_graph_vs_hash", result.objectives[-1] / result.objectives[0], "ratio")
    report.info[f"{tag}mirrors_per_host"] = [len(m) for m in result.placement.mirrors]
    return result.placement


def replayed_rows(cfg: Config, data, placement) -> dict[str, float]:
    """Rows each trainer fetches per iteration (its batch slice's distinct keys) and how many of them its
    own host's shard does not own, over the run's batches as the oracle cacher deals them."""
    from embps.client.routing import JumpHashRouter, PlacementRouter
    from embps.oracle_cacher.dealing import dealt_batches
    from embps.oracle_cacher.lookahead_planner import LookaheadPlanner
    local = cfg.train.global_batch // cfg.hosts
    batches = (data.batches(cfg.train.global_batch, "train") if placement is None
               else dealt_batches(data, placement, local))
    router = JumpHashRouter(cfg.hosts) if placement is None else PlacementRouter(placement)
    planner = LookaheadPlanner(data.info.table_sizes, 1, 1)
    fetched = remote = 0
    for _b, batch in zip(range(cfg.train.steps), batches):
        for t in range(cfg.hosts):
            keys = planner.keys_of(planner.rows_of(batch.sparse[t * local:(t + 1) * local]))
            fetched += len(keys)
            remote += int(np.count_nonzero(np.asarray(router.shard_of(keys)) != t))
    return {"rows_per_iteration": fetched / cfg.train.steps, "remote_rows_per_iteration": remote / cfg.train.steps}


def movielens_remote_rows(cfg: Config, work: Path, report: Report) -> None:
    """MovieLens-100k (real users and items), offline only: remote rows per iteration of its batches as the
    oracle would deal them, graph placement / hash placement (no training run: the DLRM jobs here are
    the synthetic data's)."""
    from embps.datasets import open_dataset
    data = open_dataset("movielens-100k")
    placement = make_placement(cfg, data, work / "movielens.placement", report, "movielens_")
    graph, hashed = replayed_rows(cfg, data, placement), replayed_rows(cfg, data, None)
    report.note("movielens_remote_rows_vs_hash_replayed",
                graph["remote_rows_per_iteration"] / hashed["remote_rows_per_iteration"], "ratio")


# ---- the runs -------------------------------------------------------------------------------------

def host_names(cfg: Config) -> list[str]:
    return [f"host-{h}" for h in range(cfg.hosts)]


def job(cfg: Config, mode: str, placement_file: Path | None, staleness: int = 0):
    base = train_bench.job_config(cfg.train, mode)
    return dataclasses.replace(base, dataset_options={"scale": cfg.train.scale, "n_train": cfg.n_train,
                                                      "segments": cfg.segments, "seed": cfg.train.seed},
                               placement=str(placement_file or ""), staleness=staleness, store_rate=cfg.store_rate,
                               timeout_seconds=300.0)


def run_job(cfg: Config, hosts, name: str, job_config, work: Path) -> dict:
    from embps.trainer.local_job import JobLayout
    training = host_names(cfg)
    layout = JobLayout.on_hosts([hosts.host(h) for h in training], oracle=hosts.host(ORACLE_HOST))
    r = cluster_bench.run_on_hosts(hosts, f"{name} at {cfg.rate_mbit:g} Mbit/s", job_config, work, layout, training,
                                   cfg.train.steps, cfg.max_quiet_wait, cfg.sample_seconds)
    s, per_step, job_bytes = r.summary, r.per_step or {}, r.job_bytes
    run = {"name": name, "mode": job_config.mode, "staleness": job_config.staleness,
           "placement": bool(job_config.placement), "step_seconds": s["step_seconds"], "final_loss": s["final_loss"],
           "eval_auc": s.get("eval_auc"),
           **{f"gateway_{what}": sum(g.get(what, 0) for g in r.metrics["gateways"])
              for what in ("rows_fetched", "remote_rows_fetched")},
           "gateway_ps_bytes": s["ps_bytes"],
           "training_hosts_tx_bytes": sum(job_bytes[h]["tx_bytes"] for h in training),
           "all_hosts_tx_bytes": sum(c["tx_bytes"] for c in job_bytes.values()),
           "training_hosts_tx_bytes_per_step": sum(per_step[h]["tx_bytes"] for h in training) if per_step else None,
           "job_bytes_by_host": job_bytes, "training_hosts_tx_bytes_by_class": r.by_class,
           "other_cores_at_start": r.others, "waited_seconds": r.waited}
    console.print(f"  {s['step_seconds'] * 1e3:.1f} ms/step, AUC {run['eval_auc']:.4f}; training hosts sent "
                  f"{run['training_hosts_tx_bytes'] / 1e6:.1f} MB over the job")
    return run


def contenders(cfg: Config, placement_file: Path) -> list[tuple[str, object]]:
    return [("direct-hash", job(cfg, "direct", None)), ("direct-graph", job(cfg, "direct", placement_file)),
            ("sync-graph", job(cfg, "sync", placement_file)),
            *[(f"bounded-s{s}", job(cfg, "bounded", placement_file, s)) for s in STALENESS]]


# ---- figures and output ---------------------------------------------------------------------------

def figures(cfg: Config, runs: dict[str, dict], replay: dict[str, dict], report: Report) -> None:
    report.note("dense_gradient_bytes", cluster_bench.dense_gradient_bytes(cfg), "B")
    for name, r in replay.items():
        for what, value in r.items():
            report.note(f"{name}_{what}_replayed", value, "rows")
        # The replay counts the training steps' fetches; the gateways' also count evaluation's and warm-up's.
        for what in ("rows_fetched", "remote_rows_fetched"):
            report.note(f"{name}_gateway_{what}_per_step", runs[name][f"gateway_{what}"] / cfg.train.steps, "rows")
    report.figure("placement_remote_rows_vs_hash", replay["direct-graph"]["remote_rows_per_iteration"]
                  / replay["direct-hash"]["remote_rows_per_iteration"], "ratio")
    report.figure("mirrors_remote_bytes_vs_hash", runs["bounded-s100"]["training_hosts_tx_bytes"]
                  / runs["direct-hash"]["training_hosts_tx_bytes"], "ratio")
    report.note("mirrors_remote_bytes_vs_hash_all_hosts", runs["bounded-s100"]["all_hosts_tx_bytes"]
                / runs["direct-hash"]["all_hosts_tx_bytes"], "ratio")
    service_bytes = {n: r["training_hosts_tx_bytes_by_class"][cluster_bench.SERVICES] for n, r in runs.items()}
    report.note("mirrors_remote_service_bytes_vs_hash", service_bytes["bounded-s100"] / service_bytes["direct-hash"],
                "ratio")
    report.note("direct_graph_remote_bytes_vs_hash", runs["direct-graph"]["training_hosts_tx_bytes"]
                / runs["direct-hash"]["training_hosts_tx_bytes"], "ratio")
    report.figure("bounded_vs_sync_speedup", runs["sync-graph"]["step_seconds"] / runs["bounded-s100"]["step_seconds"],
                  "x")
    report.figure("bounded_auc_loss_s100", runs["sync-graph"]["eval_auc"] - runs["bounded-s100"]["eval_auc"], "AUC")
    for name, r in runs.items():
        tag = name.replace("-", "_")
        report.note(f"{tag}_ms_per_step", r["step_seconds"] * 1e3, "ms")
        report.note(f"{tag}_eval_auc", r["eval_auc"], "AUC")
        report.note(f"{tag}_training_hosts_tx_bytes", r["training_hosts_tx_bytes"], "B")
        report.note(f"{tag}_training_hosts_tx_service_bytes", service_bytes[name], "B")
        if r["training_hosts_tx_bytes_per_step"] is not None:
            report.note(f"{tag}_training_hosts_tx_bytes_per_step", r["training_hosts_tx_bytes_per_step"], "B")


def plot(report: Report, goals: dict, cfg: Config, path: Path) -> None:
    runs = report.info["runs"]
    fig, (ax_auc, ax_time, ax_bytes, ax_fig) = plt.subplots(1, 4, figsize=(21, 5))
    bounded = [runs[f"bounded-s{s}"] for s in STALENESS]
    xs = list(range(len(STALENESS)))
    ax_auc.plot(xs, [r["eval_auc"] for r in bounded], "o-", color="tab:blue", label="bounded")
    ax_auc.axhline(runs["sync-graph"]["eval_auc"], color="tab:green", linestyle="dashed", label="sync")
    ax_time.plot(xs, [r["step_seconds"] * 1e3 for r in bounded], "o-", color="tab:blue", label="bounded")
    for name, color in (("sync-graph", "tab:green"), ("direct-graph", "tab:olive"), ("direct-hash", "tab:gray")):
        ax_time.axhline(runs[name]["step_seconds"] * 1e3, color=color, linestyle="dashed", label=name)
    for ax, label in ((ax_auc, "held-out AUC"), (ax_time, "ms per step (middle half)")):
        ax.set_xticks(xs, [f"s = {s}" for s in STALENESS])
        ax.set(xlabel="staleness bound", ylabel=label)
        ax.legend(fontsize=8)
    ax_auc.set_title(f"{cfg.hosts} hosts, global batch {cfg.train.global_batch}, {cfg.train.steps} steps")
    ax_time.set_title(f"links {cfg.rate_mbit:g} Mbit/s each way (tbf, no netem), under load")
    names = list(runs)
    bars = ax_bytes.bar(range(len(names)), [runs[n]["training_hosts_tx_bytes"] / 1e6 for n in names], color="tab:blue")
    ax_bytes.bar_label(bars, fmt="%.0f")
    ax_bytes.set_xticks(range(len(names)), names, rotation=30, fontsize=8)
    ax_bytes.set(ylabel="MB sent by the training hosts over the job", title="kernel-counted bytes")
    shown = [n for n in GOALS if n in report.figures]
    bars = ax_fig.bar(range(len(shown)), [report.figures[n]["value"] for n in shown],
                      color=["tab:green" if goals[n]["met"] else "tab:red" for n in shown])
    ax_fig.bar_label(bars, fmt="%.3f")
    for i, n in enumerate(shown):
        ax_fig.hlines(goals[n]["target"], i - 0.4, i + 0.4, colors="black", linestyles="dashed")
    labels = {"placement_remote_rows_vs_hash": "remote rows\ngraph ÷ hash", "mirrors_remote_bytes_vs_hash":
              "bytes bounded\n÷ direct hash", "bounded_vs_sync_speedup": "sync ÷ bounded\ns/step",
              "bounded_auc_loss_s100": "AUC sync −\nbounded s=100"}
    ax_fig.set_xticks(range(len(shown)), [labels[n] for n in shown], fontsize=8)
    ax_fig.set_title("figures (green: goal met, red: missed; dashed: goal)")
    save_figure(fig, path)


def main() -> int:
    run = BenchRun("hetgmp")
    from embps.testing.netns_hosts import LinkShape, NamespacesUnavailable, NetnsHosts
    cfg = parse_args()
    if not cluster_bench.hosts_can_be_made("hetgmp bench"):
        return 0
    report = Report(GOALS)
    print(f"hetgmp bench: {cfg.hosts} hosts, global batch {cfg.train.global_batch}, {cfg.train.steps} steps per run, "
          f"links {cfg.rate_mbit:g} Mbit/s; load average {run.load['before'][0]:.2f}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="embps-hetgmp-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    runs: dict[str, dict] = {}
    try:
        placement_file = work / "job.placement"
        placement = make_placement(cfg, dataset(cfg), placement_file, report)
        replay = {"direct-hash": replayed_rows(cfg, dataset(cfg), None),
                  "direct-graph": replayed_rows(cfg, dataset(cfg), placement)}
        movielens_remote_rows(cfg, work, report)
        with NetnsHosts([*host_names(cfg), ORACLE_HOST], LinkShape(rate_mbit=cfg.rate_mbit)) as hosts:
            report.info["latency_note"] = hosts.latency_note
            for name, job_config in contenders(cfg, placement_file):
                runs[name] = run_job(cfg, hosts, name, job_config, work)
    except NamespacesUnavailable as error:
        print(f"hetgmp bench skipped: {error}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.info["runs"] = runs
    report.info["replay"] = replay
    figures(cfg, runs, replay, report)
    timing = (f"one run per contender, {cfg.train.steps} steps; s/step over the middle half (train_command.summarize); "
              f"bytes: kernel counters of every host link over each job; remote rows: the run's batches replayed")
    run.save(report, RESULTS_DIR, cfg, timing, train_bench.environment(), plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
