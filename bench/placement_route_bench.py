"""Placement routing benchmark: what routing a batch of keys by a placement file costs, next to the lookup
RPC the keys are routed for.

Placement: every row of the Criteo Kaggle tables (26 features, 33.8 M rows; --quick: the tables scaled by
0.3, 10.1 M rows), each row's owner drawn at random over 4 hosts, saved as a placement file and loaded
back (checksum verified) on /dev/shm.  Batches: keys drawn uniformly over all rows (no locality, so nearly
every key's slot is a cache miss: the worst case), plus 1% keys the placement does not list (routed by
jump hash).  Contenders, each over the same pre-generated batches:
  - PlacementRouter.shard_of (what PSClient, the gateways and the reshard tool call),
  - JumpHashRouter.shard_of (hash placement, today's default),
  - np.searchsorted over the placement's sorted keys (the obvious vectorised lookup, for context),
  - PSClient.lookup of the batch's rows from one `embps ps-shard` on loopback (dim 32; a table of 200 k
    rows loaded first, batches drawn from them), on the default data path and on gRPC.
Timing: per contender, one untimed warm-up pass, then `reps` passes of about pass_seconds each (cycling over
the batches); the best pass is kept, every pass is in the JSON.

Figures (goals in GOALS):
  placement_route_ns_per_key     PlacementRouter.shard_of, ns per key, batches of 4096 keys
  placement_route_vs_lookup_rpc  that time / PSClient.lookup's time for the same batch (default data path)
Context: every contender's ns/key at each batch size, the file's save and load seconds, the router's build
seconds and its memory beyond the placement.  Writes bench/results/placement_route(-quick).json and .png.
"""

import argparse
import contextlib
import math
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from bench_common import Report, save_figure, save_results  # noqa: E402

from embps.api import InitializerSpec, OptimizerSpec, TableSpec  # noqa: E402
from embps.client import ClusterConfig, JumpHashRouter, PlacementRouter, PSClient  # noqa: E402
from embps.common.job_config import FEATURE_SHIFT  # noqa: E402
from embps.common.local_cluster import LocalShard  # noqa: E402
from embps.datasets import CRITEO_KAGGLE_TABLE_SIZES  # noqa: E402
from embps.placement import Placement  # noqa: E402
from embps.placement.placement_file import load_placement, save_placement  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
GOALS = {"placement_route_vs_lookup_rpc": ("<=", 0.2)}   # at most a fifth of the fastest RPC
HEADLINE_BATCH = 4096


@dataclass(frozen=True)
class Config:
    scale: float                 # of the Criteo Kaggle table sizes
    reps: int
    pass_seconds: float
    hosts: int = 4
    batch_sizes: tuple[int, ...] = (512, 4096, 65536)
    rpc_batch_sizes: tuple[int, ...] = (512, 4096)
    n_batches: int = 64          # distinct batches per batch size
    unknown_fraction: float = 0.01
    rpc_rows: int = 200_000
    dim: int = 32
    seed: int = 0
    results_name: str = "placement_route"


def parse_args() -> Config:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10 M rows, shorter passes (about a minute)")
    args = parser.parse_args()
    if args.quick:
        return Config(scale=0.3, reps=3, pass_seconds=0.3, results_name="placement_route-quick")
    return Config(scale=1.0, reps=5, pass_seconds=1.0)


def criteo_keys(scale: float) -> np.ndarray:
    sizes = [max(2, math.ceil(size * scale)) for size in CRITEO_KAGGLE_TABLE_SIZES]
    return np.concatenate([(np.uint64(f) << np.uint64(FEATURE_SHIFT)) | np.arange(n, dtype=np.uint64)
                           for f, n in enumerate(sizes)])


