"""Training benchmark: two trainers through the parameter server, with Bagpipe lookahead caching (`sync`)
or without (`direct`), against one process holding every table in PyTorch and against TorchRec on CPU.

Workload: DLRM (bottom MLP 13-128-64-dim, dot interaction, top MLP 256-128-1) with embedding dim 32 on the
seeded Criteo-like synthetic data at scale 0.01 (26 tables, 337,648 rows in all, the largest 101,313; 92%
of a table's lookups go to its hottest 1% of rows), global batch 2048, Adagrad (lr 0.05) on the embeddings
and Adam (lr 1e-3) on the dense part.  --quick: global batch 1024 and fewer steps.

Contenders, all on the same global batches 0, 1, ... of the train split:
  sync     `run_local_job` with mode "sync": 2 shards, the oracle cacher, 2 gateways and 2 trainers as
           processes on loopback (the shards' files in a temporary directory on /dev/shm); lookahead 64,
           cleanup proportion 0.25.  Each trainer runs torch with 1 thread (as `embps trainer` sets it).
  direct   the same job with mode "direct": every batch's rows are read from the shards and every
           gradient is applied there.
  local    one process, embps.models.LocalTrainer: the same model with every table an nn.Embedding
           (sparse=True) starting from the shards' initial rows, torch's sparse Adagrad.
  torchrec TorchRec on CPU (bench/torchrec_baseline.torchrec_iteration_seconds: a fused, fbgemm-backed
           EmbeddingBagCollection in front of the same model).
The single-process contenders run with the torch thread count (1 or 2) that a short probe found faster
on this machine at the time; both probe figures are kept.

Figures (goals in GOALS):
  train_sync_vs_direct_speedup   s/step of direct / s/step of sync
  train_ps_bytes_direct_vs_sync  payload bytes to and from the shards over the whole job, direct / sync,
                                 as the gateways count them (sync: its prefetches and evictions with
                                 their Adagrad state, the rows it streams past the cache, and its final
                                 write-back of every cached row)
  train_sync_vs_local_torch      s/step of sync / s/step of local
  train_sync_vs_torchrec         s/step of TorchRec / s/step of sync
Context: s/step and samples/s of every contender, cache hit rate, bytes per mode (in / out), wall times,
and where the 2 cores went during each job's timed steps: CPU ms per step of its trainers, gateways,
shards and oracle (from /proc, sampled every 0.1 s), of this process, of everything else on the machine
("other": other sessions share it) and idle.  Before each run the benchmark waits (up to
--max-quiet-wait s) for other processes to go quiet, and it says so when they were busy anyway.

Timing: per-step time over the middle half of each run, the same steps for every contender: the time
from the end of step n//4 to the end of step 3n//4, divided by the steps in between (for the jobs this is
`embps.trainer.train_command.summarize`, from trainer 0's step end times; it leaves out process start-up,
the first lookahead prefetches, the final write-back and the evaluation).  The single-process contenders
run batches 0 .. 3n//4 and time the same window.  Contenders alternate over `rounds` rounds (the second
round in reverse order) so that drift on this shared 2-core machine hits them alike; each contender's
fastest round counts (interference only ever slows a run down) and every round is kept in the JSON.

Prints `figure NAME VALUE UNIT` and `context NAME VALUE UNIT` lines and writes bench/results/train.json
and train.png (train-quick.* with --quick).
"""

import argparse
import contextlib
import hashlib
import importlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402

from bench_common import BenchRun, Report, logs_kept_on_failure, mount_of, save_figure  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
GOALS = {
    "train_sync_vs_direct_speedup": (">=", 1.0),   # on loopback sync must never be slower
    "train_ps_bytes_direct_vs_sync": (">=", 5.0),
    "train_sync_vs_local_torch": ("<=", 1.1),
    "train_sync_vs_torchrec": (">=", 1.0),
}
CONTENDERS = ("sync", "direct", "local", "torchrec")
console = Console()


@dataclass(frozen=True)
class Config:
    steps: int
    global_batch: int
    rounds: int
    dim: int = 32
    scale: float = 0.01
    model: str = "dlrm"
    trainers: int = 2
    shards: int = 2
    lookahead: int = 64
    cleanup_proportion: float = 0.25
    emb_optimizer: str = "adagrad"
    emb_lr: float = 0.05
    emb_eps: float = 1e-8
    dense_optimizer: str = "adam"
    dense_lr: float = 1e-3
    eval_batches: int = 2
    probe_steps: int = 6          # timed steps per thread count in the probe (after 2 untimed ones)
    max_quiet_wait: float = 30.0  # before each run, wait up to this long for other processes to go quiet
    seed: int = 0
    results_name: str = "train"
    skip_torchrec: bool = False


