"""Store benchmarks: the native PetHash store against the numpy and dict code it stands in for, the
fastest dense gather there is, and fbgemm's fused row-wise Adagrad (the kernel TorchRec runs).

Workload: one table of --rows random 64-bit keys x --dim float32 with row-wise Adagrad, read and updated
in batches of 512 keys drawn Zipf(0.99) over the rows, one thread.  The store lives in a temporary
directory on a tmpfs standing in for persistent memory, removed at the end.  Real PM is mapped with 2 MB
pages (devdax), so by default (--tmp-dir auto, as root) the bench mounts a private tmpfs with huge=always
and reports the figures there; the lookup comparison is repeated on /dev/shm's 4 KB pages as context
(`*_4k_pages`).  Without root it falls back to /dev/shm alone.

The harder baselines, in the same run:
  store_lookup_vs_dense_gather   the store's lookup (hash, probe, copy) / the fastest gather of the same rows
                                 from a dense array by precomputed row indices: the best of np.take(...,
                                 mode="clip") and a C loop with software prefetch compiled here (cffi), called
                                 with pointers computed outside the clock.  On 2 MB pages (the dense array
                                 madvised MADV_HUGEPAGE, the store on the huge tmpfs) and, as *_4k_pages, on
                                 4 KB pages (MADV_NOHUGEPAGE; the store on /dev/shm).  The share of each
                                 contender's memory that got huge pages is read from /proc/self/smaps.
                                 Context *_ceiling: the figure if the store's lookup cost no more than the
                                 gather, its binding's fixed cost per call (store_lookup_call_us, an empty
                                 batch) kept in place of the gather's (dense_gather_call_us).
  store_update_vs_fbgemm         the store's persistent update / fbgemm's CPU table-batched embedding backward
                                 with its fused EXACT_ROWWISE_ADAGRAD (pooling NONE: one row per key) on the
                                 same rows and gradients in DRAM; only the backward is timed (its forward runs
                                 outside the clock), with the best of 1 and 2 torch threads.
  store_recovery_seconds_40m     (full run only) Store(path) after a process holding a 40M-row table was
                                 killed with SIGKILL.  Recovery reads only the index (keys and slab refs), never
                                 the rows, so the table is dim 4 with SGD: 40M rows in ~1.7 GB of memory.

Prints `figure NAME VALUE UNIT` lines (ratios; goals in GOALS) and `context NAME VALUE UNIT` lines (the
absolute numbers behind them), and writes bench/results/store.json and store.png (store-quick.* with --quick).

Timing: each contender runs one untimed warm-up pass, then `reps` timed passes over the same 200
precomputed batches, interleaved with its rivals so that drift on a shared machine hits all of them alike.
Throughputs and times use the best (fastest) pass: on a shared VM interference only ever slows a pass
down, so the minimum is the most repeatable estimate.  Every pass is kept in the JSON (samples_seconds).
"""

import argparse
import functools
import contextlib
import dataclasses
import importlib.util
import mmap
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from rich.progress import Progress, TimeElapsedColumn  # noqa: E402

from embps.api import OptimizerSpec, TableSpec  # noqa: E402
from embps.store import Store  # noqa: E402
from bench_common import Report, make_keys, mount_of, save_figure, save_results, zipf_batches  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TABLE = "emb"
GOALS = {
    "store_lookup_vs_dense_gather": (">=", 0.7),
    "store_lookup_vs_dense_gather_4k_pages": (">=", 0.5),
    "store_update_vs_fbgemm": (">=", 1.0),
    "store_recovery_seconds_40m": ("<=", 1.0),
    "store_lookup_vs_numpy_take": (">=", 0.5),
    "store_lookup_vs_dict": (">=", 20.0),
    "store_update_adagrad_vs_numpy": (">=", 1.0),
    "store_recovery_seconds": ("<=", 1.0),
    "store_recovery_vs_reload": (">=", 10.0),
}


@dataclass(frozen=True)
class Config:
    rows: int
    dim: int
    reps: int                   # timed passes per lookup / update contender
    restart_reps: int = 3       # timed store reopens and checkpoint reloads (a 4M-row reload takes seconds)
    batch: int = 512
    n_batches: int = 200
    zipf_theta: float = 0.99
    build_batch: int = 65536
    lr: float = 0.01
    eps: float = 1e-10          # OptimizerSpec's default
    seed: int = 0
    results_name: str = "store"  # bench/results/<name>.json and .png; quick runs keep the full results
    tmp_dir: str = "auto"       # parent of the temporary store directory and checkpoint (see pm_directory)
    persist: str = "cache_line"  # Store's default: cache-line flushes and fences, as on real PM
    recovery_rows: int = 0      # rows of the crash-recovery table (0: not measured)
    recovery_dim: int = 4
    lookup_only: bool = False   # only the lookup comparison, on both page sizes; no results written


