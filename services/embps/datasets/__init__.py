"""Training-data readers: one global batch at a time, deterministic, streaming.

Every source yields the same shape of data -- dense float features, one categorical id per embedding
table, a 0/1 label -- so trainers, the oracle cacher's lookahead and benchmarks can switch sources
with a spec string:

    ds = open_dataset("synthetic", scale=0.01)          # seeded Criteo-like generator
    ds = open_dataset("criteo:/data/train.txt")         # Criteo TSV (preprocessed once to a cache dir)
    ds = open_dataset("criteo:/data/criteo-bin")        # a directory written by `embps preprocess-criteo`
    ds = open_dataset("movielens-100k")                 # the files bundled in the `recbole` wheel
    ds = open_dataset("movielens-100k-seq")             # the same ratings as next-item sequences

A sequence source (DatasetInfo.sequence_length = L > 0) has the columns [user, the L previous items
oldest first, candidate item] and labels 1 for the true next item, 0 for a sampled negative; its eval
split is ranking queries: each run of `eval_candidates` samples is one query, the held-out item first.

Batch order is a pure function of (source, options, batch_size, split, batch index): the same index
always gives the same batch, and `start_batch` jumps there in O(1) -- the lookahead cacher reads
future batches of the very stream the trainer will see.

Epochs: a split has `n // batch_size` full batches per epoch (the ragged tail is dropped).  With
`epochs=None` (the default) the train split repeats epochs forever -- training loops take a fixed
number of steps -- and the eval split is read once; pass `epochs=k` for exactly k epochs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

SPLITS = ("train", "eval")

# Rows per categorical feature of the Criteo Kaggle (Display Advertising Challenge) data set, in
# column order C1..C26: the DLRM reference counts of distinct values.
CRITEO_KAGGLE_TABLE_SIZES = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
    5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)
CRITEO_N_DENSE = 13


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    n_dense: int                    # dense features per sample (>= 1)
    table_sizes: tuple[int, ...]    # rows of each categorical feature; ids are in [0, size)
    n_train: int                    # samples in the train split
    n_eval: int                     # samples in the eval split
    sequence_length: int = 0        # L > 0: a sequence source (see the module docstring)
    eval_candidates: int = 0        # > 0: the eval split is queries of this many samples, positive first

    @property
    def n_tables(self) -> int:
        return len(self.table_sizes)

    def n_samples(self, split: str) -> int:
        check_split(split)
        return self.n_train if split == "train" else self.n_eval


@dataclass
class Batch:
    """One global batch: row i of each array is sample i."""
    dense: np.ndarray    # float32 [B, n_dense]
    sparse: np.ndarray   # int64 [B, n_tables]: one id per table per sample
    labels: np.ndarray   # float32 [B] in {0, 1}

    def __len__(self) -> int:
        return len(self.labels)


class Dataset(Protocol):
    info: DatasetInfo

    def batches(self, batch_size: int, split: str = "train", start_batch: int = 0,
                epochs: int | None = None) -> Iterator[Batch]:
        """Full batches in a deterministic order, from global batch index `start_batch` on."""
        ...

    def batches_per_epoch(self, batch_size: int, split: str = "train") -> int:
        ...


def open_dataset(spec: str, **options) -> Dataset:
    """"synthetic", "criteo:<path>", "movielens-100k" or "movielens-100k-seq"; options go to that source's constructor."""
    kind, _, arg = spec.partition(":")
    if kind == "synthetic" and not arg:
        from .synthetic import SyntheticDataset
        return SyntheticDataset(**options)
    if kind == "criteo" and arg:
        from .criteo import open_criteo
        return open_criteo(arg, **options)
    if kind in ("movielens-100k", "ml-100k") and not arg:
        from .movielens import MovieLens100k
        return MovieLens100k(**options)
    if kind in ("movielens-100k-seq", "ml-100k-seq") and not arg:
        from .movielens_sequences import MovieLens100kSequences
        return MovieLens100kSequences(**options)
    raise ValueError(f"unknown dataset spec {spec!r}: expected 'synthetic', 'criteo:<path>', 'movielens-100k' "
                     "or 'movielens-100k-seq'")


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def batches_per_epoch(info: DatasetInfo, batch_size: int, split: str) -> int:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return info.n_samples(split) // batch_size


def iterate_batches(info: DatasetInfo, batch_size: int, split: str, start_batch: int, epochs: int | None,
                    make: Callable[[int, int], Batch]) -> Iterator[Batch]:
    """The epoch/skip bookkeeping every source shares: yields make(epoch, batch_in_epoch) for global
    batch indices start_batch, start_batch + 1, ...; see the module docstring for `epochs`."""
    per_epoch = batches_per_epoch(info, batch_size, split)
    if per_epoch == 0:
        raise ValueError(f"batch_size {batch_size} exceeds the {info.n_samples(split)} samples of the "
                         f"{split} split of {info.name}")
    if start_batch < 0:
        raise ValueError(f"start_batch must be >= 0, got {start_batch}")
    if epochs is None:
        epochs = None if split == "train" else 1
    end = None if epochs is None else epochs * per_epoch

    def generate() -> Iterator[Batch]:          # arguments are checked above, when batches() is called
        index = start_batch
        while end is None or index < end:
            yield make(*divmod(index, per_epoch))
            index += 1
    return generate()

