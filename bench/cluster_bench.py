"""Cluster benchmark: training and the shard's data path across links of a real bandwidth, with hosts as
network namespaces on this machine (embps.testing.netns_hosts) and the bytes counted by the kernel.

Hosts: 2 trainer hosts (a trainer and its gateway each), 2 shard hosts and the oracle cacher on a host of
its own, all on one virtual switch, every host's link shaped by tc tbf to the same rate in each direction.
Trainers and shards live apart (the job has no [addresses] hosts), as issue 12 asks: every byte between a
gateway and a shard crosses two shaped links, so sync's savings are not hidden by rows that happen to be
local.  The kernel has no netem here: latency is not emulated (the links have a bandwidth, and the
queueing delay of that); the JSON says which.

Workload: bench/train_bench.py's, the same DLRM, data, optimizers and global batches (train_bench.job_config),
with bench/train_bench.py's timing: s/step over the middle half of each run from trainer 0's step end times
(embps.trainer.train_command.summarize).  --quick: global batch 1024, 40 steps, rates 100 and 500 Mbit/s and
unshaped; full: global batch 2048, 100 steps, rates 50, 100, 200, 500 and 1000 Mbit/s and unshaped.

Bytes: the kernel's counters of every host's link (embps.testing.netns_hosts), sampled every 50 ms with
trainer 0's step count.  "Between hosts" is the sum over hosts of what each host sent (every byte once, the
Ethernet header included); "busiest link" is the largest of any host link's two directions.  Per step:
over the timed window; over the job: from before its shards start to after its last process stops
(start-up, evaluation and sync's final write-back included).  Over the job the kernel also splits what the
hosts sent by TCP port (NetnsHosts.classify_ports, nftables): "services" is every frame to or from a port
of the shards, the oracle or the gateways (rows, gradients, plans, the gateways' exchange); the rest is
torch.distributed's (DDP's allreduce of the dense gradients and its store), which no cache changes.

Figures (goals in GOALS):
  train_sync_vs_direct_speedup_netbound  s/step of direct / s/step of sync (the faster of NETBOUND_RUNS runs
                                         each, alternating) at the rate R where direct's
                                         busiest link carries its bytes per step in the time its unshaped
                                         step takes: R = bytes/step x 8 / (s/step), the bytes from the
                                         unshaped direct run, the time the fastest direct run of any rate
                                         (shaping never speeds a step up; the machine is shared) (context
                                         train_netbound_rate_mbit)
  train_wire_bytes_direct_vs_sync        kernel-counted bytes between hosts over the unshaped jobs, direct / sync
                                         (context train_wire_service_bytes_direct_vs_sync: the services' part;
                                         train_wire_bytes_direct_vs_sync_ceiling: direct's bytes / sync's
                                         torch.distributed bytes alone, the figure if sync's services sent none)
  shard_lookup_vs_redis_1gbit            PSClient.lookup keys/s / Redis MGET keys/s, this process (the client)
                                         reaching one server host whose link is shaped to 1 Gbit/s
  shard_update_vs_redis_1gbit            PSClient.update (Adagrad) keys/s / Redis MSET keys/s, the same
The shard part is bench/shard_bench.py's workload, contenders and timing (its functions, imported), with
the shard and redis-server both on the server host.
Context: every run's s/step and bytes per step (between hosts, busiest link, shard hosts' links), the
curve, and the bytes per key of each shard contender on the 1 Gbit/s link.

Prints `figure NAME VALUE UNIT` and `context NAME VALUE UNIT` lines and writes bench/results/cluster.json and
cluster.png (cluster-quick.* with --quick).  Needs root and iproute2; says why and exits 0 otherwise.
"""

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import Progress, TimeElapsedColumn  # noqa: E402

import shard_bench  # noqa: E402
import train_bench  # noqa: E402
from bench_common import BenchRun, Report, logs_kept_on_failure, save_figure, slug  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
GOALS = {
    "train_sync_vs_direct_speedup_netbound": (">=", 1.7),
    "train_wire_bytes_direct_vs_sync": (">=", 5.0),
}
TRAINER_HOSTS, SHARD_HOSTS, ORACLE_HOST, SERVER_HOST = ("trainer-0", "trainer-1"), ("shard-0", "shard-1"), "oracle", "server"
MODES = ("sync", "direct")
NETBOUND_RUNS = 2   # runs of each mode at the netbound rate
SHARD_LINK_MBIT = 1000
console = Console()