def parse_args() -> Config:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="global batch 1024, 60 steps, one round (well under a minute)")
    parser.add_argument("--steps", type=int, help="training steps per run (default 160, quick 60)")
    parser.add_argument("--batch", type=int, help="global batch (default 2048, quick 1024)")
    parser.add_argument("--dim", type=int, help="embedding dim (default 32)")
    parser.add_argument("--rounds", type=int, help="rounds over the contenders (default 2, quick 1)")
    parser.add_argument("--lookahead", type=int, help="sync mode's lookahead L (default 64)")
    parser.add_argument("--scale", type=float, help="synthetic data: fraction of Criteo's table sizes (default 0.01)")
    parser.add_argument("--max-quiet-wait", type=float,
                        help="seconds to wait before each run for other processes to go quiet (default 30, quick 5)")
    parser.add_argument("--skip-torchrec", action="store_true", help="leave TorchRec out (recorded as unavailable)")
    parser.add_argument("--name", help="results file name under bench/results (default train / train-quick)")
    args = parser.parse_args()
    if args.quick:
        cfg = Config(steps=60, global_batch=1024, rounds=1, max_quiet_wait=5.0, results_name="train-quick")
    else:
        cfg = Config(steps=160, global_batch=2048, rounds=2)
    changes = {k: v for k, v in {"steps": args.steps, "global_batch": args.batch, "dim": args.dim,
                                 "rounds": args.rounds, "lookahead": args.lookahead, "scale": args.scale,
                                 "results_name": args.name, "max_quiet_wait": args.max_quiet_wait}.items()
               if v is not None}
    changes["skip_torchrec"] = args.skip_torchrec
    cfg = Config(**{**asdict(cfg), **changes})
    if cfg.steps < 8:
        parser.error("--steps must be at least 8 (the timed window is the middle half)")
    return cfg


def job_config(cfg: Config, mode: str):
    from embps.common.job_config import JobConfig
    return JobConfig(dataset="synthetic", dataset_options={"scale": cfg.scale}, model=cfg.model, mode=mode,
                     trainers=cfg.trainers, global_batch=cfg.global_batch, steps=cfg.steps,
                     eval_batches=cfg.eval_batches, dim=cfg.dim, emb_optimizer=cfg.emb_optimizer,
                     emb_lr=cfg.emb_lr, emb_eps=cfg.emb_eps, dense_optimizer=cfg.dense_optimizer,
                     dense_lr=cfg.dense_lr, lookahead=cfg.lookahead, cleanup_proportion=cfg.cleanup_proportion,
                     seed=cfg.seed, timeout_seconds=120.0)


def window(steps: int) -> tuple[int, int]:
    """The timed steps, as summarize() takes them: the durations of steps lo .. hi-1 (0-based), i.e. the
    time from the end of step lo-1 = steps//4 to the end of step hi-1 = 3*steps//4."""
    return steps // 4 + 1, 3 * steps // 4 + 1


# ---- the distributed jobs -------------------------------------------------------------------------

ROLES = (("trainer-gateway", "gateways"), ("oracle-cacher", "oracle"), ("ps-shard", "shards"), ("trainer", "trainers"))
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_ticks(pid: int | str) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])   # utime + stime (fields 14 and 15 of stat)


def _machine_busy_ticks() -> int:
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(values) - values[3] - values[4]   # all but idle and iowait


def wait_for_quiet(max_seconds: float, threshold_cores: float = 0.2, interval: float = 0.5) -> tuple[float, float]:
    """Waits (at most max_seconds) until the rest of the machine uses less than threshold_cores over an
    interval: other sessions share these 2 cores.  Returns (seconds waited, cores the others used last)."""
    started = time.perf_counter()
    while True:
        own, machine, t = _cpu_ticks(os.getpid()) or 0, _machine_busy_ticks(), time.perf_counter()
        time.sleep(interval)
        busy = (_machine_busy_ticks() - machine) - ((_cpu_ticks(os.getpid()) or 0) - own)
        others = max(0.0, busy / CLOCK_TICKS / (time.perf_counter() - t))
        waited = time.perf_counter() - started
        if others < threshold_cores or waited >= max_seconds:
            return waited, others