def key_batches(keys: np.ndarray, cfg: Config, batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Uniform over the rows, with unknown keys mixed in: an id past its table, or any 64-bit key."""
    out = []
    for _ in range(cfg.n_batches):
        chosen = keys[rng.integers(0, len(keys), batch)]
        unknown = rng.random(batch) < cfg.unknown_fraction
        chosen[unknown] = rng.integers(0, 2**64, int(unknown.sum()), dtype=np.uint64, endpoint=False)
        out.append(chosen)
    return out


def timed_passes(call, batches: list, cfg: Config) -> list[float]:
    """Seconds per batch, one entry per timed pass."""
    started = time.perf_counter()
    for b in batches:                            # warm-up, and the size of a timed pass
        call(b)
    per_batch = (time.perf_counter() - started) / len(batches)
    calls = max(len(batches), int(cfg.pass_seconds / max(per_batch, 1e-9)))
    passes = []
    for _ in range(cfg.reps):
        started = time.perf_counter()
        for i in range(calls):
            call(batches[i % len(batches)])
        passes.append((time.perf_counter() - started) / calls)
    return passes


def build_placement(cfg: Config, report: Report, tmp: str) -> Placement:
    rng = np.random.default_rng(cfg.seed)
    keys = criteo_keys(cfg.scale)
    placement = Placement(hosts=cfg.hosts, row_keys=keys,
                          row_owner=rng.integers(0, cfg.hosts, len(keys), dtype=np.uint16),
                          sample_host=np.zeros(0, np.uint16), mirrors=(keys[:0],) * cfg.hosts, dataset="bench")
    path = os.path.join(tmp, "bench.placement")
    started = time.perf_counter()
    save_placement(path, placement)
    report.note("placement_save_seconds", time.perf_counter() - started, "s")
    started = time.perf_counter()
    loaded = load_placement(path, hosts=cfg.hosts, dataset="bench")
    report.note("placement_load_seconds", time.perf_counter() - started, "s")
    report.note("placement_rows", len(keys), "rows")
    report.note("placement_file_mb", os.path.getsize(path) / 1e6, "MB")
    return loaded


def route_contenders(placement: Placement, cfg: Config, report: Report) -> dict:
    started = time.perf_counter()
    router = PlacementRouter(placement)
    report.note("placement_router_build_seconds", time.perf_counter() - started, "s")
    report.note("placement_router_extra_mb", router.index_bytes / 1e6, "MB")
    jump = JumpHashRouter(cfg.hosts)
    return {"placement_route": router.shard_of, "jump_hash_route": jump.shard_of,
            "searchsorted_route": lambda keys: placement.row_owner[
                np.minimum(np.searchsorted(placement.row_keys, keys), len(placement.row_keys) - 1)]}


@contextlib.contextmanager
def rpc_contenders(cfg: Config, tmp: str):
    """PSClient.lookup against one shard, on its default path and on gRPC, and the keys it holds."""
    rng = np.random.default_rng(cfg.seed + 1)
    keys = np.unique(rng.integers(0, 2**64, cfg.rpc_rows, dtype=np.uint64, endpoint=False))
    spec = TableSpec(dim=cfg.dim, capacity=2 * cfg.rpc_rows, optimizer=OptimizerSpec("adagrad", lr=0.01, eps=1e-8),
                     initializer=InitializerSpec("uniform", 0.05, seed=1))
    with LocalShard(os.path.join(tmp, "shard")) as shard, \
            PSClient(ClusterConfig.from_addresses([shard.address])) as default, \
            PSClient(ClusterConfig.from_addresses([shard.address], data_path="grpc")) as grpc_only:
        default.create_table("bench", spec)
        rows = rng.normal(0, 0.01, (len(keys), cfg.dim)).astype(np.float32)
        for part in np.array_split(np.arange(len(keys)), 20):
            default.assign("bench", keys[part], rows[part])
        yield keys, {"lookup_rpc": lambda k: default.lookup("bench", k),
                     "lookup_rpc_grpc": lambda k: grpc_only.lookup("bench", k)}, default.data_path_kinds()[0]


def run(cfg: Config) -> Report:
    report = Report(GOALS)
    rng = np.random.default_rng(cfg.seed + 2)
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp:
        placement = build_placement(cfg, report, tmp)
        routes = route_contenders(placement, cfg, report)
        ns = {}
        for batch in cfg.batch_sizes:
            batches = key_batches(placement.row_keys, cfg, batch, rng)
            for name, call in routes.items():
                ns[(name, batch)] = 1e9 * min(report.passes({f"{name}_{batch}": timed_passes(call, batches, cfg)})
                                              .values()) / batch
                report.note(f"{name}_ns_per_key_batch_{batch}", ns[(name, batch)], "ns")
        del placement, routes
        with rpc_contenders(cfg, tmp) as (keys, rpcs, path):
            report.info["default_data_path"] = path
            for batch in cfg.rpc_batch_sizes:
                batches = [keys[rng.integers(0, len(keys), batch)] for _ in range(cfg.n_batches)]
                for name, call in rpcs.items():
                    ns[(name, batch)] = 1e9 * min(report.passes({f"{name}_{batch}": timed_passes(call, batches, cfg)})
                                                  .values()) / batch
                    report.note(f"{name}_ns_per_key_batch_{batch}", ns[(name, batch)], "ns")
    report.figure("placement_route_ns_per_key", ns[("placement_route", HEADLINE_BATCH)], "ns")
    report.figure("placement_route_vs_lookup_rpc",
                  ns[("placement_route", HEADLINE_BATCH)] / ns[("lookup_rpc", HEADLINE_BATCH)], "x")
    report.note("placement_route_vs_lookup_rpc_grpc",
                ns[("placement_route", HEADLINE_BATCH)] / ns[("lookup_rpc_grpc", HEADLINE_BATCH)], "x")
    report.info["ns_per_key"] = {f"{name} batch {batch}": value for (name, batch), value in ns.items()}
    return report


def plot(report: Report, cfg: Config, goals: dict, path: Path) -> None:
    names = ["placement_route", "jump_hash_route", "searchsorted_route", "lookup_rpc", "lookup_rpc_grpc"]
    fig, ax = plt.subplots(figsize=(10, 5))
    width = 0.8 / len(cfg.batch_sizes)
    for k, batch in enumerate(cfg.batch_sizes):
        values = [report.context.get(f"{n}_ns_per_key_batch_{batch}", {}).get("value", 0) for n in names]
        bars = ax.bar(np.arange(len(names)) + (k - (len(cfg.batch_sizes) - 1) / 2) * width, values, width,
                      label=f"batches of {batch} keys")
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_yscale("log")
    ax.set_ylabel("ns per key (best pass)")
    met = ", ".join(f"{n}: {'met' if g['met'] else 'MISSED'}" for n, g in goals.items())
    ax.set_title(f"routing {int(report.context['placement_rows']['value']):,} placed rows over {cfg.hosts} "
                 f"hosts vs a lookup RPC ({met})")
    ax.legend()
    save_figure(fig, path)


def main() -> None:
    started = time.perf_counter()
    cfg = parse_args()
    print(f"placement route bench: Criteo tables x {cfg.scale}, {cfg.hosts} hosts, batches {cfg.batch_sizes}",
          flush=True)
    report = run(cfg)
    timing = (f"best of {cfg.reps} timed passes of ~{cfg.pass_seconds:g} s after one warm-up pass, per contender "
              f"and batch size, cycling over {cfg.n_batches} pre-generated batches")
    environment = {"python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine(),
                   "cpus": os.cpu_count()}
    save_results(report, RESULTS_DIR, cfg.results_name, "placement_route", cfg, timing, environment,
                 time.perf_counter() - started, lambda goals, path: plot(report, cfg, goals, path))


if __name__ == "__main__":
    main()
