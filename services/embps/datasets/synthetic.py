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
        self._cold_skip = [hot - np.arange(len(hot)) for hot in self.hot_ids]
        self._hot_weights = [hidden.normal(0, HOT_WEIGHT_STD, hot) for hot in n_hot]
        self._dense_mu = hidden.uniform(0, 5, n_dense)
        self._dense_sigma = hidden.uniform(0.5, 1.5, n_dense)
        self._dense_weights = hidden.normal(0, DENSE_WEIGHT_STD, n_dense)
        expected_hot = hot_access * sum(w.mean() for w in self._hot_weights)
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
        for block in range(start // BLOCK, (stop - 1) // BLOCK + 1):
            data = self._block(split, block)
            lo, hi = max(start - block * BLOCK, 0), min(stop - block * BLOCK, BLOCK)
            parts.append((data.dense[lo:hi], data.sparse[lo:hi], data.labels[lo:hi]))
        if len(parts) == 1:
            return Batch(*(a.copy() for a in parts[0]))
        return Batch(*(np.concatenate(arrays) for arrays in zip(*parts)))

    def _block(self, split: str, block: int) -> Batch:
        """Samples [block * BLOCK, (block + 1) * BLOCK) of a split; the last block is kept because
        consecutive batches usually share it."""
        key = (split, block)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, SPLITS.index(split), block])
        z = rng.standard_normal((BLOCK, self.info.n_dense))
        dense = np.log1p(np.exp(self._dense_mu + self._dense_sigma * z)).astype(np.float32)
        is_hot = rng.random((BLOCK, self.info.n_tables)) < self.hot_access
        hot_rank = rng.integers(0, self.n_hot, (BLOCK, self.info.n_tables))
        cold_rank = rng.integers(0, self.n_cold, (BLOCK, self.info.n_tables))
        if self.segments:
            hot_rank, cold_rank = self._segment_ranks(rng, hot_rank, cold_rank)
        sparse = np.empty((BLOCK, self.info.n_tables), np.int64)
        logit = self._bias + z @ self._dense_weights
        for t, (hot_ids, skip, weights) in enumerate(zip(self.hot_ids, self._cold_skip, self._hot_weights)):
            hot, h, c = is_hot[:, t], hot_rank[:, t], cold_rank[:, t]
            sparse[:, t] = np.where(hot, hot_ids[h], c + np.searchsorted(skip, c, side="right"))
            logit += np.where(hot, weights[h], 0.0)
        labels = (rng.random(BLOCK) < 1 / (1 + np.exp(-logit))).astype(np.float32)
        batch = Batch(dense, sparse, labels)
        self._cache = (key, batch)
        return batch

    def _segment_ranks(self, rng: np.random.Generator, hot_rank: np.ndarray,
                       cold_rank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ranks of the structured option: drawn from the sample's segment's slice where the
        affinity draw says so, kept as drawn elsewhere."""
        segment = rng.integers(0, self.segments, BLOCK)[:, None]
        affine = rng.random((BLOCK, self.info.n_tables)) < self.segment_affinity
        ranks = []
        for drawn, n in ((hot_rank, self.n_hot), (cold_rank, self.n_cold)):
            lo = segment * n // self.segments
            width = np.maximum((segment + 1) * n // self.segments - lo, 1)
            inside = np.minimum(lo + (rng.random(drawn.shape) * width).astype(np.int64), n - 1)
            ranks.append(np.where(affine, inside, drawn))
        return ranks[0], ranks[1]
