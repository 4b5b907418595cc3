"""movielens-100k-seq: next-item samples checked by hand on a tiny ratings file and against a plain-Python
reading of the bundled MovieLens-100k; ranking queries; seeded, resumable epochs."""

import csv
import importlib.util
import itertools
import math
import os
from collections import defaultdict

import numpy as np
import pytest

from embps.datasets import open_dataset

needs_recbole = pytest.mark.skipif(importlib.util.find_spec("recbole") is None,
                                   reason="MovieLens-100k comes from the recbole wheel: pip install --no-deps recbole")

# user item rating timestamp; user 10 rates items 1 and 2 at the same time (file order decides)
TINY = [(10, 3, 5, 5), (20, 6, 1, 1), (10, 1, 4, 2), (10, 4, 3, 9), (20, 5, 2, 3), (10, 2, 5, 2), (20, 1, 4, 4)]


@pytest.fixture
def tiny(tmp_path):
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    lines += ["\t".join(map(str, row)) for row in TINY]
    (tmp_path / "ml-100k.inter").write_text("\n".join(lines) + "\n")
    return open_dataset("movielens-100k-seq", path=os.fspath(tmp_path), history=2, negatives=1, eval_negatives=2)


def all_of(ds, split):
    return next(ds.batches(ds.info.n_samples(split), split, epochs=1))


def test_tiny_sequences_by_hand(tiny):
    # items 1..6 -> 0..5, users 10, 20 -> 0, 1; padding id 6.  User 0: 0 1 2 | 3, user 1: 5 4 | 0.
    info = tiny.info
    assert info.table_sizes == (2, 7, 7, 6) and info.sequence_length == 2 and info.eval_candidates == 3
    assert (info.n_train, info.n_eval) == (6, 6)
    train = all_of(tiny, "train")
    positives = train.sparse[train.labels == 1]
    assert sorted(map(tuple, positives)) == [(0, 0, 1, 2), (0, 6, 0, 1), (1, 6, 5, 4)]
    negatives = train.sparse[train.labels == 0]
    assert sorted(map(tuple, negatives[:, :3])) == [(0, 0, 1), (0, 6, 0), (1, 6, 5)]
    allowed = {0: {3, 4, 5}, 1: {0, 1, 2, 3}}   # not rated before the held-out item (which may come up)
    assert all(row[3] in allowed[row[0]] for row in negatives)
    np.testing.assert_allclose(np.sort(train.dense[:, 0]), np.log1p([1, 1, 1, 1, 2, 2]), rtol=1e-6)

    queries = all_of(tiny, "eval")
    np.testing.assert_array_equal(queries.labels, [1, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(queries.sparse[:, :3], [[0, 1, 2]] * 3 + [[1, 5, 4]] * 3)
    assert queries.sparse[0, 3] == 3 and sorted(queries.sparse[1:3, 3]) == [4, 5]
    assert queries.sparse[3, 3] == 0 and set(queries.sparse[4:, 3]) < {1, 2, 3}
    assert queries.sparse[4, 3] != queries.sparse[5, 3]
    np.testing.assert_allclose(queries.dense[:, 0], np.log1p([3, 3, 3, 2, 2, 2]), rtol=1e-6)


def test_bad_arguments(tiny, tmp_path):
    path = os.fspath(tmp_path)
    for bad in ({"history": 0}, {"negatives": 0}, {"eval_negatives": 0}, {"eval_negatives": 3}):
        with pytest.raises(ValueError):
            open_dataset("movielens-100k-seq", path=path, **bad)   # user 0 has left only 2 unrated items
    with pytest.raises(FileNotFoundError):
        open_dataset("movielens-100k-seq", path=os.fspath(tmp_path / "nowhere"))


def raw_sequences():
    """user -> items in time order (file order on ties), read with the csv module."""
    from embps.datasets.movielens import bundled_ml100k_dir
    with open(bundled_ml100k_dir() / "ml-100k.inter", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))[1:]
    users = sorted({int(r[0]) for r in rows})
    items = sorted({int(r[1]) for r in rows})
    user_row, item_row = {u: i for i, u in enumerate(users)}, {x: i for i, x in enumerate(items)}
    by_user = defaultdict(list)
    for order, r in enumerate(rows):
        by_user[user_row[int(r[0])]].append((float(r[3]), order, item_row[int(r[1])]))
    return {u: [item for _, _, item in sorted(seq)] for u, seq in by_user.items()}


@needs_recbole
def test_bundled_against_a_plain_reading():
    ds = open_dataset("movielens-100k-seq")
    sequences = raw_sequences()
    info = ds.info
    assert info.table_sizes == (943, *[1683] * 5, 1682) and info.n_dense == 1
    assert info.n_train == (100_000 - 2 * 943) * 4 and info.n_eval == 943 * 101

    queries = all_of(ds, "eval")
    sparse = queries.sparse.reshape(943, 101, 7)
    np.testing.assert_array_equal(queries.labels.reshape(943, 101), np.eye(1, 101).repeat(943, axis=0))
    for user, seq in sequences.items():
        query = sparse[user]
        assert (query[:, 0] == user).all() and (query[:, 1:6] == seq[-6:-1]).all() and query[0, 6] == seq[-1]
        assert len(set(query[:, 6])) == 101 and not set(query[1:, 6]) & set(seq)

    train = next(ds.batches(info.n_train))
    positives = train.sparse[train.labels == 1]
    expected = sorted((u, *([1682] * 5 + seq[:t])[-5:], seq[t]) for u, seq in sequences.items()
                      for t in range(1, len(seq) - 1))
    assert sorted(map(tuple, positives)) == expected
    negatives = train.sparse[train.labels == 0]
    assert len(negatives) == 3 * len(positives)
    seen = {u: set(seq[:-1]) for u, seq in sequences.items()}
    assert not any(item in seen[user] for user, item in negatives[:, [0, 6]])
    assert train.labels.mean() == 0.25


@needs_recbole
def test_seeded_resumable_epochs():
    ds, again = open_dataset("movielens-100k-seq", seed=5), open_dataset("movielens-100k-seq", seed=5)
    per_epoch = ds.batches_per_epoch(4096)
    run = list(itertools.islice(ds.batches(4096), per_epoch + 1))
    for index in (per_epoch, 3):
        b = next(again.batches(4096, start_batch=index))
        assert np.array_equal(b.sparse, run[index].sparse) and np.array_equal(b.labels, run[index].labels)
    assert not np.array_equal(run[0].sparse, run[per_epoch].sparse)               # fresh order and negatives
    other = open_dataset("movielens-100k-seq", seed=6)
    assert not np.array_equal(next(other.batches(4096)).sparse, run[0].sparse)
    assert np.array_equal(all_of(other, "eval").sparse[::101], all_of(ds, "eval").sparse[::101])   # same queries
    assert math.isclose(float(run[0].labels.mean()), 0.25, abs_tol=0.03)