class StepSampler:
    """A thread that takes a sample every `interval` s, each tagged with trainer 0's step count (the
    lines of the job's progress file); window() finds the samples that bound a window of steps."""

    def __init__(self, data_dir: Path, interval: float, name: str):
        self.progress, self.interval = data_dir / "out" / "progress.jsonl", interval
        self.samples: list[tuple] = []   # (steps, *what sample() returns)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def sample(self) -> tuple:
        raise NotImplementedError

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    def _steps(self) -> int:
        try:
            return self.progress.read_bytes().count(b"\n")
        except OSError:
            return 0

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            self.samples.append((self._steps(), *self.sample()))

    def window(self, first: int, last: int) -> tuple[tuple, tuple, int] | None:
        """(the sample where `first` steps were done, the one where `last` were, the steps between)."""
        start = next((s for s in self.samples if s[0] >= first), None)
        end = next((s for s in reversed(self.samples) if s[0] <= last), None)
        if start is None or end is None or end[0] <= start[0]:
            return None
        return start, end, end[0] - start[0]


class CpuSampler(StepSampler):
    """Samples the CPU time of the job's processes by role (those whose command line names the job's
    data directory), of this process, and of the whole machine; per_step() turns the samples into CPU
    ms per step over a window of steps."""

    def __init__(self, data_dir: Path, interval: float = 0.1):
        super().__init__(data_dir, interval, "cpu-sampler")
        self.marker = str(data_dir)
        self.roles: dict[int, str] = {}
        self.last: dict[int, int] = {}               # pid -> last ticks seen (a process's ticks outlive it here)
        self.taken = 0
        # samples: (step, ticks by role, this process's ticks, machine's busy ticks, perf_counter seconds)

    def _scan(self) -> None:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in self.roles:
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if self.marker in cmdline and "embps.cli" in cmdline:
                role = next((r for word, r in ROLES if f" {word} " in cmdline), None)
                if role:
                    self.roles[int(entry.name)] = role

    def sample(self) -> tuple:
        if self.taken % 10 == 0:
            self._scan()
        self.taken += 1
        by_role: dict[str, int] = {}
        for pid, role in self.roles.items():
            ticks = _cpu_ticks(pid)
            if ticks is not None:
                self.last[pid] = ticks
            by_role[role] = by_role.get(role, 0) + self.last.get(pid, 0)
        return by_role, _cpu_ticks(os.getpid()) or 0, _machine_busy_ticks(), time.perf_counter()

    def per_step(self, first: int, last: int) -> dict[str, float] | None:
        """CPU ms per step by role from the sample where `first` steps were done to the one where `last` were,
        plus 'bench' (this process), 'other' (the rest of the machine) and 'idle' (cores not used)."""
        if (bounds := self.window(first, last)) is None:
            return None
        start, end, steps = bounds
        ms = 1e3 / CLOCK_TICKS / steps
        out = {role: (end[1].get(role, 0) - start[1].get(role, 0)) * ms for _, role in ROLES}
        out["bench"] = (end[2] - start[2]) * ms
        machine = (end[3] - start[3]) * ms
        out["other"] = max(0.0, machine - sum(out.values()))
        wall_ms = (end[4] - start[4]) * 1e3 / steps
        out["idle"] = max(0.0, (os.cpu_count() or 1) * wall_ms - machine)
        out["wall_ms"] = wall_ms
        out["sampled_steps"] = steps
        return out


def run_job(cfg: Config, mode: str, work: Path, run_index: int) -> dict:
    from embps.trainer.local_job import run_local_job
    from embps.trainer.train_command import summarize

    job = job_config(cfg, mode)
    data_dir = work / f"{mode}-{run_index}"
    started = time.perf_counter()
    try:
        with logs_kept_on_failure(data_dir, f"{mode} job", console):
            with CpuSampler(data_dir) as sampler:
                result = run_local_job(job, data_dir, n_shards=cfg.shards, show_progress=True)
            wall = time.perf_counter() - started
            s = summarize(result)
            lo, hi = window(cfg.steps)
            gateways = result.metrics["gateways"]
            return {
                **s,
                "ps_bytes_in": sum(g.get("ps_bytes_in", 0) for g in gateways),
                "ps_bytes_out": sum(g.get("ps_bytes_out", 0) for g in gateways),
                "rows_fetched": sum(g.get("rows_fetched", 0) for g in gateways),
                "rows_used": sum(g.get("rows_used", 0) for g in gateways),
                "gateway_wait_seconds": [g.get("wait_seconds", 0.0) for g in gateways],
                "trainer_seconds": result.seconds,          # from the first trainer's start to the last one's exit
                "wall_seconds": wall,                       # with the shards', oracle's and gateways' start-up
                "training_seconds": result.metrics["step_end_seconds"][-1],
                "losses": result.metrics["losses"],
                "cpu_ms_per_step": sampler.per_step(lo - 1, hi - 1),
            }
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