@dataclass(frozen=True)
class Config:
    train: train_bench.Config
    shard: shard_bench.Config
    rates_mbit: tuple[float | None, ...]    # None: unshaped
    sample_seconds: float = 0.05
    max_quiet_wait: float = 10.0
    results_name: str = "cluster"
    skip_shard: bool = False
    skip_train: bool = False


def parse_args() -> Config:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batch 1024, 40 steps, rates 100, 500 and unshaped")
    parser.add_argument("--rates", help="comma-separated link rates in Mbit/s, 0 for unshaped (default by mode)")
    parser.add_argument("--steps", type=int, help="training steps per run")
    parser.add_argument("--skip-shard", action="store_true", help="leave out the shard vs Redis part")
    parser.add_argument("--skip-train", action="store_true", help="leave out the training part")
    parser.add_argument("--name", help="results file name under bench/results (default cluster / cluster-quick)")
    args = parser.parse_args()
    if args.quick:
        train = train_bench.Config(steps=40, global_batch=1024, rounds=1, eval_batches=1)
        shard = shard_bench.Config(rows=200_000, reps=3, n_batches=1024, pass_seconds=0.5, latency_reps=0,
                                   latency_seconds=0.0, results_name="")
        rates: tuple[float | None, ...] = (100, 500, None)
        cfg = Config(train, shard, rates, max_quiet_wait=2.0, results_name="cluster-quick")
    else:
        train = train_bench.Config(steps=100, global_batch=2048, rounds=1, eval_batches=2)
        shard = shard_bench.Config(rows=1_000_000, reps=5, n_batches=2048, pass_seconds=1.5, latency_reps=0,
                                   latency_seconds=0.0, results_name="")
        cfg = Config(train, shard, (50, 100, 200, 500, 1000, None))
    if args.steps:
        cfg = Config(**{**cfg.__dict__, "train": train_bench.Config(**{**asdict(cfg.train), "steps": args.steps})})
    if args.rates:
        cfg = Config(**{**cfg.__dict__, "rates_mbit": tuple(float(r) or None for r in args.rates.split(","))})
    return Config(**{**cfg.__dict__, "skip_shard": args.skip_shard, "skip_train": args.skip_train,
                     "results_name": args.name or cfg.results_name})


# ---- counting bytes -------------------------------------------------------------------------------

class LinkSampler(train_bench.StepSampler):
    """Every `interval` s: trainer 0's step count and every host link's kernel counters."""

    def __init__(self, hosts, data_dir: Path, interval: float):
        super().__init__(data_dir, interval, "link-sampler")
        self.hosts = hosts

    def sample(self) -> tuple:
        return (self.hosts.counters(),)

    def per_step(self, first: int, last: int) -> dict | None:
        """Each host's counters per step from the sample where `first` steps were done to the one where `last` were."""
        if (bounds := self.window(first, last)) is None:
            return None
        start, end, steps = bounds
        return {name: {k: v / steps for k, v in asdict(end[1][name] - start[1][name]).items()} for name in end[1]}


SERVICES = "services"   # the traffic class of the job's services' ports (NetnsHosts.classify_ports)


def count_services(hosts):
    """run_local_job's on_ports: the hosts count the services' frames apart from torch.distributed's."""
    return lambda ports: hosts.classify_ports({SERVICES: ports})


def class_bytes(hosts, names) -> dict[str, int]:
    """What hosts `names` sent since count_services, per class, summed over them."""
    from embps.testing.netns_hosts import OTHER
    counts = hosts.class_counters()
    return {c: sum(counts[h][c] for h in names) for c in (SERVICES, OTHER)}


def traffic(per_host: dict) -> dict[str, float]:
    """Between hosts (what every host sent), the busiest link direction, and the shard hosts' links."""
    return {"between_hosts": sum(c["tx_bytes"] for c in per_host.values()),
            "busiest_link": max(max(c["tx_bytes"], c["rx_bytes"]) for c in per_host.values()),
            "shard_links": sum(per_host[h]["tx_bytes"] + per_host[h]["rx_bytes"] for h in SHARD_HOSTS),
            "oracle_link": per_host[ORACLE_HOST]["tx_bytes"] + per_host[ORACLE_HOST]["rx_bytes"],
            **{f"{h}_{d}": per_host[h][f"{d}_bytes"] for h in per_host for d in ("tx", "rx")}}


