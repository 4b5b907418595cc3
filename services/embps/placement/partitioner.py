"""The graph partitioner: hash placement as the start, then rounds of native refinement (without the
GIL), then each host's mirror candidates in HET-GMP's priority order, as a Placement.

The start is today's placement: rows by jump hash of their shard key over the hosts' shards, and
sample i on host (i mod H*B) // B, as trainers share each global batch of H*B samples.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from embps.client.routing import jump_hash
from embps.store._native import ffi, lib
from embps.store.store import check_status

from .graph import SampleGraph
from .partition_settings import PartitionSettings
from .spec import Placement

CHUNK = 1 << 20   # samples or rows per native call: the progress bar's step


@dataclass(frozen=True)
class HostStats:
    samples: np.ndarray       # per host
    rows: np.ndarray          # rows used by some sample, per owner host
    served: np.ndarray        # expected rows served to other hosts per iteration


@dataclass(frozen=True)
class PartitionResult:
    placement: Placement
    objectives: list[float]   # the objective of the hash start, then after every round
    hosts: HostStats


class NativePartitioner:
    """One embps_partitioner over a graph.  It borrows the graph's edges, rewriting them in place while
    it lives: use them again only after close()."""

    def __init__(self, graph: SampleGraph, settings: PartitionSettings, row_owner: np.ndarray,
                 sample_host: np.ndarray):
        self.graph, self.settings = graph, settings
        self._edges = np.ascontiguousarray(graph.edges, np.uint32)
        self._cost = np.ascontiguousarray(settings.link_cost_matrix(), np.float64)
        self._owner = np.ascontiguousarray(row_owner, np.uint16)
        self._sample_host = np.ascontiguousarray(sample_host, np.uint16)
        cfg = ffi.new("embps_partition_config *")
        cfg.n_samples, cfg.width, cfg.n_rows = graph.n_samples, self._edges.shape[1], graph.n_rows
        cfg.edges = ffi.from_buffer("uint32_t[]", self._edges, require_writable=True)
        cfg.hosts, cfg.batch, cfg.seed = settings.hosts, settings.batch, settings.seed
        cfg.link_cost = ffi.from_buffer("double[]", self._cost)
        cfg.row_owner = ffi.from_buffer("uint16_t[]", self._owner)
        cfg.sample_host = ffi.from_buffer("uint16_t[]", self._sample_host)
        cfg.sample_balance, cfg.row_balance = settings.sample_balance, settings.row_balance
        cfg.load_balance = settings.load_balance
        cfg.sample_slack, cfg.row_slack = settings.sample_slack, settings.row_slack
        cfg.threads = settings.threads or min(os.cpu_count() or 1, 64)
        out = ffi.new("embps_partitioner **")
        check_status(lib.embps_partition_create(cfg, out))
        self._p = ffi.gc(out[0], lib.embps_partition_destroy)

    def close(self) -> None:
        """Frees the native partitioner, which restores the edges."""
        if self._p is not None:
            ffi.release(self._p)
            self._p = None

    def __enter__(self) -> NativePartitioner:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def begin_sweep(self, round_index: int) -> None:
        check_status(lib.embps_partition_begin_sweep(self._p, round_index))

    def refine_samples(self, lo: int, hi: int) -> int:
        moved = ffi.new("uint64_t *")
        check_status(lib.embps_partition_refine_samples(self._p, lo, hi, moved))
        return moved[0]

    def refine_rows(self, lo: int, hi: int) -> int:
        moved = ffi.new("uint64_t *")
        check_status(lib.embps_partition_refine_rows(self._p, lo, hi, moved))
        return moved[0]

    def objective(self) -> float:
        summary = ffi.new("embps_partition_summary *")
        check_status(lib.embps_partition_summarize(self._p, summary))
        return summary.objective

    def host_stats(self) -> HostStats:
        h = self.settings.hosts
        stats = HostStats(np.zeros(h, np.uint64), np.zeros(h, np.uint64), np.zeros(h, np.float64))
        check_status(lib.embps_partition_host_stats(self._p, ffi.from_buffer("uint64_t[]", stats.samples),
                                                    ffi.from_buffer("uint64_t[]", stats.rows),
                                                    ffi.from_buffer("double[]", stats.served)))
        return stats

    def placement_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        owner = np.empty(self.graph.n_rows, np.uint16)
        hosts = np.empty(self.graph.n_samples, np.uint16)
        check_status(lib.embps_partition_placement(self._p, ffi.from_buffer("uint16_t[]", owner),
                                                   ffi.from_buffer("uint16_t[]", hosts)))
        return owner, hosts

    def mirror_candidates(self, host: int, room: int) -> tuple[np.ndarray, np.ndarray]:
        """The rows `host` uses and does not own (at most `room`), with their priority, in row order."""
        rows, priority, n = np.empty(room, np.uint32), np.empty(room, np.float64), ffi.new("uint64_t *")
        check_status(lib.embps_partition_mirror_candidates(
            self._p, host, ffi.from_buffer("uint32_t[]", rows), ffi.from_buffer("double[]", priority), room, n))
        return rows[:n[0]], priority[:n[0]]


def hash_start(graph: SampleGraph, hosts: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Today's placement: (row owners by jump hash of the row's key, sample hosts by batch slice).  Rows
    no sample uses are given host 0: they count nowhere and are not placed."""
    owner = np.zeros(graph.n_rows, np.uint16)
    used = np.flatnonzero(graph.used)
    for lo in range(0, len(used), CHUNK * 8):
        rows = used[lo:lo + CHUNK * 8]
        owner[rows] = jump_hash(graph.keys_of(rows), hosts)
    sample_host = ((np.arange(graph.n_samples, dtype=np.int64) % (hosts * batch)) // batch).astype(np.uint16)
    return owner, sample_host


Progress = Callable[[str, int, int], None]     # (phase description, done, total)
Report = Callable[[str], None]


def partition(graph: SampleGraph, settings: PartitionSettings, progress: Progress | None = None,
              report: Report | None = None) -> PartitionResult:
    progress = progress or (lambda _what, _done, _total: None)
    report = report or (lambda _line: None)
    with NativePartitioner(graph, settings, *hash_start(graph, settings.hosts, settings.batch)) as native:
        return _refine(native, graph, settings, progress, report)


def _refine(native: NativePartitioner, graph: SampleGraph, settings: PartitionSettings, progress: Progress,
            report: Report) -> PartitionResult:
    objectives = [native.objective()]
    report(f"hash placement: objective {objectives[0]:,.2f} expected remote rows per iteration")
    for r in range(settings.rounds):
        native.begin_sweep(r)
        moved_samples = _sweep(native.refine_samples, graph.n_samples, f"round {r + 1}: samples", progress)
        native.begin_sweep(r)
        moved_rows = _sweep(native.refine_rows, graph.n_rows, f"round {r + 1}: rows", progress)
        objectives.append(native.objective())
        report(f"round {r + 1}: objective {objectives[-1]:,.2f} ({objectives[-1] / objectives[0]:.3f} of hash), "
               f"moved {moved_samples:,} samples and {moved_rows:,} rows")
    owner, sample_host = native.placement_arrays()
    stats = native.host_stats()
    used = np.flatnonzero(graph.used)
    mirrors = tuple(_mirrors(native, graph, settings, h, int(len(used) - stats.rows[h]))
                    for h in range(settings.hosts))
    placement = Placement(settings.hosts, graph.keys_of(used), owner[used], sample_host, mirrors, graph.dataset,
                          settings.seed)
    return PartitionResult(placement, objectives, stats)


def _sweep(refine: Callable[[int, int], int], n: int, what: str, progress: Progress) -> int:
    moved = 0
    for lo in range(0, n, CHUNK):
        moved += refine(lo, min(lo + CHUNK, n))
        progress(what, min(lo + CHUNK, n), n)
    return moved


def _mirrors(native: NativePartitioner, graph: SampleGraph, settings: PartitionSettings, host: int,
             not_owned: int) -> np.ndarray:
    """The top store_rate x not_owned candidates of `host`, best first (ties: lower key first)."""
    rows, priority = native.mirror_candidates(host, not_owned)
    count = min(len(rows), math.ceil(settings.store_rate * not_owned))
    if count == 0:
        return np.empty(0, np.uint64)
    # The count-th best priority by partial sort, then those above it and the first ties (rows ascend).
    threshold = -np.partition(-priority, count - 1)[count - 1]
    above = np.flatnonzero(priority > threshold)
    chosen = np.concatenate([above, np.flatnonzero(priority == threshold)[:count - len(above)]])
    best = chosen[np.lexsort((rows[chosen], -priority[chosen]))]
    return graph.keys_of(rows[best])
