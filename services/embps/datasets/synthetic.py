"""A seeded, Criteo-shaped generator: no data files, any size, with the access skew that makes
embedding caching pay off and labels a model can actually learn.

Tables: the 26 Criteo Kaggle table sizes scaled by `scale`, each `max(2, ceil(size * scale))` rows
(scale=1 gives the real sizes; the default 0.01 gives 101,313 rows for the largest table).

Skew: each table has a hot set of `max(1, round(rows * hot_fraction))` rows (at most rows - 1), picked
at random from the seed.  A lookup hits the hot set with probability `hot_access` and is uniform
within it; otherwise it is uniform over the cold rows.  Uniform within each set keeps the figure
exact and checkable: the top 1% of rows by count take ~92% of a large table's lookups.  (Tables
too small to have 1% of a row still get one hot row, which then takes ~92% of their lookups.)

Dense: 13 features log1p(count) with count = exp(mu_j + s_j * z_j), z ~ N(0, 1) -- non-negative and
heavy-tailed like Criteo's log-transformed integer columns.

Labels: Bernoulli(sigmoid(logit)) of a hidden logistic model that is drawn from the seed:
    logit = bias + w . z + sum over tables of weight[t][id]  (ids in the hot set; cold ids add 0)
Hot rows are seen often enough to learn a weight for, so embedding models reach a held-out AUC well
above 0.5: the hidden model itself scores ~0.81 at scale 0.01 (~0.87 at 0.1), per-id click-rate
counts over 200k samples ~0.78.  The click rate is ~0.3 (Criteo's is ~0.26).

Structure (`segments=K`, off by default; K = 0 keeps the data above unchanged, bit for bit): each
sample belongs to one of K latent segments, uniform, and each table's hot and cold rows are cut into
K slices of consecutive ranks, slice g belonging to segment g.  With probability `segment_affinity`
a lookup draws from its segment's slice (of the hot or the cold set, as above), else from the whole
set.  Slices are equal within one rank, so each set keeps its share of lookups and stays near
uniform inside: the skew is today's.  Samples of one segment share rows, as users of one market or
one advertiser do in Criteo, which gives a graph partitioner co-occurrence to find.

Determinism: samples are made in blocks of BLOCK, each from its own generator seeded by
(seed, split, block index), so sample i of a split never changes, batch k is samples
[k*B, (k+1)*B) -- whatever batch size came before -- and skipping to a batch is O(1).  The train
and eval splits use different seed streams; the hidden model (hot sets, weights) is shared.  Every
epoch replays the same n_train samples in the same order (they are i.i.d. already).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

from . import (CRITEO_KAGGLE_TABLE_SIZES, CRITEO_N_DENSE, SPLITS, Batch, DatasetInfo, batches_per_epoch,
               iterate_batches)

BLOCK = 8192                 # samples per seeded block
HOT_WEIGHT_STD = 0.5         # spread of the hidden per-row weights of hot rows
DENSE_WEIGHT_STD = 0.3       # spread of the hidden weights of the dense latent z
TARGET_CTR = 0.25            # the bias aims here; sigmoid's convexity lands it near 0.3
_TABLE_SHIFT = 40            # above any table's row count


class SyntheticDataset:
    def __init__(self, scale: float = 0.01, n_train: int = 10_000_000, n_eval: int = 1_000_000,
                 seed: int = 0, hot_fraction: float = 0.01, hot_access: float = 0.92,
                 base_table_sizes: Sequence[int] = CRITEO_KAGGLE_TABLE_SIZES, n_dense: int = CRITEO_N_DENSE,
                 segments: int = 0, segment_affinity: float = 0.9):
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        if not (0 < hot_fraction < 1 and 0 <= hot_access <= 1):
            raise ValueError("need 0 < hot_fraction < 1 and 0 <= hot_access <= 1")
        if n_train < 1 or n_eval < 1 or n_dense < 1:
            raise ValueError("n_train, n_eval and n_dense must be >= 1")
        if segments < 0 or not 0 <= segment_affinity <= 1:
            raise ValueError("need segments >= 0 and 0 <= segment_affinity <= 1")
        sizes = tuple(max(2, math.ceil(size * scale)) for size in base_table_sizes)
        structure = f", segments={segments}, affinity={segment_affinity}" if segments else ""
        self.info = DatasetInfo(f"synthetic(scale={scale}, seed={seed}{structure})", n_dense, sizes, n_train, n_eval)
        self.seed, self.hot_access = seed, hot_access
        self.segments, self.segment_affinity = segments, segment_affinity

        hidden = np.random.default_rng([seed, len(SPLITS)])   # a stream neither split uses
        n_hot = [min(rows - 1, max(1, round(rows * hot_fraction))) for rows in sizes]
        self.n_hot = np.array(n_hot, np.int64)
        self.n_cold = np.array(sizes, np.int64) - self.n_hot
        # hot_ids[t]: the hot rows of table t, sorted (public: benchmarks may want the true hot set).
        self.hot_ids = [np.sort(hidden.choice(rows, hot, replace=False)) for rows, hot in zip(sizes, n_hot)]
        # Cold rank c is the c-th row that is not hot: c + #{j : hot_ids[j] - j <= c}.
        cold_skip = [hot - np.arange(len(hot)) for hot in self.hot_ids]
        hot_weights = [hidden.normal(0, HOT_WEIGHT_STD, hot) for hot in n_hot]
        # All tables' hot ids, weights and skips in one array each, so that a block's lookups are a few
        # vectorised gathers: table t's part starts at _hot_base[t]; skips carry t in their top bits.
        self._hot_base = np.concatenate([[0], np.cumsum(n_hot)[:-1]]).astype(np.int64)
        self._hot_flat = np.concatenate(self.hot_ids)
        self._hot_weight_flat = np.concatenate(hot_weights)
        self._skip_flat = np.concatenate([(t << _TABLE_SHIFT) | skip for t, skip in enumerate(cold_skip)])
        # A segment's slice of each table's hot and cold ranks: first rank, width (as a float, as the draw
        # scales it) and the last rank.
        self._slices = [_segment_slices(n, max(segments, 1)) for n in (self.n_hot, self.n_cold)]
        self._dense_mu = hidden.uniform(0, 5, n_dense)
        self._dense_sigma = hidden.uniform(0.5, 1.5, n_dense)
        self._dense_weights = hidden.normal(0, DENSE_WEIGHT_STD, n_dense)
        expected_hot = hot_access * sum(w.mean() for w in hot_weights)
        self._bias = math.log(TARGET_CTR / (1 - TARGET_CTR)) - expected_hot
        self._cache: tuple[tuple[str, int], Batch] | None = None

    def batches_per_epoch(self, batch_size: int, split: str = "train") -> int:
        return batches_per_epoch(self.info, batch_size, split)

    def batches(self, batch_size: int, split: str = "train", start_batch: int = 0,
                epochs: int | None = None) -> Iterator[Batch]:
        return iterate_batches(self.info, batch_size, split, start_batch, epochs,
                               lambda _epoch, j: self.samples(split, j * batch_size, (j + 1) * batch_size))

    def samples(self, split: str, start: int, stop: int) -> Batch:
        """Samples [start, stop) of a split's fixed sample stream."""
        parts = []
        for block, lo, hi in _block_spans(start, stop):
            data = self._block(split, block)
            parts.append((data.dense[lo:hi], data.sparse[lo:hi], data.labels[lo:hi]))
        if len(parts) == 1:
            return Batch(*(a.copy() for a in parts[0]))
        return Batch(*(np.concatenate(arrays) for arrays in zip(*parts)))

    def sample_ids(self, split: str, start: int, stop: int) -> np.ndarray:
        """samples(split, start, stop).sparse, without making the dense features and labels (the graph
        partitioner reads tens of millions of samples)."""
        return np.concatenate([self._block_ids(split, block)[lo:hi] for block, lo, hi in _block_spans(start, stop)])

    def _block(self, split: str, block: int) -> Batch:
        """Samples [block * BLOCK, (block + 1) * BLOCK) of a split; the last block is kept because
        consecutive batches usually share it."""
        key = (split, block)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        rng = self._block_rng(split, block)
        z = rng.standard_normal((BLOCK, self.info.n_dense))
        dense = np.log1p(np.exp(self._dense_mu + self._dense_sigma * z)).astype(np.float32)
        sparse, is_hot, hot_rank = self._draw_ids(rng)
        weight = np.where(is_hot, self._hot_weight_flat[self._hot_base + hot_rank], 0.0)
        logit = self._bias + z @ self._dense_weights
        for t in range(self.info.n_tables):     # table by table: the labels' rounding stays as it was
            logit += weight[:, t]
        labels = (rng.random(BLOCK) < 1 / (1 + np.exp(-logit))).astype(np.float32)
        batch = Batch(dense, sparse, labels)
        self._cache = (key, batch)
        return batch

    def _block_ids(self, split: str, block: int) -> np.ndarray:
        rng = self._block_rng(split, block)
        rng.standard_normal((BLOCK, self.info.n_dense))     # the dense latent: drawn, as the stream has it
        return self._draw_ids(rng)[0]

    def _block_rng(self, split: str, block: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, SPLITS.index(split), block])

    def _draw_ids(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A block's ids (the draws after the dense latent), with which lookups hit the hot set and
        their hot ranks."""
        shape = (BLOCK, self.info.n_tables)
        is_hot = rng.random(shape) < self.hot_access
        hot_rank = rng.integers(0, self.n_hot, shape)
        cold_rank = rng.integers(0, self.n_cold, shape)
        if self.segments:
            self._segment_ranks(rng, hot_rank, cold_rank)
        at = hot_rank + self._hot_base
        sparse = self._hot_flat.take(at, out=at)
        # Cold rank c of table t is id c + #{skip of t <= c}: searched among the cold lookups only.
        cold = np.flatnonzero(~is_hot)
        table = cold % self.info.n_tables
        rank = cold_rank.ravel()[cold]
        below = np.searchsorted(self._skip_flat, (table << _TABLE_SHIFT) | rank, side="right") - self._hot_base[table]
        sparse.ravel()[cold] = rank + below
        return sparse, is_hot, hot_rank

    def _segment_ranks(self, rng: np.random.Generator, hot_rank: np.ndarray, cold_rank: np.ndarray) -> None:
        """The ranks of the structured option, in place: drawn from the sample's segment's slice where
        the affinity draw says so, kept as drawn elsewhere."""
        segment = rng.integers(0, self.segments, BLOCK)
        affine = rng.random(hot_rank.shape) < self.segment_affinity
        for drawn, (first, width, last) in zip((hot_rank, cold_rank), self._slices):
            offset = rng.random(drawn.shape)
            offset *= width[segment]
            inside = offset.astype(np.int64)
            inside += first[segment]
            np.minimum(inside, last, out=inside)
            np.copyto(drawn, inside, where=affine)


def _segment_slices(n: np.ndarray, segments: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    group = np.arange(segments)[:, None]
    first = group * n // segments
    return first, np.maximum((group + 1) * n // segments - first, 1).astype(np.float64), n - 1


def _block_spans(start: int, stop: int) -> Iterator[tuple[int, int, int]]:
    """The blocks of samples [start, stop): (block, first and end offset within it)."""
    for block in range(start // BLOCK, (stop - 1) // BLOCK + 1):
        yield block, max(start - block * BLOCK, 0), min(stop - block * BLOCK, BLOCK)