# ---- training -------------------------------------------------------------------------------------

def layout(hosts):
    from embps.trainer.local_job import JobLayout
    return JobLayout(shards=tuple(hosts.host(h) for h in SHARD_HOSTS),
                     trainers=tuple(hosts.host(h) for h in TRAINER_HOSTS), oracle=hosts.host(ORACLE_HOST))


@dataclass
class HostsRun:
    """One training job on the hosts, as run_on_hosts saw it."""
    summary: dict              # train_command.summarize of its result
    metrics: dict              # what trainer 0 wrote
    per_step: dict | None      # each host's link counters per step over the timed window (LinkSampler.per_step)
    job_bytes: dict            # each host's link counters over the job
    by_class: dict[str, int]   # what the hosts of count_hosts sent over the job, per class (class_bytes)
    waited: float              # seconds spent waiting for the machine to go quiet first
    others: float              # cores other processes used when it started


def run_on_hosts(hosts, label: str, job, work: Path, job_layout, count_hosts, steps: int, max_quiet_wait: float,
                 sample_seconds: float) -> HostsRun:
    """Runs `job` on the hosts as job_layout places it, counting the kernel's bytes; a failed job's logs are
    kept (their directory is printed), the rest of its files go."""
    from embps.trainer.local_job import run_local_job
    from embps.trainer.train_command import summarize

    data_dir = work / slug(label)
    waited, others = train_bench.wait_for_quiet(max_quiet_wait)
    console.print(f"[bold]{label}[/bold]" + (f" (other processes use {others:.2f} cores)" if others > 0.2 else ""))
    try:
        with logs_kept_on_failure(data_dir, label, console):
            before = hosts.counters()
            with LinkSampler(hosts, data_dir, sample_seconds) as sampler:
                result = run_local_job(job, data_dir, layout=job_layout, show_progress=True,
                                       on_ports=count_services(hosts))
            after = hosts.counters()
            by_class = class_bytes(hosts, count_hosts)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    lo, hi = train_bench.window(steps)
    return HostsRun(summarize(result), result.metrics, sampler.per_step(lo - 1, hi - 1),
                    {name: asdict(after[name] - before[name]) for name in after}, by_class, waited, others)


def run_job(cfg: Config, hosts, mode: str, rate: float | None, work: Path) -> dict:
    from embps.testing.netns_hosts import LinkShape
    hosts.reshape(LinkShape(rate_mbit=rate))
    r = run_on_hosts(hosts, f"{mode} at {f'{rate:g} Mbit/s' if rate else 'unshaped links'}",
                     train_bench.job_config(cfg.train, mode), work, layout(hosts), hosts.names, cfg.train.steps,
                     cfg.max_quiet_wait, cfg.sample_seconds)
    s = r.summary
    run = {"mode": mode, "rate_mbit": rate, "step_seconds": s["step_seconds"], "steps": s["steps"],
           "final_loss": s["final_loss"], "eval_auc": s.get("eval_auc"), "gateway_ps_bytes": s["ps_bytes"],
           "cache_hit_rate": s["cache_hit_rate"], "bytes_per_step": traffic(r.per_step) if r.per_step else None,
           "job_bytes": traffic(r.job_bytes), "job_bytes_by_host": r.job_bytes, "job_bytes_by_class": r.by_class,
           "other_cores_at_start": r.others, "waited_seconds": r.waited}
    per = run["bytes_per_step"] or {}
    console.print(f"  {s['step_seconds'] * 1e3:.1f} ms/step; per step {per.get('between_hosts', 0) / 1e6:.2f} MB "
                  f"between hosts, busiest link {per.get('busiest_link', 0) / 1e6:.2f} MB; job "
                  f"{run['job_bytes']['between_hosts'] / 1e6:.1f} MB")
    return run


