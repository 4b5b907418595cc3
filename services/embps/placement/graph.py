"""The sample-row graph of a job's training split: each sample's row indices, as the partitioner reads
them.

Row index r of feature f is `offsets[f] + id` (features in column order, ids below the table size),
so the rows of a data set are numbered in the order of their shard keys `(f << FEATURE_SHIFT) | id`
and a graph of Criteo's size (33.8 M rows) fits uint32.  Edges are an [n_samples, n_features]
uint32 matrix: 4.8 GB for Criteo Kaggle's 45.8 M samples.  Samples are read in blocks; a data set
with `sample_ids(split, start, stop)` (the synthetic generator) is read in parallel by forked workers
writing into one shared array (and marking the rows used in another).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from embps.common.job_config import FEATURE_SHIFT
from embps.datasets import Dataset

READ_BLOCK = 1 << 16          # samples per read
MAX_WHOLE_READ = 1 << 22      # data sets without samples() are read as one batch, up to this size


@dataclass(frozen=True, eq=False)
class SampleGraph:
    edges: np.ndarray         # uint32 [n_samples, n_features]: row indices
    offsets: np.ndarray       # int64 [n_features + 1]: feature f's rows are [offsets[f], offsets[f + 1])
    used: np.ndarray          # bool [n_rows]: rows some sample uses
    dataset: str              # the DatasetInfo name

    @property
    def n_samples(self) -> int:
        return self.edges.shape[0]

    @property
    def n_rows(self) -> int:
        return int(self.offsets[-1])

    def keys_of(self, rows: np.ndarray) -> np.ndarray:
        """The shard keys of row indices."""
        rows = np.asarray(rows, np.int64)
        feature = np.searchsorted(self.offsets, rows, side="right") - 1
        return (feature.astype(np.uint64) << np.uint64(FEATURE_SHIFT)) | (rows - self.offsets[feature]).astype(np.uint64)


def graph_from_ids(sparse: np.ndarray, table_sizes, dataset: str) -> SampleGraph:
    """The graph of an in-memory [samples, features] id matrix (tests, small data)."""
    offsets = _offsets(table_sizes)
    edges = _row_indices(np.asarray(sparse), offsets, 0)
    return SampleGraph(edges, offsets, _used(edges, offsets), dataset)


def read_graph(dataset: Dataset, n_samples: int | None = None, workers: int | None = None,
               progress: Callable[[int], None] | None = None) -> SampleGraph:
    """The first n_samples (default: all) of the train split; progress(k) after each k samples read."""
    info = dataset.info
    n = info.n_train if n_samples is None else n_samples
    if not 1 <= n <= info.n_train:
        raise ValueError(f"samples must be in [1, {info.n_train}] (the train split of {info.name}), got {n}")
    offsets = _offsets(info.table_sizes)
    if offsets[-1] >= 1 << 32:
        raise ValueError(f"{info.name} has {offsets[-1]} rows; the partitioner numbers rows in uint32")
    if not hasattr(dataset, "sample_ids"):
        edges = _read_whole(dataset, n, offsets)
        return SampleGraph(edges, offsets, _used(edges, offsets), info.name)
    edges, used = _read_blocks(dataset, n, offsets, workers or os.cpu_count() or 1, progress or (lambda _k: None))
    return SampleGraph(edges, offsets, used, info.name)


def _offsets(table_sizes) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(np.asarray(table_sizes, np.int64))])


def _used(edges: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    used = np.zeros(int(offsets[-1]), bool)
    used[edges.ravel()] = True
    return used


def _row_indices(sparse: np.ndarray, offsets: np.ndarray, first: int) -> np.ndarray:
    sizes = np.diff(offsets)
    if sparse.ndim != 2 or sparse.shape[1] != len(sizes):
        raise ValueError(f"samples must have {len(sizes)} ids each, got shape {sparse.shape}")
    bad = (sparse < 0) | (sparse >= sizes)
    if bad.any():
        sample, feature = np.argwhere(bad)[0]
        raise ValueError(f"sample {first + sample} has id {sparse[sample, feature]} for feature {feature}, "
                         f"outside its table of {sizes[feature]} rows")
    return (sparse + offsets[:-1]).astype(np.uint32)


def _read_whole(dataset: Dataset, n: int, offsets: np.ndarray) -> np.ndarray:
    """Sample i is the i-th of the first epoch's order (such a data set has no stable sample index)."""
    if n > MAX_WHOLE_READ:
        raise ValueError(f"{dataset.info.name} is read in one piece: at most {MAX_WHOLE_READ} samples")
    return _row_indices(next(dataset.batches(n, "train", epochs=1)).sparse, offsets, 0)


# The forked readers' view of the shared arrays and the data set (set before the pool forks).
_shared: dict = {}


def _read_blocks(dataset, n: int, offsets: np.ndarray, workers: int,
                 progress: Callable[[int], None]) -> tuple[np.ndarray, np.ndarray]:
    width = len(offsets) - 1
    edges = _shared_array(np.uint32, n * width).reshape(n, width)
    used = _shared_array(np.bool_, int(offsets[-1]))
    starts = range(0, n, READ_BLOCK)
    _shared.update(edges=edges, used=used, dataset=dataset, offsets=offsets, n=n)
    try:
        if workers == 1:
            for start in starts:
                progress(_read_block(start))
        else:
            with ProcessPoolExecutor(workers, mp_context=_fork_context()) as pool:
                for count in pool.map(_read_block, starts):
                    progress(count)
    finally:
        _shared.clear()
    return edges, used


def _shared_array(dtype, size: int) -> np.ndarray:
    """Zeros in memory that forked workers share."""
    buffer = mmap.mmap(-1, max(size * np.dtype(dtype).itemsize, 1), flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
    return np.frombuffer(buffer, dtype, size)


def _read_block(start: int) -> int:
    """Reads samples [start, start + READ_BLOCK) into the edges and marks their rows used (the
    workers' concurrent stores of True into one byte are harmless)."""
    stop = min(start + READ_BLOCK, _shared["n"])
    rows = _row_indices(_shared["dataset"].sample_ids("train", start, stop), _shared["offsets"], start)
    _shared["edges"][start:stop] = rows
    _shared["used"][rows.ravel()] = True
    return stop - start


def _fork_context():
    import multiprocessing
    return multiprocessing.get_context("fork")