# ---- the single-process contenders ----------------------------------------------------------------

def local_tables(cfg: Config, table_sizes) -> list[np.ndarray]:
    """Every table as the shards start it: initial_rows of keys (i << 40) | id."""
    from embps.common.job_config import FEATURE_SHIFT
    from embps.store import initial_rows
    spec = job_config(cfg, "sync").table_spec(sum(table_sizes))
    return [initial_rows(spec, (np.uint64(i) << np.uint64(FEATURE_SHIFT)) | np.arange(rows, dtype=np.uint64))
            for i, rows in enumerate(table_sizes)]


def local_seconds(cfg: Config, info, tables, batches, warmup: int, progress: Progress | None = None) -> float:
    """Mean s/step of LocalTrainer over batches[warmup:], after batches[:warmup] untimed."""
    from embps.models import build_model
    from embps.models.local_training import LocalTrainer
    trainer = LocalTrainer(build_model(cfg.model, info.n_dense, len(info.table_sizes), cfg.dim, seed=cfg.seed),
                           tables, cfg.emb_optimizer, cfg.emb_lr, cfg.emb_eps, cfg.dense_optimizer, cfg.dense_lr)
    task = progress.add_task("local (one process, nn.Embedding)", total=len(batches)) if progress else None
    for i, (dense, sparse, labels) in enumerate(batches):
        if i == warmup:
            start = time.perf_counter()
        trainer.step(dense, sparse, labels)
        if progress:
            progress.advance(task)
    return (time.perf_counter() - start) / (len(batches) - warmup)


def load_torchrec():
    """bench/torchrec_baseline's timing function, or the reason it cannot run here."""
    try:
        module = importlib.import_module("torchrec_baseline")
        fn = module.torchrec_iteration_seconds
        module._quiet_import_torchrec()
    except Exception as error:  # a missing module, a missing package or a broken install: all reported
        return None, f"{type(error).__name__}: {error}"
    for noisy in ("torchrec", "torch.fx", "fbgemm_gpu"):  # planner tables, an fx notice, fbgemm's import notes
        logging.getLogger(noisy).setLevel(logging.ERROR)
    return fn, None


def torchrec_seconds(cfg: Config, info, fn, batches, warmup: int, progress: Progress | None = None) -> float:
    task = progress.add_task(f"torchrec ({len(batches)} steps)", total=None) if progress else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(cfg.model, info.n_dense, info.table_sizes, cfg.dim, batches, cfg.emb_optimizer, cfg.emb_lr,
                      warmup=warmup, emb_eps=cfg.emb_eps, dense_optimizer=cfg.dense_optimizer,
                      dense_lr=cfg.dense_lr, seed=cfg.seed)
    finally:
        if progress:
            progress.update(task, total=1, completed=1)


@contextlib.contextmanager
def torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def probe_threads(report: Report, name: str, measure) -> int:
    """The faster of 1 and 2 torch threads for a single-process contender, from a short run of each."""
    cpus = os.cpu_count() or 1
    options = sorted({1, min(2, cpus)})
    seconds: dict[int, float] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task(f"{name}: probing torch threads {options}", total=2 * len(options))
        for n in options * 2:   # twice, alternating; the faster try counts
            with torch_threads(n):
                seconds[n] = min(seconds.get(n, float("inf")), measure())
            progress.advance(task)
    for n, s in seconds.items():
        report.note(f"train_{name}_probe_{n}_threads_ms_per_step", s * 1e3, "ms")
    best = min(seconds, key=seconds.get)
    report.info.setdefault("thread_probe_ms_per_step", {})[name] = {str(n): s * 1e3 for n, s in seconds.items()}
    return best