def dense_gradient_bytes(cfg: Config) -> int:
    from embps.datasets import open_dataset
    from embps.models import build_model
    info = open_dataset("synthetic", scale=cfg.train.scale).info
    model = build_model(cfg.train.model, info.n_dense, len(info.table_sizes), cfg.train.dim, seed=cfg.train.seed)
    return 4 * sum(p.numel() for p in model.parameters())


def train_part(cfg: Config, hosts, report: Report) -> None:
    work = Path(tempfile.mkdtemp(prefix="embps-cluster-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    runs: list[dict] = []
    try:
        shaped = sorted((r for r in cfg.rates_mbit if r), reverse=True)
        for i, rate in enumerate([None, *shaped]):   # unshaped first: the netbound rate comes from its direct run
            for mode in MODES if i % 2 == 0 else MODES[::-1]:   # alternating, so drift hits both modes alike
                runs.append(run_job(cfg, hosts, mode, rate, work))
        direct0 = next(r for r in runs if r["mode"] == "direct" and r["rate_mbit"] is None)
        busiest = direct0["bytes_per_step"]["busiest_link"]
        # A shaped link never makes a step faster, so the fastest direct run of any rate bounds the unshaped
        # step from above more tightly than one unshaped run on this shared machine does.
        compute = min(r["step_seconds"] for r in runs if r["mode"] == "direct")
        netbound = busiest * 8 / compute / 1e6
        report.note("train_direct_unshaped_compute_ms_per_step", compute * 1e3, "ms")
        report.note("train_netbound_rate_mbit", netbound, "Mbit/s")
        console.print(f"netbound rate: direct's busiest link carries {busiest / 1e6:.2f} MB per step and its unshaped "
                      f"step takes {compute * 1e3:.1f} ms (fastest direct run): {netbound:.0f} Mbit/s")
        # Two runs of each mode, alternating, and the faster of each: one job's step time swings by a
        # quarter between runs here, and the figure rests on this rate alone.
        repeats = [run_job(cfg, hosts, mode, round(netbound, 1), work) for mode in MODES[::-1] * NETBOUND_RUNS]
        at_netbound = {mode: min((r for r in repeats if r["mode"] == mode), key=lambda r: r["step_seconds"])
                       for mode in MODES}
        runs += [{**r, "netbound": True} for r in at_netbound.values()]
        report.info["netbound_step_seconds"] = {m: [r["step_seconds"] for r in repeats if r["mode"] == m] for m in MODES}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    report.figure("train_sync_vs_direct_speedup_netbound",
                  at_netbound["direct"]["step_seconds"] / at_netbound["sync"]["step_seconds"], "x")
    unshaped = {r["mode"]: r for r in runs if r["rate_mbit"] is None}
    report.figure("train_wire_bytes_direct_vs_sync",
                  unshaped["direct"]["job_bytes"]["between_hosts"] / unshaped["sync"]["job_bytes"]["between_hosts"], "x")
    report.note("train_wire_service_bytes_direct_vs_sync", unshaped["direct"]["job_bytes_by_class"][SERVICES]
                / unshaped["sync"]["job_bytes_by_class"][SERVICES], "x")
    # The most any cache could reach: sync sending nothing but what no cache changes (torch.distributed's
    # bytes, DDP's allreduce of the dense gradients above all, which the kernel counts the same in both modes).
    report.note("train_wire_bytes_direct_vs_sync_ceiling", unshaped["direct"]["job_bytes"]["between_hosts"]
                / sum(sent for what, sent in unshaped["sync"]["job_bytes_by_class"].items() if what != SERVICES), "x")
    report.note("train_shard_link_bytes_direct_vs_sync",
                unshaped["direct"]["job_bytes"]["shard_links"] / unshaped["sync"]["job_bytes"]["shard_links"], "x")
    report.note("train_gateway_ps_bytes_direct_vs_sync",
                unshaped["direct"]["gateway_ps_bytes"] / unshaped["sync"]["gateway_ps_bytes"], "x")
    for run in runs:
        tag = "netbound" if run.get("netbound") else (f"{run['rate_mbit']:g}mbit" if run["rate_mbit"] else "unshaped")
        report.note(f"train_{run['mode']}_{tag}_ms_per_step", run["step_seconds"] * 1e3, "ms")
        if run["bytes_per_step"]:
            for what in ("between_hosts", "busiest_link", "shard_links", "oracle_link"):
                report.note(f"train_{run['mode']}_{tag}_{what}_bytes_per_step", run["bytes_per_step"][what], "B")
    for mode in MODES:
        report.note(f"train_{mode}_job_bytes_between_hosts", unshaped[mode]["job_bytes"]["between_hosts"], "B")
        for what, sent in unshaped[mode]["job_bytes_by_class"].items():
            report.note(f"train_{mode}_job_bytes_{'torch_distributed' if what != SERVICES else what}", sent, "B")
        report.note(f"train_{mode}_unshaped_trainer_links_bytes_per_step",
                    sum(unshaped[mode]["bytes_per_step"][f"{h}_{d}"] for h in TRAINER_HOSTS for d in ("tx", "rx")), "B")
    report.note("train_sync_unshaped_cache_hit_rate", unshaped["sync"]["cache_hit_rate"], "fraction")
    # What both modes put between the trainer hosts whatever the cache does: DDP's allreduce of the dense
    # gradients (with 2 ranks each trainer sends and receives about one copy of them per step).
    report.note("train_dense_gradient_bytes_per_trainer_per_step", dense_gradient_bytes(cfg), "B")
    report.info["runs"] = runs


# ---- the shard against Redis across one shaped link ---------------------------------------------

def link_bytes_per_key(hosts, call, cfg: shard_bench.Config, calls: int = 64) -> float:
    """Bytes per key in the busier direction of the server's link (the one the rate limits)."""
    before = hosts.counters()[SERVER_HOST]
    for i in range(calls):
        call(0, i)
    crossed = hosts.counters()[SERVER_HOST] - before
    return max(crossed.tx_bytes, crossed.rx_bytes) / (calls * cfg.batch)


def shard_part(cfg: Config, report: Report) -> None:
    from embps.common.local_cluster import LocalShard
    from embps.testing.netns_hosts import LinkShape, NetnsHosts

    scfg = cfg.shard
    wl = shard_bench.make_workload(scfg, report)
    tmp = tempfile.mkdtemp(prefix="embps-cluster-shard-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    sides: list = []
    try:
        with contextlib.ExitStack() as stack:
            hosts = stack.enter_context(NetnsHosts([SERVER_HOST], LinkShape(rate_mbit=SHARD_LINK_MBIT)))
            server = hosts.host(SERVER_HOST)
            progress = stack.enter_context(Progress(*Progress.get_default_columns(), TimeElapsedColumn()))
            port, redis_pid = stack.enter_context(shard_bench.redis_server(tmp, server.address, server.enter))
            rs = shard_bench.RedisSide(port, scfg, wl, server.address)
            sides.append(rs)
            rs.load(progress, report)
            rs.check()
            shard = stack.enter_context(LocalShard(os.path.join(tmp, "shard"), host=server))
            ours = shard_bench.ShardSide(shard.address, "auto", scfg, wl)
            sides.append(ours)
            report.info["shard_1gbit_data_path"] = ours.kind
            shard_bench.load_shard(ours, progress, report)
            np.testing.assert_array_equal(ours.lookup(0, 0), wl.dense[wl.batch_rows[0]])
            for name, call in (("shard_lookup", ours.lookup), ("redis_mget", rs.lookup)):
                report.note(f"{name}_1gbit_link_bytes_per_key", link_bytes_per_key(hosts, call, scfg), "B")
            rates = shard_bench.keys_per_s(report, scfg, shard_bench.throughput_passes(
                progress, f"lookup passes ({SHARD_LINK_MBIT} Mbit/s link)",
                {"shard_lookup_1gbit": (ours.lookup, shard.process.pid), "redis_mget_1gbit": (rs.lookup, redis_pid)}, scfg))
            report.figure("shard_lookup_vs_redis_1gbit", rates["shard_lookup_1gbit"] / rates["redis_mget_1gbit"], "x")
            shard_bench.check_update(ours, np.arange(0, scfg.batch))
            for name, call in (("shard_update", ours.update), ("redis_mset", rs.update)):
                report.note(f"{name}_1gbit_link_bytes_per_key", link_bytes_per_key(hosts, call, scfg), "B")
            rates |= shard_bench.keys_per_s(report, scfg, shard_bench.throughput_passes(
                progress, f"update passes ({SHARD_LINK_MBIT} Mbit/s link)",
                {"shard_update_1gbit": (ours.update, shard.process.pid), "redis_mset_1gbit": (rs.update, redis_pid)}, scfg))
            report.figure("shard_update_vs_redis_1gbit", rates["shard_update_1gbit"] / rates["redis_mset_1gbit"], "x")
            wire = SHARD_LINK_MBIT * 1e6 / 8
            for name in ("shard_lookup", "redis_mget", "shard_update", "redis_mset"):
                per_key = report.context[f"{name}_1gbit_link_bytes_per_key"]["value"]
                report.note(f"{name}_1gbit_link_utilisation", rates[f"{name}_1gbit"] * per_key / wire, "fraction")
            for side in reversed(sides):
                side.close()
            sides.clear()
    finally:
        for side in sides:
            with contextlib.suppress(Exception):
                side.close()
        shutil.rmtree(tmp, ignore_errors=True)


# ---- output ---------------------------------------------------------------------------------------

def plot(report: Report, goals: dict, cfg: Config, path: Path) -> None:
    runs = report.info.get("runs", [])
    fig, (ax_time, ax_bytes, ax_fig) = plt.subplots(1, 3, figsize=(19, 5.2), gridspec_kw={"width_ratios": [1.4, 1.4, 1]})
    shaped = sorted({r["rate_mbit"] for r in runs if r["rate_mbit"] and not r.get("netbound")})
    unshaped_x = (max(shaped) if shaped else 1000) * 3
    colors = {"sync": "tab:green", "direct": "tab:olive"}
    for mode in MODES:
        curve = sorted(((r["rate_mbit"] or unshaped_x), r) for r in runs if r["mode"] == mode and not r.get("netbound"))
        xs = [x for x, _ in curve]
        ax_time.plot(xs, [r["step_seconds"] * 1e3 for _, r in curve], "o-", color=colors[mode], label=f"{mode}")
        ax_bytes.plot(xs, [(r["bytes_per_step"] or {}).get("between_hosts", np.nan) / 1e6 for _, r in curve], "o-",
                      color=colors[mode], label=f"{mode}: between hosts")
        ax_bytes.plot(xs, [(r["bytes_per_step"] or {}).get("busiest_link", np.nan) / 1e6 for _, r in curve], "s--",
                      color=colors[mode], alpha=0.6, label=f"{mode}: busiest link direction")
        ax_bytes.plot(xs, [(r["bytes_per_step"] or {}).get("shard_links", np.nan) / 1e6 for _, r in curve], "^:",
                      color=colors[mode], alpha=0.8, label=f"{mode}: shard hosts' links (PS traffic)")
        for r in runs:
            if r["mode"] == mode and r.get("netbound"):
                ax_time.plot([r["rate_mbit"]], [r["step_seconds"] * 1e3], "*", markersize=15, color=colors[mode],
                             label=f"{mode} at the netbound rate")
    if "train_netbound_rate_mbit" in report.context:
        ax_time.axvline(report.context["train_netbound_rate_mbit"]["value"], color="gray", linestyle="dotted",
                        label=f"netbound rate {report.context['train_netbound_rate_mbit']['value']:.0f} Mbit/s")
    netbound = sorted({round(r["rate_mbit"]) for r in runs if r.get("netbound")})
    for ax in (ax_time, ax_bytes):
        ax.set_xscale("log")
        ticks = sorted({*shaped, *netbound}) + [unshaped_x]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks[:-1]] + ["unshaped"])
        ax.minorticks_off()
        ax.set_xlabel("link rate, each direction of every host's link (Mbit/s)")
        ax.legend(fontsize=7)
    ax_time.set_ylabel("ms per step (middle half of the run)")
    latency = "latency emulated" if report.info.get("latency_emulated") else "latency not emulated (no netem)"
    ax_time.set_title(f"DLRM, global batch {cfg.train.global_batch}: 2 trainer hosts, 2 shard hosts, oracle host\n"
                      f"{latency}")
    ax_bytes.set_ylabel("MB per step, kernel counters")
    ax_bytes.set_title("bytes on the wire per step (Ethernet frames)")
    names = [n for n in ("train_sync_vs_direct_speedup_netbound", "train_wire_bytes_direct_vs_sync",
                         "shard_lookup_vs_redis_1gbit", "shard_update_vs_redis_1gbit") if n in report.figures]
    values = [report.figures[n]["value"] for n in names]
    bar_colors = [("tab:green" if goals[n]["met"] else "tab:red") if n in goals else "tab:gray" for n in names]
    bars = ax_fig.bar(range(len(names)), values, color=bar_colors)
    ax_fig.bar_label(bars, fmt="%.2f")
    for i, n in enumerate(names):
        if n in goals:
            ax_fig.hlines(goals[n]["target"], i - 0.4, i + 0.4, colors="black", linestyles="dashed")
    if (ceiling := report.context.get("train_wire_bytes_direct_vs_sync_ceiling")) is not None:
        i = names.index("train_wire_bytes_direct_vs_sync")
        ax_fig.hlines(ceiling["value"], i - 0.4, i + 0.4, colors="tab:purple", linestyles="dotted")
        ax_fig.annotate(f"ceiling {ceiling['value']:.2f}\n(sync's services silent)", (i + 0.42, ceiling["value"]),
                        fontsize=7, color="tab:purple", va="center")
    ax_fig.axhline(1.0, color="gray", linewidth=0.8)
    labels = {"train_sync_vs_direct_speedup_netbound": "direct ÷ sync\ns/step, netbound",
              "train_wire_bytes_direct_vs_sync": "direct ÷ sync\nwire bytes",
              "shard_lookup_vs_redis_1gbit": "shard ÷ Redis\nlookup, 1 Gbit/s",
              "shard_update_vs_redis_1gbit": "shard ÷ Redis\nupdate, 1 Gbit/s"}
    ax_fig.set_xticks(range(len(names)), [labels[n] for n in names], fontsize=8)
    ax_fig.set_title("figures (green: goal met, red: missed, gray: no goal; dashed: goal)")
    save_figure(fig, path)


def hosts_can_be_made(bench: str) -> bool:
    """Whether this process can make hosts (else it says why `bench` is skipped); SIGTERM then unwinds
    like Ctrl-C, so the harness removes its namespaces (a SIGKILL's leftovers go at the next start)."""
    from embps.testing.netns_hosts import unavailable_reason
    reason = unavailable_reason()
    if reason:
        print(f"{bench} skipped: {reason}")
        return False
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return True


def main() -> int:
    run = BenchRun("cluster")
    from embps.testing.netns_hosts import NamespacesUnavailable, NetnsHosts
    cfg = parse_args()
    if not hosts_can_be_made("cluster bench"):
        return 0
    report = Report(GOALS)
    print(f"cluster bench: DLRM, global batch {cfg.train.global_batch}, {cfg.train.steps} steps per run, rates "
          f"{[r or 'unshaped' for r in cfg.rates_mbit]} Mbit/s; load average {run.load['before'][0]:.2f}", flush=True)
    try:
        if not cfg.skip_train:
            with NetnsHosts([*TRAINER_HOSTS, *SHARD_HOSTS, ORACLE_HOST]) as hosts:
                report.info["latency_emulated"] = hosts.latency_emulated
                report.info["latency_note"] = hosts.latency_note
                console.print(hosts.latency_note)
                train_part(cfg, hosts, report)
        if not cfg.skip_shard:
            shard_part(cfg, report)
    except NamespacesUnavailable as error:
        print(f"cluster bench skipped: {error}")
        return 0
    timing = (f"training: s/step over the middle half of each run of {cfg.train.steps} steps (train_command.summarize, "
              f"trainer 0's step end times), one run per mode and rate ({NETBOUND_RUNS} at the netbound rate, the "
              f"faster kept); bytes from the kernel counters of every "
              f"host link, sampled every {cfg.sample_seconds} s with trainer 0's step count. shard: "
              f"bench/shard_bench.py's throughput passes (best of {cfg.shard.reps}) across one "
              f"{SHARD_LINK_MBIT} Mbit/s link")
    run.save(report, RESULTS_DIR, cfg, timing, train_bench.environment(), plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
