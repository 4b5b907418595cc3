"""MovieLens-100k as click-style samples: a small real data set with real user/item skew, read from
the copy bundled in the `recbole` wheel (`pip install --no-deps recbole`; recbole itself is never
imported -- it pulls in heavy dependencies -- only its package directory is located).

Samples: the 100,000 ratings.  Label: rating >= 4 (~55% positive).
  sparse  [user, item, gender, age bucket, occupation, first genre]: users and items renumbered
          0..942 and 0..1681 in id order; age buckets <18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+
          (MovieLens-1M's); occupations and first genres numbered in sorted order
  dense   [age, release year, release year unknown]: age and year standardised over the users and
          items; an unknown year is 0 with the flag set
Split: by time -- the last 20% of ratings by timestamp (stable on ties) are eval, the rest train, as
a deployed model only sees the past.  Train batches come from a fresh seeded permutation every epoch
(epoch e shuffled by (seed, e), so any batch index is reachable without replaying earlier ones);
eval batches are in time order.  The data set is 2 MB, so it is held in memory.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from . import Batch, DatasetInfo, batches_per_epoch, iterate_batches

AGE_BUCKET_EDGES = (18, 25, 35, 45, 50, 56)
INSTALL_HINT = "pip install --no-deps recbole"


def bundled_ml100k_dir() -> Path:
    """recbole/dataset_example/ml-100k of the installed wheel, found without importing recbole."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"MovieLens-100k is read from the recbole wheel: {INSTALL_HINT}")
    directory = Path(next(iter(spec.submodule_search_locations))) / "dataset_example" / "ml-100k"
    if not (directory / "ml-100k.inter").is_file():
        raise FileNotFoundError(f"{directory} has no ml-100k.inter: reinstall with {INSTALL_HINT}")
    return directory


def _read_columns(path: Path) -> dict[str, np.ndarray]:
    """A recbole atomic file (a header of 'name:type' columns, then tab-separated rows) as
    {name: string array}, rows sorted by the first column's integer id."""
    with open(path, encoding="utf-8") as lines:
        names = [column.split(":")[0] for column in next(lines).rstrip("\n").split("\t")]
        rows = sorted((line.rstrip("\n").split("\t") for line in lines if line.strip()), key=lambda r: int(r[0]))
    return {name: np.array([row[k] for row in rows]) for k, name in enumerate(names)}


def _vocabulary(values) -> np.ndarray:
    """Each value's index in the sorted set of values."""
    return np.unique(np.array(values), return_inverse=True)[1]


def _standardise(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / x.std()


class MovieLens100k:
    def __init__(self, seed: int = 0, eval_fraction: float = 0.2, path: str | os.PathLike | None = None):
        if not 0 < eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
        directory = Path(path) if path is not None else bundled_ml100k_dir()
        self.seed = seed

        users = _read_columns(directory / "ml-100k.user")
        user_ids = users["user_id"].astype(np.int64)
        ages = users["age"].astype(np.float64)
        user_features = np.stack([_vocabulary(users["gender"]),
                                  np.searchsorted(AGE_BUCKET_EDGES, ages, side="right"),
                                  _vocabulary(users["occupation"])], axis=1)

        items = _read_columns(directory / "ml-100k.item")
        item_ids = items["item_id"].astype(np.int64)
        known = np.char.isdigit(items["release_year"])              # one item's year is 'unkonwn'
        years = np.where(known, items["release_year"], "0").astype(np.float64)
        years = np.where(known, years - years[known].mean(), 0.0) / years[known].std()
        first_genre = _vocabulary([(genres.split() or ["unknown"])[0] for genres in items["class"]])

        # user_id item_id rating timestamp, all exact in float64
        ratings = np.loadtxt(directory / "ml-100k.inter", np.float64, delimiter="\t", skiprows=1, ndmin=2)
        ratings = ratings[np.argsort(ratings[:, 3], kind="stable")]   # time order
        user = self._index(user_ids, ratings[:, 0].astype(np.int64), "user")
        item = self._index(item_ids, ratings[:, 1].astype(np.int64), "item")

        self._sparse = np.column_stack([user, item, user_features[user], first_genre[item]]).astype(np.int64)
        self._dense = np.column_stack([_standardise(ages)[user], years[item], ~known[item]]).astype(np.float32)
        self._labels = (ratings[:, 2] >= 4).astype(np.float32)
        n = len(ratings)
        n_eval = round(n * eval_fraction)
        sizes = (len(user_ids), len(item_ids), int(user_features[:, 0].max()) + 1, len(AGE_BUCKET_EDGES) + 1,
                 int(user_features[:, 2].max()) + 1, int(first_genre.max()) + 1)
        self.info = DatasetInfo("movielens-100k", self._dense.shape[1], sizes, n - n_eval, n_eval)
        self._permutation: tuple[int, np.ndarray] | None = None

    @staticmethod
    def _index(ids: np.ndarray, raw: np.ndarray, what: str) -> np.ndarray:
        """Row of each raw id in `ids` (sorted)."""
        index = np.searchsorted(ids, raw).clip(0, len(ids) - 1)
        if (ids[index] != raw).any():
            raise ValueError(f"ml-100k.inter rates a {what} missing from ml-100k.{what}")
        return index

    def batches_per_epoch(self, batch_size: int, split: str = "train") -> int:
        return batches_per_epoch(self.info, batch_size, split)

    def batches(self, batch_size: int, split: str = "train", start_batch: int = 0,
                epochs: int | None = None) -> Iterator[Batch]:
        def make(epoch: int, j: int) -> Batch:
            index: np.ndarray | slice
            if split == "train":
                index = self._epoch_order(epoch)[j * batch_size:(j + 1) * batch_size]
            else:
                index = slice(self.info.n_train + j * batch_size, self.info.n_train + (j + 1) * batch_size)
            return Batch(self._dense[index].copy(), self._sparse[index].copy(), self._labels[index].copy())
        return iterate_batches(self.info, batch_size, split, start_batch, epochs, make)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._permutation is None or self._permutation[0] != epoch:
            self._permutation = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.info.n_train))
        return self._permutation[1]