# ---- measurement ----------------------------------------------------------------------------------

def run_contenders(cfg: Config) -> Report:
    from embps.datasets import open_dataset

    report = Report(GOALS)
    dataset = open_dataset("synthetic", scale=cfg.scale)
    info = dataset.info
    lo, hi = window(cfg.steps)
    t = time.perf_counter()
    batches = [(b.dense, b.sparse, b.labels) for _, b in zip(range(hi), dataset.batches(cfg.global_batch, "train"))]
    tables = local_tables(cfg, info.table_sizes)
    report.info.update({
        "table_sizes": list(info.table_sizes), "total_rows": int(sum(info.table_sizes)), "n_dense": info.n_dense,
        "timed_steps": [lo, hi - 1], "setup_seconds": time.perf_counter() - t,
        "distinct_keys_per_global_batch": float(np.mean([
            sum(len(np.unique(s[:, i])) for i in range(s.shape[1])) for _, s, _ in batches[:8]])),
    })

    torchrec_fn, torchrec_error = (None, "skipped (--skip-torchrec)") if cfg.skip_torchrec else load_torchrec()
    report.info["torchrec_unavailable_reason"] = torchrec_error
    if torchrec_error:
        console.print(f"[yellow]TorchRec unavailable: {torchrec_error}")

    probe = batches[:2 + cfg.probe_steps]
    wait_for_quiet(cfg.max_quiet_wait)
    threads = {"local": probe_threads(report, "local", lambda: local_seconds(cfg, info, tables, probe, 2))}
    if torchrec_fn:
        try:
            threads["torchrec"] = probe_threads(report, "torchrec",
                                                lambda: torchrec_seconds(cfg, info, torchrec_fn, probe, 2))
        except Exception as error:
            torchrec_fn, torchrec_error = None, f"{type(error).__name__}: {error}"
            report.info["torchrec_unavailable_reason"] = torchrec_error
            console.print(f"[yellow]TorchRec failed: {torchrec_error}")
    report.info["torch_threads"] = threads
    console.print(f"torch threads: {threads} (distributed trainers: 1 each)")

    contenders = [c for c in CONTENDERS if c != "torchrec" or torchrec_fn]
    seconds: dict[str, list[float]] = {c: [] for c in contenders}
    jobs: dict[str, list[dict]] = {"sync": [], "direct": []}
    singles_wall: dict[str, list[float]] = {"local": [], "torchrec": []}
    singles_other: dict[str, list[float]] = {"local": [], "torchrec": []}
    quiet: dict[str, list[dict]] = {}
    report.info["quiet_wait"] = quiet
    work = Path(tempfile.mkdtemp(prefix="embps-train-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    report.info["data_dir_mount"] = mount_of(str(work))
    try:
        for r in range(cfg.rounds):
            order = list(contenders) if r % 2 == 0 else contenders[::-1]
            for name in order:
                waited, others = wait_for_quiet(cfg.max_quiet_wait)
                quiet.setdefault(name, []).append({"waited_seconds": waited, "other_cores_at_start": others})
                console.print(f"[bold]round {r + 1}/{cfg.rounds}: {name}[/bold]"
                              + (f" (waited {waited:.1f} s for other processes to quiet down; they use "
                                 f"{others:.2f} cores)" if waited > 1 else ""))
                if name in jobs:
                    res = run_job(cfg, name, work, r)
                    jobs[name].append(res)
                    seconds[name].append(res["step_seconds"])
                    console.print(f"  {res['step_seconds'] * 1e3:.1f} ms/step, {res['ps_bytes'] / 1e6:.1f} MB to/from "
                                  f"shards, hit rate {res['cache_hit_rate']:.1%}, job {res['wall_seconds']:.1f} s")
                else:
                    started = time.perf_counter()
                    own, machine = _cpu_ticks(os.getpid()), _machine_busy_ticks()
                    with torch_threads(threads[name]), Progress(
                            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=console) as progress:
                        if name == "local":
                            s = local_seconds(cfg, info, tables, batches, lo, progress)
                        else:
                            try:
                                s = torchrec_seconds(cfg, info, torchrec_fn, batches, lo, progress)
                            except Exception as error:   # reported, not faked: the figure is left out
                                torchrec_fn, torchrec_error = None, f"{type(error).__name__}: {error}"
                                report.info["torchrec_unavailable_reason"] = torchrec_error
                                console.print(f"[yellow]TorchRec failed: {torchrec_error}")
                                contenders.remove("torchrec")
                                del seconds["torchrec"]
                                continue
                    singles_wall[name].append(time.perf_counter() - started)
                    # CPU that other processes took while this one ran (its set-up and warm-up included).
                    other = (_machine_busy_ticks() - machine) - (_cpu_ticks(os.getpid()) - own)
                    singles_other[name].append(max(0.0, other * 1e3 / CLOCK_TICKS / hi))
                    seconds[name].append(s)
                    console.print(f"  {s * 1e3:.1f} ms/step ({threads[name]} torch threads)")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    best = report.passes(seconds)   # keeps every round in samples_seconds
    best_job = {mode: min(runs, key=lambda res: res["step_seconds"]) for mode, runs in jobs.items()}
    sync, direct = best_job["sync"], best_job["direct"]

    report.figure("train_sync_vs_direct_speedup", best["direct"] / best["sync"], "x")
    report.figure("train_ps_bytes_direct_vs_sync", direct["ps_bytes"] / sync["ps_bytes"], "x")
    report.figure("train_sync_vs_local_torch", best["sync"] / best["local"], "x")
    if torchrec_fn:
        report.figure("train_sync_vs_torchrec", best["torchrec"] / best["sync"], "x")
    else:
        report.note("train_torchrec_unavailable", 1, "flag")

    for name in contenders:
        report.note(f"train_{name}_ms_per_step", best[name] * 1e3, "ms")
        report.note(f"train_{name}_samples_per_s", cfg.global_batch / best[name], "samples/s")
    report.note("train_direct_vs_local_torch", best["direct"] / best["local"], "x")
    report.note("train_cache_hit_rate", sync["cache_hit_rate"], "fraction")
    for mode, res in best_job.items():
        report.note(f"train_{mode}_ps_bytes", res["ps_bytes"], "B")
        report.note(f"train_{mode}_ps_bytes_per_step", res["ps_bytes"] / res["steps"], "B")
        report.note(f"train_{mode}_rows_fetched_per_step", res["rows_fetched"] / res["steps"], "rows")
        report.note(f"train_{mode}_job_wall_seconds", res["wall_seconds"], "s")
        report.note(f"train_{mode}_training_seconds", res["training_seconds"], "s")
    cpu_roles = ("trainers", "gateways", "shards", "oracle", "bench", "other", "idle")
    for mode, res in best_job.items():
        cpu = res["cpu_ms_per_step"]
        if cpu:   # where the 2 cores went during the timed steps (CPU ms per step, all processes of a role)
            for role in cpu_roles:
                report.note(f"train_{mode}_cpu_ms_per_step_{role}", cpu[role], "ms")
    for name, walls in singles_wall.items():
        if walls:
            report.note(f"train_{name}_wall_seconds", min(walls), "s")
            fastest = int(np.argmin(seconds[name]))
            report.note(f"train_{name}_cpu_ms_per_step_other", singles_other[name][fastest], "ms")
    report.info["other_cpu_ms_per_step_by_round"] = {
        **{mode: [(res["cpu_ms_per_step"] or {}).get("other") for res in runs] for mode, runs in jobs.items()},
        **{name: values for name, values in singles_other.items() if values}}
    busy = {name: report.context[f"train_{name}_cpu_ms_per_step_other"]["value"] / report.context[f"train_{name}_ms_per_step"]["value"]
            for name in contenders if f"train_{name}_cpu_ms_per_step_other" in report.context}
    report.info["other_load_cores_in_counted_runs"] = busy
    noisy = {name: share for name, share in busy.items() if share > 0.1}
    if noisy:
        console.print("[yellow]other processes were busy during the counted runs (cores they used on average: "
                      + ", ".join(f"{n} {v:.2f}" for n, v in noisy.items()) + "): the figures are less reliable")

    # Same batches, same arithmetic: the two modes' loss curves must agree (sync is exact, not stale).
    sync_losses, direct_losses = np.array(sync["losses"]), np.array(direct["losses"])
    report.info["max_loss_difference_sync_vs_direct"] = float(np.max(np.abs(sync_losses - direct_losses)))
    for mode, runs in jobs.items():
        report.info[f"{mode}_runs"] = [{k: v for k, v in res.items() if k != "losses"} for res in runs]
        report.info[f"{mode}_final_loss"] = best_job[mode]["final_loss"]
        report.info[f"{mode}_eval_auc"] = best_job[mode].get("eval_auc")
    bytes_runs = {mode: sorted({res["ps_bytes"] for res in runs}) for mode, runs in jobs.items()}
    report.info["ps_bytes_by_round"] = bytes_runs
    return report


# ---- output ---------------------------------------------------------------------------------------

def code_state() -> dict:
    """What code was measured: the commit, the uncommitted files of the product and a fingerprint of their
    contents (compared at the start and the end of the run: the product may change while it runs)."""
    repo = Path(__file__).resolve().parent.parent
    paths = ("services", "native", "protos")

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=20,
                              check=False).stdout

    try:
        digest = hashlib.sha1(git("diff", "HEAD", "--", *paths).encode())
        for name in sorted(git("ls-files", "--others", "--exclude-standard", "--", *paths).split()):
            with contextlib.suppress(OSError):
                digest.update(name.encode() + (repo / name).read_bytes())
        return {"git_commit": git("rev-parse", "HEAD").strip(),
                "git_uncommitted": git("status", "--porcelain", "--", *paths).splitlines(),
                "uncommitted_fingerprint": digest.hexdigest()}
    except (OSError, subprocess.SubprocessError) as error:
        return {"git_error": str(error)}


def environment() -> dict:
    env = {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
           "machine": platform.machine(), "cpus": os.cpu_count()}
    env.update(code_state())
    with contextlib.suppress(Exception):
        import torchrec
        env["torchrec"] = getattr(torchrec, "__version__", "?")
    return env


def plot(report: Report, goals: dict[str, dict], cfg: Config, path: Path) -> None:
    ctx = lambda name: report.context[name]["value"]  # noqa: E731
    fig, (ax_time, ax_cpu, ax_bytes, ax_ratio) = plt.subplots(
        1, 4, figsize=(21, 5.2), gridspec_kw={"width_ratios": [1.4, 1, 0.9, 1.4]})

    labels = {"sync": "embps sync\n(lookahead cache)", "direct": "embps direct\n(no cache)",
              "local": "one process\nPyTorch", "torchrec": "TorchRec\n(CPU, fused)"}
    colors = {"sync": "tab:green", "direct": "tab:olive", "local": "tab:blue", "torchrec": "tab:gray"}
    names = [n for n in CONTENDERS if f"train_{n}_ms_per_step" in report.context]
    bars = ax_time.bar([labels[n] for n in names], [ctx(f"train_{n}_ms_per_step") for n in names],
                       color=[colors[n] for n in names])
    ax_time.bar_label(bars, fmt="%.1f")
    ax_time.set_ylabel("ms per step (middle half of the run; best round)")
    ax_time.set_title(f"{cfg.model.upper()} dim {cfg.dim}, global batch {cfg.global_batch}, "
              f"synthetic scale {cfg.scale:g}\n2 trainers + 2 shards on loopback, 2 cores")
    if "torchrec" not in names:
        ax_time.text(0.98, 0.95, "TorchRec unavailable", transform=ax_time.transAxes, ha="right", va="top")

    modes = ["sync", "direct"]
    roles = [("trainers", "tab:blue"), ("gateways", "tab:green"), ("shards", "tab:orange"), ("oracle", "tab:purple"),
             ("bench", "tab:brown"), ("other", "tab:red"), ("idle", "lightgray")]
    if all(f"train_{m}_cpu_ms_per_step_trainers" in report.context for m in modes):
        bottom = np.zeros(2)
        for role, color in roles:
            values = np.array([ctx(f"train_{m}_cpu_ms_per_step_{role}") for m in modes])
            ax_cpu.bar(modes, values, 0.6, bottom=bottom, label=role, color=color)
            bottom += values
        ax_cpu.set_ylim(0, bottom.max() * 1.3)
        ax_cpu.set_ylabel("CPU ms per step (both cores; timed steps)")
        ax_cpu.set_title("where the cores went\n(other: processes outside the job)")
        ax_cpu.legend(fontsize=8, ncol=4, loc="upper center")
    else:
        ax_cpu.text(0.5, 0.5, "no CPU samples", transform=ax_cpu.transAxes, ha="center")

    runs = {m: min(report.info[f"{m}_runs"], key=lambda r: r["step_seconds"]) for m in modes}
    x = np.arange(2)
    ax_bytes.bar(x, [runs[m]["ps_bytes_in"] / 1e6 for m in modes], 0.6, color=["tab:green", "tab:olive"])
    b_out = ax_bytes.bar(x, [runs[m]["ps_bytes_out"] / 1e6 for m in modes], 0.6,
                         bottom=[runs[m]["ps_bytes_in"] / 1e6 for m in modes],
                         color=["tab:green", "tab:olive"], alpha=0.55, hatch="//")
    ax_bytes.bar_label(b_out, labels=[f"{runs[m]['ps_bytes'] / 1e6:.1f} MB" for m in modes])
    ax_bytes.set_xticks(x, modes)
    ax_bytes.set_ylabel(f"MB to / from the shards over {cfg.steps} steps")
    ax_bytes.set_title(f"PS traffic (cache hit rate {ctx('train_cache_hit_rate'):.1%})\nplain: from shards, "
                       f"hatched: to shards")

    ratio_names = ["train_sync_vs_direct_speedup", "train_ps_bytes_direct_vs_sync", "train_sync_vs_local_torch",
                   "train_sync_vs_torchrec"]
    ratio_labels = ["direct ÷ sync\ns/step", "direct ÷ sync\nbytes", "sync ÷ local\ns/step", "TorchRec ÷ sync\ns/step"]
    present = [(n, lab) for n, lab in zip(ratio_names, ratio_labels) if n in report.figures]
    xr = np.arange(len(present))
    values = [report.figures[n]["value"] for n, _ in present]
    bar_colors = [("tab:green" if goals[n]["met"] else "tab:red") if n in goals else "tab:gray" for n, _ in present]
    bars = ax_ratio.bar(xr, values, color=bar_colors)
    ax_ratio.bar_label(bars, fmt="%.2f", label_type="center", color="white", fontweight="bold")
    for i, (n, _) in enumerate(present):
        if n in goals:
            ax_ratio.hlines(goals[n]["target"], i - 0.4, i + 0.4, colors="black", linestyles="dashed",
                            label="goal" if i == 0 else None)
            ax_ratio.annotate(f"goal {goals[n]['op']} {goals[n]['target']:g}", (i, goals[n]["target"]),
                              textcoords="offset points", xytext=(0, 3), ha="center", fontsize=8)
    ax_ratio.axhline(1.0, color="gray", linewidth=0.8)
    ax_ratio.set_xticks(xr, [lab for _, lab in present])
    ax_ratio.set_title("figures (green: goal met, red: missed, gray: no goal)")
    ax_ratio.legend()

    save_figure(fig, path)


def write_results(report: Report, cfg: Config, run: BenchRun) -> None:
    lo, hi = window(cfg.steps)
    timing = (f"s/step over the middle half of each run of {cfg.steps} steps: steps {lo}..{hi - 1} "
              f"(0-based), the same window for every contender (the jobs' from trainer 0's step end times "
              f"via train_command.summarize; the single-process contenders run batches 0..{hi - 1} and time "
              f"the same steps). {cfg.rounds} round(s) alternating the contenders (odd rounds reversed); each "
              f"contender's fastest round is used, every round is in samples_seconds. Bytes: the gateways' "
              f"payload counts to and from the shards over the whole job (including sync's initial "
              f"prefetches and final write-back), from the run that gave the best time.")
    run.save(report, RESULTS_DIR, cfg, timing, environment(), plot)


def main() -> None:
    run = BenchRun("train")
    cfg = parse_args()
    print(f"train bench: {cfg.model} dim {cfg.dim}, synthetic scale {cfg.scale:g}, global batch {cfg.global_batch}, "
          f"{cfg.steps} steps, {cfg.trainers} trainers, {cfg.shards} shards, lookahead {cfg.lookahead}, "
          f"{cfg.emb_optimizer} (lr {cfg.emb_lr:g}) / {cfg.dense_optimizer}; {cfg.rounds} round(s); "
          f"load average {run.load['before'][0]:.2f}", flush=True)
    code_before = code_state()
    report = run_contenders(cfg)
    code_after = code_state()
    report.info["code_changed_during_run"] = code_before != code_after
    if code_before != code_after:
        report.info["code_at_start"] = code_before
        console.print("[yellow]the product's code changed while the benchmark ran (others are editing it): "
                      "the runs may have measured different code")
    write_results(report, cfg, run)


if __name__ == "__main__":
    main()