def parse_args() -> Config:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="500K rows and fewer passes (well under a minute)")
    parser.add_argument("--rows", type=int, help="rows in the table (default 4M, quick 500K)")
    parser.add_argument("--dim", type=int, default=32, help="embedding dimension (default 32)")
    parser.add_argument("--tmp-dir", default="auto",
                        help="where the temporary store goes; 'auto' (default) mounts a tmpfs with huge=always, "
                             "which gives the store the 2 MB pages a real PM (DAX) mapping gets")
    parser.add_argument("--recovery-rows", type=int,
                        help="rows of the table reopened after a SIGKILL (default 40M, quick: not measured)")
    parser.add_argument("--lookup-only", action="store_true",
                        help="only the lookup comparison (2 MB and 4 KB pages): prints its figures, writes no results")
    args = parser.parse_args()
    default_rows, reps, recovery_rows = (500_000, 9, 0) if args.quick else (4_000_000, 15, 40_000_000)
    return Config(rows=args.rows or default_rows, dim=args.dim, reps=reps, tmp_dir=args.tmp_dir,
                  results_name="store-quick" if args.quick else "store", lookup_only=args.lookup_only,
                  recovery_rows=0 if args.lookup_only else recovery_rows if args.recovery_rows is None
                  else args.recovery_rows)


# ---- pages ----------------------------------------------------------------------------------------

