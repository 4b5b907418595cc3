"""MovieLens-100k as next-item sequences (Caser's task): each user's ratings ordered by time, the last
one held out; read from the copy bundled in the `recbole` wheel, like embps.datasets.movielens.

Sequences: users and items renumbered 0..942 and 0..1681 in id order; a user's ratings in timestamp order
(ties in file order).  Every rating but a user's first and last is a training target: its sample has the
columns [user, the `history` (L) previous items oldest first, candidate item].  Positions before the
user's first rating hold the padding id n_items: each history column is its own table of n_items + 1
rows, because the suite keys rows by (column, id) -- the L positions do not share one item table as in
the paper, and the candidate column is a separate (output) item table, as Caser's W' is.

Train split: each target gives one positive (the true next item, label 1) and `negatives` samples whose
candidate is an item the user did not rate before its held-out one (label 0), drawn afresh every epoch
from (seed, epoch) and shuffled together by a seeded permutation, so any batch index is reachable
without replaying earlier ones.
Eval split: one ranking query per user, in user order: the L items before the held-out one as history,
candidates [held-out item, `eval_negatives` distinct items the user never rated], sampled once from
the seed.  The usual figures are hit rate@10 and NDCG@10 of the held-out item among the 101 candidates.
Dense: one feature, log1p(how many items the user rated before the target).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from . import Batch, DatasetInfo, batches_per_epoch, iterate_batches
from .movielens import bundled_ml100k_dir

TRAIN_STREAM, EVAL_STREAM = 0, 1   # seed streams of the train negatives and the eval candidates


class MovieLens100kSequences:
    def __init__(self, history: int = 5, negatives: int = 3, eval_negatives: int = 100, seed: int = 0,
                 path: str | os.PathLike | None = None):
        if history < 1 or negatives < 1 or eval_negatives < 1:
            raise ValueError(f"history, negatives and eval_negatives must be >= 1, got {history}, {negatives}, "
                             f"{eval_negatives}")
        directory = Path(path) if path is not None else bundled_ml100k_dir()
        if not (directory / "ml-100k.inter").is_file():
            raise FileNotFoundError(f"{directory} has no ml-100k.inter")
        self.seed, self.negatives = seed, negatives
        # user_id item_id rating timestamp, all exact in float64
        ratings = np.loadtxt(directory / "ml-100k.inter", np.float64, delimiter="\t", skiprows=1, ndmin=2)
        users, user = np.unique(ratings[:, 0].astype(np.int64), return_inverse=True)
        items, item = np.unique(ratings[:, 1].astype(np.int64), return_inverse=True)
        order = np.lexsort((ratings[:, 3], user))          # by user, then time; stable on ties
        user, item = user[order], item[order]
        n_users, self.n_items = len(users), len(items)
        if eval_negatives > self.n_items - np.bincount(user).max():
            raise ValueError(f"eval_negatives {eval_negatives}: some user has not that many unrated items")

        start = np.searchsorted(user, np.arange(n_users))
        position = np.arange(len(user)) - start[user]      # index in the user's sequence
        last = position == np.bincount(user)[user] - 1
        rows = np.column_stack([user, self._histories(item, position, history), item])
        target = (position >= 1) & ~last
        self._positives = rows[target]                      # [targets, L + 2]
        self._positive_dense = np.log1p(position[target]).astype(np.float32).reshape(-1, 1)
        # what a user rated before its held-out item: never a training negative
        self._seen = np.zeros((n_users, self.n_items), bool)
        self._seen[user[~last], item[~last]] = True
        self._eval = self._eval_queries(rows[last], np.log1p(position[last]), item[last], eval_negatives)

        sizes = (n_users, *[self.n_items + 1] * history, self.n_items)
        self.info = DatasetInfo("movielens-100k-seq", 1, sizes, len(self._positives) * (1 + negatives),
                                len(self._eval.labels), sequence_length=history,
                                eval_candidates=1 + eval_negatives)
        self._epoch: tuple[int, np.ndarray, np.ndarray] | None = None

    def _histories(self, item: np.ndarray, position: np.ndarray, length: int) -> np.ndarray:
        """[ratings, length]: the items 1..length steps before each rating, oldest first, padded."""
        history = np.full((len(item), length), self.n_items, np.int64)
        for back in range(1, length + 1):
            known = position >= back
            history[known, length - back] = item[np.flatnonzero(known) - back]
        return history

    def _eval_queries(self, last_rows: np.ndarray, last_dense: np.ndarray, held_out: np.ndarray,
                      eval_negatives: int) -> Batch:
        rng = np.random.default_rng([self.seed, EVAL_STREAM])
        rated = self._seen.copy()
        rated[np.arange(len(held_out)), held_out] = True
        candidates = np.stack([np.concatenate([[h], rng.choice(np.flatnonzero(~r), eval_negatives, replace=False)])
                               for h, r in zip(held_out, rated)])                       # [users, 1 + negatives]
        per_query = candidates.shape[1]
        sparse = np.repeat(last_rows, per_query, axis=0)
        sparse[:, -1] = candidates.reshape(-1)
        labels = np.tile(np.eye(1, per_query, dtype=np.float32)[0], len(held_out))
        return Batch(np.repeat(last_dense.astype(np.float32).reshape(-1, 1), per_query, axis=0), sparse, labels)

    def batches_per_epoch(self, batch_size: int, split: str = "train") -> int:
        return batches_per_epoch(self.info, batch_size, split)

    def batches(self, batch_size: int, split: str = "train", start_batch: int = 0,
                epochs: int | None = None) -> Iterator[Batch]:
        def make(epoch: int, j: int) -> Batch:
            part = slice(j * batch_size, (j + 1) * batch_size)
            if split == "eval":
                queries = self._eval
                return Batch(queries.dense[part].copy(), queries.sparse[part].copy(), queries.labels[part].copy())
            order, candidates = self._epoch_samples(epoch)
            target, slot = np.divmod(order[part], 1 + self.negatives)
            sparse = self._positives[target]
            sparse[:, -1] = candidates[target, slot]
            return Batch(self._positive_dense[target], sparse, (slot == 0).astype(np.float32))
        return iterate_batches(self.info, batch_size, split, start_batch, epochs, make)

    def _epoch_samples(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The epoch's sample order and candidates [targets, 1 + negatives]: column 0 the true item."""
        if self._epoch is None or self._epoch[0] != epoch:
            rng = np.random.default_rng([self.seed, TRAIN_STREAM, epoch])
            user = self._positives[:, :1]
            negative = rng.integers(0, self.n_items, (len(user), self.negatives))
            while (clash := self._seen[user, negative]).any():   # rejection: ~6% of the items are a user's
                negative[clash] = rng.integers(0, self.n_items, int(clash.sum()))
            candidates = np.column_stack([self._positives[:, -1], negative])
            self._epoch = (epoch, rng.permutation(self.info.n_train), candidates)
        return self._epoch[1], self._epoch[2]