def dense_rows(rows: int, dim: int, huge: bool) -> np.ndarray:
    """A (rows, dim) float32 array in private anonymous memory madvised for 2 MB pages or against them
    (numpy's own large arrays get whatever its allocator asks for)."""
    buf = mmap.mmap(-1, rows * dim * 4, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf.madvise(mmap.MADV_HUGEPAGE if huge else mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(buf, np.float32).reshape(rows, dim)


def huge_page_share(address: int, length: int) -> float:
    """The share of the mappings overlapping [address, address + length) that the kernel maps with 2 MB
    pages (AnonHugePages, ShmemPmdMapped, FilePmdMapped in /proc/self/smaps)."""
    size_kb = huge_kb = 0
    overlaps = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:
            lo, hi = (int(x, 16) for x in head.split("-"))
            overlaps = lo < address + length and address < hi
        elif overlaps and head == "Size:":
            size_kb += int(line.split()[1])
        elif overlaps and head in ("AnonHugePages:", "ShmemPmdMapped:", "FilePmdMapped:"):
            huge_kb += int(line.split()[1])
    return huge_kb / size_kb if size_kb else 0.0


def array_region(arr: np.ndarray) -> tuple[int, int]:
    return arr.__array_interface__["data"][0], arr.nbytes


# The fastest gather we know how to write: one memcpy per row, the rows `ahead` positions on prefetched.
DENSE_GATHER_C = r"""
#include <stddef.h>
#include <stdint.h>
#include <string.h>

void dense_gather(const float *table, const int64_t *rows, size_t n, size_t dim, size_t ahead, float *out)
{
    const size_t bytes = dim * sizeof(float);
    for (size_t i = 0; i < n; i++) {
        if (ahead && i + ahead < n) {
            const char *next = (const char *)(table + rows[i + ahead] * dim);
            for (size_t line = 0; line < bytes; line += 64)
                __builtin_prefetch(next + line);
            __builtin_prefetch(next + bytes - 1);
        }
        memcpy(out + i * dim, table + rows[i] * dim, bytes);
    }
}
"""
GATHER_AHEAD = (0, 8, 16)   # rows prefetched ahead; the best is the baseline


def compile_dense_gather(build_dir: str):
    """DENSE_GATHER_C as a cffi extension (-O3 -march=native) built in build_dir: (ffi, lib)."""
    import cffi
    builder = cffi.FFI()
    builder.cdef("void dense_gather(const float *table, const int64_t *rows, size_t n, size_t dim, size_t ahead, "
                 "float *out);")
    builder.set_source("_bench_dense_gather", DENSE_GATHER_C, extra_compile_args=["-O3", "-march=native"])
    path = builder.compile(tmpdir=build_dir)
    spec = importlib.util.spec_from_file_location("_bench_dense_gather", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ffi, module.lib


# ---- workload -------------------------------------------------------------------------------------

def build_table(report: Report, table, keys: np.ndarray, cfg: Config, rng: np.random.Generator,
                huge: bool = True) -> np.ndarray:
    """Fills the table with random rows (zero optimizer state); returns the same rows as a dense array
    (on 2 MB pages if huge, else on 4 KB pages)."""
    dense = dense_rows(cfg.rows, cfg.dim, huge)
    assign_seconds = 0.0
    with Progress(*Progress.get_default_columns(), TimeElapsedColumn()) as progress:
        task = progress.add_task(f"building {cfg.rows:,} rows", total=cfg.rows)
        for lo in range(0, cfg.rows, cfg.build_batch):
            rows = dense[lo:lo + cfg.build_batch]
            rng.random(out=rows, dtype=np.float32)
            rows -= 0.5
            rows *= 0.02
            start = time.perf_counter()
            table.assign(keys[lo:lo + len(rows)], rows)
            assign_seconds += time.perf_counter() - start
            progress.advance(task, len(rows))
    report.note("store_assign_rows_per_s", cfg.rows / assign_seconds, "rows/s")
    return dense


def time_passes(contenders: dict[str, Callable[[], float | None]], reps: int) -> dict[str, list[float]]:
    """Seconds per pass of each contender: a warm-up pass each, then `reps` interleaved rounds.  A pass
    that returns a number timed itself (it times only part of its work)."""
    for run_pass in contenders.values():
        run_pass()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(reps):
        for name, run_pass in contenders.items():
            start = time.perf_counter()
            spent = run_pass()
            times[name].append(time.perf_counter() - start if spent is None else spent)
    return times


# ---- lookups --------------------------------------------------------------------------------------

EMPTY_CALLS = 20000   # per pass of a call's fixed cost (an empty batch)


def repeated(call: Callable[[], object]) -> Callable[[], None]:
    """A pass for time_passes: EMPTY_CALLS calls of call()."""
    def run_pass() -> None:
        for _ in range(EMPTY_CALLS):
            call()
    return run_pass


def bench_lookup(report: Report, table, keys: np.ndarray, dense: np.ndarray, batch_rows: np.ndarray,
                 cfg: Config, gather, context_suffix: str = "") -> None:
    """Figures, or with context_suffix (a second memory setup) the dense-gather figure and the rest as
    context lines.  gather: the compiled (ffi, lib) of DENSE_GATHER_C."""
    batch_keys = keys[batch_rows]
    out = np.empty((cfg.batch, cfg.dim), np.float32)
    np.testing.assert_array_equal(table.lookup(batch_keys[0], out=out), dense[batch_rows[0]])
    start = time.perf_counter()
    by_key = dict(zip(keys.tolist(), dense))
    report.note(f"dict_build_seconds{context_suffix}", time.perf_counter() - start, "s")
    # Python ints made outside the clock: the dict baseline gets its keys for free.
    key_lists = [k.tolist() for k in batch_keys]
    # The C gather's pointers, made outside the clock too: its calls are the cheapest a binding makes.
    gffi, glib = gather
    rows64 = np.ascontiguousarray(batch_rows, np.int64)
    rows_ptr = gffi.cast("int64_t *", gffi.from_buffer(rows64))
    table_ptr, out_ptr = gffi.cast("float *", gffi.from_buffer(dense)), gffi.cast("float *", gffi.from_buffer(out))
    row_ptrs = [rows_ptr + i * cfg.batch for i in range(len(batch_rows))]
    glib.dense_gather(table_ptr, row_ptrs[0], cfg.batch, cfg.dim, 8, out_ptr)
    np.testing.assert_array_equal(out, dense[batch_rows[0]])

    def store_pass():
        for k in batch_keys:
            table.lookup(k, out=out)

    def take_pass(mode: str):
        for idx in batch_rows:
            np.take(dense, idx, axis=0, out=out, mode=mode)

    def c_gather_pass(ahead: int):
        for ptr in row_ptrs:
            glib.dense_gather(table_ptr, ptr, cfg.batch, cfg.dim, ahead, out_ptr)

    def dict_pass():
        for ks in key_lists:
            np.stack([by_key[k] for k in ks], out=out)

    times = time_passes({
        "store_lookup": store_pass,
        "numpy_take": lambda: take_pass("raise"),
        # mode="clip" skips the bounds check and the buffered copy of `out`: the fastest numpy gather.
        "numpy_take_clip": lambda: take_pass("clip"),
        **{f"c_gather_ahead{a}": functools.partial(c_gather_pass, a) for a in GATHER_AHEAD},
        "dict_lookup": dict_pass,
    }, cfg.reps)
    report.passes({f"{name}{context_suffix}": t for name, t in times.items()})
    per_s = {name: batch_rows.size / min(t) for name, t in times.items()}
    for name, value in per_s.items():
        report.note(f"{name}_keys_per_s{context_suffix}", value, "keys/s")
    dense_best = max(["numpy_take_clip"] + [f"c_gather_ahead{a}" for a in GATHER_AHEAD], key=per_s.get)
    report.info[f"dense_gather_fastest{context_suffix}"] = dense_best
    report.note(f"dense_gather_keys_per_s{context_suffix}", per_s[dense_best], "keys/s")
    report.note(f"dense_huge_page_share{context_suffix}", huge_page_share(*array_region(dense)), "")
    report.note(f"store_huge_page_share{context_suffix}", huge_page_share(*table.pool_region()), "")
    report.figure(f"store_lookup_vs_dense_gather{context_suffix}", per_s["store_lookup"] / per_s[dense_best], "x")
    # What a call costs before any key: the binding's (array checks, two ffi.from_buffer, the C call) and the
    # C gather's (pointers made beforehand).  The ceiling is the figure a store whose lookup cost no more than
    # the fastest gather, behind this binding, would get: a gap that work on the index alone cannot close.
    empty_keys, empty_out = np.empty(0, np.uint64), np.empty((0, cfg.dim), np.float32)
    call_times = time_passes({
        "store_lookup_call": repeated(lambda: table.lookup(empty_keys, out=empty_out)),
        "dense_gather_call": repeated(lambda: glib.dense_gather(table_ptr, row_ptrs[0], 0, cfg.dim, 8, out_ptr)),
    }, cfg.reps)
    store_call, gather_call = (min(call_times[n]) / EMPTY_CALLS for n in ("store_lookup_call", "dense_gather_call"))
    report.note(f"store_lookup_call_us{context_suffix}", store_call * 1e6, "us")
    report.note(f"dense_gather_call_us{context_suffix}", gather_call * 1e6, "us")
    dense_batch = cfg.batch / per_s[dense_best]
    report.note(f"store_lookup_vs_dense_gather_ceiling{context_suffix}",
                dense_batch / (dense_batch + max(0.0, store_call - gather_call)), "x")
    record = report.note if context_suffix else report.figure
    record(f"store_lookup_vs_numpy_take{context_suffix}", per_s["store_lookup"] / per_s["numpy_take"], "x")
    record(f"store_lookup_vs_dict{context_suffix}", per_s["store_lookup"] / per_s["dict_lookup"], "x")


# ---- updates --------------------------------------------------------------------------------------

def numpy_rowwise_adagrad(weights: np.ndarray, state: np.ndarray, rows: np.ndarray, grads: np.ndarray,
                          lr: float, eps: float) -> None:
    """The dense-array update the store's fused kernel replaces: sum the gradients of repeated rows,
    then row-wise Adagrad on each distinct row."""
    uniq, inverse = np.unique(rows, return_inverse=True)
    g = np.zeros((len(uniq), weights.shape[1]), np.float32)
    np.add.at(g, inverse, grads)
    state[uniq] += np.mean(g * g, axis=1)
    weights[uniq] -= lr * g / (np.sqrt(state[uniq]) + eps)[:, None]


def bench_update(report: Report, table, keys: np.ndarray, dense: np.ndarray, batch_rows: np.ndarray,
                 cfg: Config, rng: np.random.Generator) -> None:
    """Updates the table and `dense` alike (so both still hold the same table afterwards)."""
    batch_keys = keys[batch_rows]
    grads = rng.standard_normal((cfg.n_batches, cfg.batch, cfg.dim), dtype=np.float32)
    state = np.zeros(cfg.rows, np.float32)

    # The baseline must compute what the store computes, or the ratio means nothing.
    numpy_rowwise_adagrad(dense, state, batch_rows[0], grads[0], cfg.lr, cfg.eps)
    table.update(batch_keys[0], grads[0])
    got_rows, got_state, _ = table.lookup_with_state(batch_keys[0])
    np.testing.assert_allclose(got_rows, dense[batch_rows[0]], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got_state[:, 0], state[batch_rows[0]], rtol=1e-5)

    def store_pass():
        for k, g in zip(batch_keys, grads):
            table.update(k, g)

    def numpy_pass():
        for idx, g in zip(batch_rows, grads):
            numpy_rowwise_adagrad(dense, state, idx, g, cfg.lr, cfg.eps)

    contenders = {"store_update": store_pass, "numpy_update": numpy_pass}
    tbe = fbgemm_table(dense, cfg)
    if tbe is not None:
        check_fbgemm(tbe, dense, batch_rows[1], grads[1], cfg)
        contenders |= fbgemm_passes(tbe, batch_rows, grads, cfg)
    seconds = report.passes(time_passes(contenders, cfg.reps))
    per_s = {name: batch_rows.size / s for name, s in seconds.items()}
    for name, value in per_s.items():
        report.note(f"{name}_keys_per_s", value, "keys/s")
    report.figure("store_update_adagrad_vs_numpy", per_s["store_update"] / per_s["numpy_update"], "x")
    if tbe is not None:
        fastest = max((name for name in per_s if name.startswith("fbgemm")), key=per_s.get)
        report.info["fbgemm_fastest"] = fastest
        report.figure("store_update_vs_fbgemm", per_s["store_update"] / per_s[fastest], "x")


def fbgemm_table(dense: np.ndarray, cfg: Config):
    """fbgemm's CPU table-batched embedding (the kernel TorchRec runs) holding a copy of the dense rows,
    with its fused EXACT_ROWWISE_ADAGRAD; None where fbgemm-gpu-cpu is not installed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # fbgemm_gpu warns about every GPU / SSD module it cannot load
            import torch
            from fbgemm_gpu.split_embedding_configs import EmbOptimType
            from fbgemm_gpu.split_table_batched_embeddings_ops_common import PoolingMode
            from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
                ComputeDevice, EmbeddingLocation, SplitTableBatchedEmbeddingBagsCodegen)
    except ImportError as error:
        print(f"note: fbgemm is not importable ({error}); store_update_vs_fbgemm is not measured (make torchrec)")
        return None
    tbe = SplitTableBatchedEmbeddingBagsCodegen(
        [(cfg.rows, cfg.dim, EmbeddingLocation.HOST, ComputeDevice.CPU)],
        optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD, learning_rate=cfg.lr, eps=cfg.eps,
        pooling_mode=PoolingMode.NONE)   # one output row per key, as a lookup: the backward's gradients are ours
    with torch.no_grad():
        tbe.split_embedding_weights()[0].copy_(torch.from_numpy(np.asarray(dense)))
    return tbe


def fbgemm_step(tbe, rows: np.ndarray, grads: np.ndarray, offsets) -> float:
    """One batch through fbgemm: the forward, then the timed backward (which applies the optimizer)."""
    import torch
    out = tbe(torch.from_numpy(rows), offsets)
    grads = torch.from_numpy(grads)
    start = time.perf_counter()
    out.backward(grads)
    return time.perf_counter() - start


def check_fbgemm(tbe, dense: np.ndarray, rows: np.ndarray, grads: np.ndarray, cfg: Config) -> None:
    """fbgemm computes what the store and the numpy baseline compute (its optimizer state starts at zero)."""
    import torch
    uniq, inverse = np.unique(rows, return_inverse=True)
    expected, state = dense[uniq], np.zeros(len(uniq), np.float32)   # the touched rows, renumbered
    numpy_rowwise_adagrad(expected, state, inverse, grads, cfg.lr, cfg.eps)
    fbgemm_step(tbe, rows.astype(np.int64), grads, torch.arange(len(rows) + 1, dtype=torch.int64))
    got = tbe.split_embedding_weights()[0].detach().numpy()
    np.testing.assert_allclose(got[uniq], expected, rtol=1e-5, atol=1e-7)


def fbgemm_passes(tbe, batch_rows: np.ndarray, grads: np.ndarray, cfg: Config) -> dict[str, Callable[[], float]]:
    """Self-timed passes (backward only) with 1 and with 2 torch threads: the faster is the baseline."""
    import torch
    rows64 = [np.ascontiguousarray(r, np.int64) for r in batch_rows]
    offsets = torch.arange(cfg.batch + 1, dtype=torch.int64)

    def run(threads: int) -> float:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return sum(fbgemm_step(tbe, r, g, offsets) for r, g in zip(rows64, grads))
        finally:
            torch.set_num_threads(before)

    return {f"fbgemm_backward_{t}t": functools.partial(run, t) for t in (1, 2)}


# ---- restarts -------------------------------------------------------------------------------------

def reload_checkpoint(keys_path: Path, rows_path: Path) -> dict:
    """What a dict-based server does at start-up: np.load the checkpoint into key -> row."""
    return dict(zip(np.load(keys_path).tolist(), np.load(rows_path)))


def time_store_opens(store_dir: Path, cfg: Config) -> tuple[list[float], list[float]]:
    """Wall seconds of Store(path) and the store's own recovery_seconds(), per timed reopen."""
    walls, recoveries = [], []
    for _ in range(cfg.restart_reps + 1):  # the first reopen is the warm-up
        start = time.perf_counter()
        store = Store(store_dir, persist=cfg.persist)
        walls.append(time.perf_counter() - start)
        assert store.table(TABLE).stats().rows == cfg.rows, "the reopened table lost rows"
        recoveries.append(store.recovery_seconds())
        store.close()
    return walls[1:], recoveries[1:]


def time_reloads(checkpoint: tuple[Path, Path], cfg: Config) -> list[float]:
    seconds = []
    for _ in range(cfg.restart_reps + 1):  # the first reload is the warm-up
        start = time.perf_counter()
        reloaded = reload_checkpoint(*checkpoint)
        seconds.append(time.perf_counter() - start)
        assert len(reloaded) == cfg.rows
        del reloaded  # outside the clock: freeing millions of objects is not part of the reload
    return seconds[1:]


def bench_restart(report: Report, store_dir: Path, checkpoint: tuple[Path, Path], cfg: Config) -> None:
    """Store(path) (recovery rebuilds the DRAM index from PM) against reloading an np.save checkpoint.
    The store is closed on entry.  All reopens run before the reloads, not interleaved: freeing a
    reloaded dict leaves millions of small chunks in glibc's fastbins, and the next large malloc (inside
    Store()) spends ~30 ms consolidating them, a cost no freshly started server pays."""
    walls, recoveries = time_store_opens(store_dir, cfg)
    seconds = report.passes({"store_open": walls, "checkpoint_reload": time_reloads(checkpoint, cfg)})
    report.note("store_recovery_seconds_in_store", min(recoveries), "s")
    report.note("checkpoint_reload_seconds", seconds["checkpoint_reload"], "s")
    report.figure("store_recovery_seconds", seconds["store_open"], "s")
    report.figure("store_recovery_vs_reload", seconds["checkpoint_reload"] / seconds["store_open"], "x")


# The table a crash leaves behind: built by a child process that is killed (SIGKILL) while it holds the
# store open, so the reopen is the recovery after a crash, not after a clean close.
CRASH_BUILDER = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[4])
from bench_common import make_keys
from embps.api import OptimizerSpec, TableSpec
from embps.store import Store
path, rows, dim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
table = Store(path).create_table("emb", TableSpec(dim, rows, OptimizerSpec("sgd")))
keys, rng, chunk = make_keys(rows), np.random.default_rng(0), 1 << 20
for lo in range(0, rows, chunk):
    table.assign(keys[lo:lo + chunk], rng.random((len(keys[lo:lo + chunk]), dim), dtype=np.float32))
print("built", flush=True)
sys.stdin.read()   # until killed
"""


def bench_crash_recovery(report: Report, cfg: Config) -> None:
    """store_recovery_seconds_40m: Store(path) after SIGKILL of the process holding cfg.recovery_rows rows;
    the first reopen, then restart_reps more (each recovers the same way: the store keeps no clean-shutdown
    state), best kept."""
    with tempfile.TemporaryDirectory(dir=cfg.tmp_dir, prefix="embps-store-bench-crash-") as tmp:
        store_dir = Path(tmp) / "store"
        print(f"building {cfg.recovery_rows:,} rows x dim {cfg.recovery_dim} in a process to be killed", flush=True)
        start = time.perf_counter()
        builder = subprocess.Popen([sys.executable, "-c", CRASH_BUILDER, str(store_dir), str(cfg.recovery_rows),
                                    str(cfg.recovery_dim), str(Path(__file__).resolve().parent)],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            if builder.stdout.readline().strip() != "built":
                raise RuntimeError(f"the crash-table builder failed (exit {builder.wait()})")
        finally:
            builder.send_signal(signal.SIGKILL)
            builder.wait()
        report.note("crash_table_build_seconds", time.perf_counter() - start, "s")
        walls, recoveries = [], []
        for _ in range(cfg.restart_reps + 1):
            start = time.perf_counter()
            store = Store(store_dir, persist=cfg.persist)
            walls.append(time.perf_counter() - start)
            stats = store.table(TABLE).stats()
            assert stats.rows == cfg.recovery_rows, f"the recovered table holds {stats.rows} rows"
            recoveries.append(store.recovery_seconds())
            report.note("crash_table_file_bytes", float(stats.file_bytes), "B")
            store.close()
        report.passes({"store_open_40m": walls})
        report.note("store_recovery_seconds_40m_first_after_kill", walls[0], "s")
        report.note("store_recovery_seconds_40m_in_store", min(recoveries), "s")
        report.figure("store_recovery_seconds_40m", min(walls), "s")


# ---- output ---------------------------------------------------------------------------------------

def environment(cfg: Config) -> dict:
    """What the numbers depend on.  Page size matters: numpy's big arrays get 2 MB transparent huge pages
    (numpy madvises them), a tmpfs file only when its mount says huge=always/within_size."""
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "thp_enabled": Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip(),
        "thp_shmem_enabled": Path("/sys/kernel/mm/transparent_hugepage/shmem_enabled").read_text().strip(),
        "hugetlb_pages_total": next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                                     if line.startswith("HugePages_Total:")), "?"),
        "pages": "2 MB: the dense arrays madvise(MADV_HUGEPAGE) (THP), the store on a tmpfs mounted huge=always; "
                 "4 KB: MADV_NOHUGEPAGE and /dev/shm; no hugetlbfs (none reserved).  The shares got are the "
                 "*_huge_page_share context lines",
        "tmp_dir_mount": mount_of(cfg.tmp_dir),
    }


def plot_ratios(ax, report: Report, goals: dict[str, dict]) -> None:
    names = [name for name, f in report.figures.items() if f["unit"] == "x"]
    x = np.arange(len(names))
    bars = ax.bar(x, [report.figures[n]["value"] for n in names],
                  color=["tab:green" if goals[n]["met"] else "tab:red" for n in names])
    ax.bar_label(bars, fmt="%.3g")
    ax.hlines([goals[n]["target"] for n in names], x - 0.4, x + 0.4, colors="black", linestyles="dashed",
              label="goal")
    ax.set_xticks(x, [n.removeprefix("store_") for n in names], rotation=20, ha="right")
    ax.set_yscale("log")  # the goals span 0.5x to 20x
    ax.set_title("store ÷ baseline (green: goal met)")
    ax.legend()


def plot_rates(ax, report: Report) -> None:
    rates = {n.removesuffix("_keys_per_s"): c["value"] for n, c in report.context.items() if n.endswith("_keys_per_s")}
    ax.bar_label(ax.bar(list(rates), list(rates.values()), color="tab:blue"), fmt="%.2g")
    ax.set_yscale("log")
    ax.set_ylabel("keys/s (best pass)")
    ax.set_title("throughput, batch 512, one thread")
    ax.tick_params(axis="x", rotation=20)


def plot_restart(ax, report: Report) -> None:
    seconds = {"store recovery": report.figures["store_recovery_seconds"]["value"],
               "np.load + dict": report.context["checkpoint_reload_seconds"]["value"]}
    ax.bar_label(ax.bar(list(seconds), list(seconds.values()), color=["tab:green", "tab:gray"]), fmt="%.3g s")
    ax.axhline(GOALS["store_recovery_seconds"][1], color="black", linestyle="dashed", label="recovery goal")
    ax.set_yscale("log")
    ax.set_ylabel("seconds (best)")
    ax.set_title("restart")
    ax.legend()


def plot(report: Report, goals: dict[str, dict], path: Path) -> None:
    fig, (ax_ratio, ax_rate, ax_restart) = plt.subplots(1, 3, figsize=(16, 5))
    plot_ratios(ax_ratio, report, goals)
    plot_rates(ax_rate, report)
    plot_restart(ax_restart, report)
    save_figure(fig, path)


def write_results(report: Report, cfg: Config, wall_seconds: float) -> None:
    timing = (f"best of the timed passes after one warm-up pass ({cfg.reps} per lookup/update contender, "
              f"{cfg.restart_reps} per restart); each lookup/update pass is {cfg.n_batches} batches")
    save_results(report, RESULTS_DIR, cfg.results_name, "store", cfg, timing, environment(cfg), wall_seconds,
                 lambda g, path: plot(report, g, path))


@contextlib.contextmanager
def pm_directory(requested: str) -> Iterator[str]:
    """The directory standing in for PM: as asked, or for 'auto' a private tmpfs with 2 MB pages (needs
    root), else /dev/shm."""
    if requested != "auto":
        yield requested
        return
    mount_point = tempfile.mkdtemp(prefix="embps-pm-")
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "huge=always,size=16g", "embps-pm", mount_point],
        capture_output=True).returncode == 0
    if not mounted:
        os.rmdir(mount_point)
        print("note: cannot mount a huge-page tmpfs (needs root); the store gets /dev/shm's 4 KB pages")
        yield "/dev/shm"
        return
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", mount_point], check=False)
        os.rmdir(mount_point)


def lookup_on_small_pages(report: Report, keys: np.ndarray, batch_rows: np.ndarray, cfg: Config,
                          rng: np.random.Generator, gather) -> None:
    """The lookup comparison again on 4 KB pages: the store on /dev/shm, the dense array MADV_NOHUGEPAGE."""
    with tempfile.TemporaryDirectory(dir="/dev/shm", prefix="embps-store-bench-4k-") as tmp:
        spec = TableSpec(cfg.dim, cfg.rows, OptimizerSpec("rowwise_adagrad", lr=cfg.lr, eps=cfg.eps))
        with Store(Path(tmp) / "store", persist=cfg.persist) as store:
            table = store.create_table(TABLE, spec)
            dense = build_table(Report(GOALS), table, keys, cfg, rng, huge=False)
            bench_lookup(report, table, keys, dense, batch_rows, cfg, gather, context_suffix="_4k_pages")


def main() -> None:
    started = time.perf_counter()
    cfg = parse_args()
    with pm_directory(cfg.tmp_dir) as pm_dir:
        run(dataclasses.replace(cfg, tmp_dir=pm_dir), started)


def run(cfg: Config, started: float) -> None:
    print(f"store bench: {cfg.rows:,} rows x dim {cfg.dim}, batch {cfg.batch}, Zipf {cfg.zipf_theta}, "
          f"{cfg.n_batches} batches per pass, {cfg.reps} passes; store in {cfg.tmp_dir} ({mount_of(cfg.tmp_dir)})",
          flush=True)
    rng = np.random.default_rng(cfg.seed)
    report = Report(GOALS)
    keys = make_keys(cfg.rows)
    batch_rows = zipf_batches(cfg.rows, cfg.n_batches, cfg.batch, cfg.zipf_theta, rng)
    report.note("distinct_keys_per_batch", float(np.mean([len(np.unique(b)) for b in batch_rows])), "keys")
    with tempfile.TemporaryDirectory(prefix="embps-dense-gather-") as build_dir:
        gather = compile_dense_gather(build_dir)   # loaded: the files can go
    with tempfile.TemporaryDirectory(dir=cfg.tmp_dir, prefix="embps-store-bench-") as tmp:
        store_dir = Path(tmp) / "store"
        spec = TableSpec(cfg.dim, cfg.rows, OptimizerSpec("rowwise_adagrad", lr=cfg.lr, eps=cfg.eps))
        with Store(store_dir, persist=cfg.persist) as store:
            table = store.create_table(TABLE, spec)
            dense = build_table(report, table, keys, cfg, rng)
            bench_lookup(report, table, keys, dense, batch_rows, cfg, gather)
            if not cfg.lookup_only:
                bench_update(report, table, keys, dense, batch_rows, cfg, rng)
            report.note("store_file_bytes", float(table.stats().file_bytes), "B")
        if cfg.lookup_only:
            del dense
        else:
            checkpoint = (Path(tmp) / "keys.npy", Path(tmp) / "rows.npy")
            np.save(checkpoint[0], keys)
            # The table's rows after the updates, as the baseline mirrored them.  Keys and rows only: the
            # store also recovers the optimizer state, so leaving it out favours the baseline.
            np.save(checkpoint[1], dense)
            del dense
            bench_restart(report, store_dir, checkpoint, cfg)
    if cfg.recovery_rows:
        bench_crash_recovery(report, cfg)
    if "huge=" in mount_of(cfg.tmp_dir):
        lookup_on_small_pages(report, keys, batch_rows, cfg, rng, gather)
    if cfg.lookup_only:
        report.print_goals()
    else:
        write_results(report, cfg, time.perf_counter() - started)
    print(f"store bench took {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
