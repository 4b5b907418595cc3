"""The training-data readers: deterministic and resumable batches, the synthetic skew and a learnable
label, Criteo TSV preprocessing checked by hand and against a plain-Python parser, MovieLens-100k."""

import argparse
import hashlib
import importlib.util
import itertools
import json
import math
import os
import sys

import numpy as np
import pytest

from embps.datasets import CRITEO_KAGGLE_TABLE_SIZES, Batch, criteo_cli, open_dataset
from embps.datasets.criteo import (CriteoFormatError, default_table_sizes, parse_lines,
                                                 preprocess_criteo)
from embps.datasets.synthetic import BLOCK

needs_recbole = pytest.mark.skipif(importlib.util.find_spec("recbole") is None,
                                   reason="MovieLens-100k comes from the recbole wheel: pip install --no-deps recbole")
SMALL_SYNTHETIC = {"n_train": 100_000, "n_eval": 20_000, "seed": 7}


def same(a: Batch, b: Batch) -> bool:
    return all(np.array_equal(x, y) for x, y in ((a.dense, b.dense), (a.sparse, b.sparse), (a.labels, b.labels)))


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    ranks = np.empty(len(scores))
    ranks[np.argsort(scores, kind="stable")] = np.arange(1, len(scores) + 1)
    positives = labels.sum()
    return (ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * (len(labels) - positives))


def check_batch(batch: Batch, info, batch_size: int) -> None:
    assert batch.dense.dtype == np.float32 and batch.dense.shape == (batch_size, info.n_dense)
    assert batch.sparse.dtype == np.int64 and batch.sparse.shape == (batch_size, len(info.table_sizes))
    assert batch.labels.dtype == np.float32 and batch.labels.shape == (batch_size,)
    assert np.isfinite(batch.dense).all()
    assert ((batch.sparse >= 0) & (batch.sparse < np.array(info.table_sizes))).all()
    assert set(np.unique(batch.labels)) <= {0.0, 1.0}


# ----- synthetic -----------------------------------------------------------------------------------

def test_synthetic_tables_are_the_scaled_criteo_sizes():
    ds = open_dataset("synthetic", scale=0.01)
    assert ds.info.table_sizes == tuple(max(2, math.ceil(s * 0.01)) for s in CRITEO_KAGGLE_TABLE_SIZES)
    assert ds.info.table_sizes[2] == 101_313 and ds.info.n_dense == 13
    assert open_dataset("synthetic", scale=1).info.table_sizes == CRITEO_KAGGLE_TABLE_SIZES


@pytest.mark.parametrize("batch_size", [1000, BLOCK, 3 * BLOCK // 2 + 7])
def test_synthetic_is_deterministic_and_skips(batch_size):
    first, second = open_dataset("synthetic", **SMALL_SYNTHETIC), open_dataset("synthetic", **SMALL_SYNTHETIC)
    run = list(itertools.islice(first.batches(batch_size), 5))
    assert all(same(a, b) for a, b in zip(run, itertools.islice(second.batches(batch_size), 5)))
    for start in (1, 3, 4):
        assert same(next(second.batches(batch_size, start_batch=start)), run[start])
    for batch in run:
        check_batch(batch, first.info, batch_size)
    # Samples do not depend on the batch size: batch k is samples [k*B, (k+1)*B) of a fixed stream.
    stream = first.samples("train", 0, 5 * batch_size)
    assert same(Batch(*(np.concatenate(a) for a in zip(*((b.dense, b.sparse, b.labels) for b in run)))), stream)
    assert not same(run[0], open_dataset("synthetic", **{**SMALL_SYNTHETIC, "seed": 8}).batches(batch_size).__next__())


def test_synthetic_train_and_eval_differ_and_epochs():
    ds = open_dataset("synthetic", **SMALL_SYNTHETIC)
    train, evaluation = next(ds.batches(4096)), next(ds.batches(4096, "eval"))
    assert not np.array_equal(train.sparse, evaluation.sparse)
    assert len(list(ds.batches(4096, "eval"))) == 20_000 // 4096          # eval: one epoch, ragged tail dropped
    per_epoch = ds.batches_per_epoch(4096)
    assert len(list(ds.batches(4096, epochs=2))) == 2 * per_epoch
    assert same(next(ds.batches(4096, start_batch=per_epoch)), train)    # train repeats epochs forever


def test_synthetic_skew_top_1_percent_takes_92_percent():
    ds = open_dataset("synthetic", scale=0.01, seed=3)
    sparse = ds.samples("train", 0, 200_000).sparse
    for table, rows in enumerate(ds.info.table_sizes):
        if rows < 10_000:
            continue
        counts = np.bincount(sparse[:, table], minlength=rows)
        top = np.argsort(counts)[::-1][:rows // 100]
        assert 0.89 < counts[top].sum() / counts.sum() < 0.95
        assert len(np.intersect1d(top, ds.hot_ids[table])) > 0.95 * len(top)   # the seeded hot set


def test_synthetic_without_segments_is_todays_data_bit_for_bit():
    batch = open_dataset("synthetic", scale=0.01, seed=3, segments=0).samples("train", 5000, 25000)
    digest = hashlib.sha256()
    for array in (batch.dense, batch.sparse, batch.labels):
        digest.update(array.tobytes())
    # The digest of these samples before the structured option existed.
    assert digest.hexdigest() == "7cdde66c2fd6f861aaceb161905b2776b5a1849454b608ab5809a77f8dafe4fe"


def test_synthetic_segments_keep_the_skew_and_are_deterministic_per_sample():
    options = {"scale": 0.01, "seed": 3, "segments": 32}
    ds = open_dataset("synthetic", **options)
    assert "segments=32" in ds.info.name
    whole = ds.samples("train", 0, 3 * BLOCK)
    parts = [open_dataset("synthetic", **options).samples("train", a, b)
             for a, b in ((0, BLOCK - 5), (BLOCK - 5, 2 * BLOCK + 3), (2 * BLOCK + 3, 3 * BLOCK))]
    assert same(whole, Batch(*(np.concatenate(arrays) for arrays in zip(*((p.dense, p.sparse, p.labels)
                                                                        for p in parts)))))
    check_batch(whole, ds.info, 3 * BLOCK)
    sparse = ds.samples("train", 0, 200_000).sparse
    plain = open_dataset("synthetic", scale=0.01, seed=3).samples("train", 0, 200_000).sparse
    for table, rows in enumerate(ds.info.table_sizes):
        if rows < 10_000:
            continue
        counts = np.bincount(sparse[:, table], minlength=rows)
        top = np.argsort(counts)[::-1][:rows // 100]
        assert 0.89 < counts[top].sum() / counts.sum() < 0.95
        assert len(np.intersect1d(top, ds.hot_ids[table])) > 0.95 * len(top)
        # Structure: a hot row's users share their other hot rows far more than in today's data.
        assert _co_use(sparse, table, ds.hot_ids) > 3 * _co_use(plain, table, ds.hot_ids)


def _co_use(sparse: np.ndarray, table: int, hot_ids) -> float:
    """Among the samples using table's most used row, the largest share using one row of another
    large table (its hot set holding over 500 rows), averaged over those tables."""
    users = sparse[sparse[:, table] == np.bincount(sparse[:, table]).argmax()]
    shares = [np.bincount(users[:, t]).max() / len(users) for t in range(sparse.shape[1])
              if t != table and len(hot_ids[t]) > 500]
    return float(np.mean(shares))


def test_synthetic_segments_refuse_bad_settings():
    with pytest.raises(ValueError, match="segments"):
        open_dataset("synthetic", segments=-1)
    with pytest.raises(ValueError, match="segment_affinity"):
        open_dataset("synthetic", segments=4, segment_affinity=1.5)


def test_synthetic_labels_are_learnable():
    """Per-id click rates counted on train rank held-out samples far better than chance."""
    ds = open_dataset("synthetic", n_train=200_000, n_eval=20_000, seed=1)
    train, held_out = ds.samples("train", 0, 200_000), ds.samples("eval", 0, 20_000)
    prior = train.labels.mean()
    assert 0.2 < prior < 0.4
    score = np.zeros(len(held_out.labels))
    for table, rows in enumerate(ds.info.table_sizes):
        seen = np.bincount(train.sparse[:, table], minlength=rows)
        clicks = np.bincount(train.sparse[:, table], train.labels, minlength=rows)
        rate = (clicks + 10 * prior) / (seen + 10)
        score += np.log(rate / (1 - rate))[held_out.sparse[:, table]]
    assert auc(held_out.labels, score) > 0.7


def test_bad_arguments():
    ds = open_dataset("synthetic", n_train=100, n_eval=100)
    with pytest.raises(ValueError, match="split"):
        ds.batches(10, "test")
    with pytest.raises(ValueError, match="exceeds"):
        ds.batches(101)
    with pytest.raises(ValueError, match="start_batch"):
        ds.batches(10, start_batch=-1)
    with pytest.raises(ValueError, match="unknown dataset spec"):
        open_dataset("imagenet")


# ----- Criteo --------------------------------------------------------------------------------------

def criteo_line(label, ints, hexes) -> str:
    return "\t".join([str(label), *ints, *hexes]) + "\n"


# Hand-checked lines: (TSV line, dense, sparse ids) with the default table sizes capped at 1,000,000.
HAND_LINES = [
    (criteo_line(1, ["0", "", "-3", "1", "", "", "", "", "", "", "", "", "12"], ["ff"] + [""] * 25),
     [0, 0, 0, math.log(2)] + [0] * 8 + [math.log(13)],
     [255] + [0] * 25),
    (criteo_line(0, [""] * 12 + ["-1"], ["5b4", "A", "80000000"] + ["1"] * 23),
     [0] * 13,
     [0, 10, 2**31 % 1_000_000] + [1] * 23),                     # 0x5b4 = 1460 = the first table's size
    (criteo_line(1, ["123456789012"] + ["7"] * 12, ["fffffffffffffff"] + [""] * 25),   # > 8 digits
     [math.log(123456789013)] + [math.log(8)] * 12,
     [(16**15 - 1) % 1460] + [0] * 25),
]


def reference_parse(line: str, sizes) -> tuple[list[float], list[int], int]:
    fields = line.rstrip("\n").split("\t")
    dense = [math.log1p(max(int(x), 0)) if x else 0.0 for x in fields[1:14]]
    return dense, [int(x, 16) % size if x else 0 for x, size in zip(fields[14:], sizes)], int(fields[0])


def random_lines(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n):
        ints = [("" if rng.random() < 0.2 else str(int(rng.geometric(0.01)) - 3)) for _ in range(13)]
        hexes = [("" if rng.random() < 0.1 else format(int(rng.integers(0, 2**32)), "08x")) for _ in range(26)]
        lines.append(criteo_line(int(rng.random() < 0.25), ints, hexes))
    return lines


@pytest.fixture
def criteo_tsv(tmp_path):
    lines = [line for line, _, _ in HAND_LINES] + random_lines(3000)
    path = tmp_path / "day_0.tsv"
    path.write_text("".join(lines)[:-1])                              # the last line without its newline
    return path, lines


def test_parse_hand_computed_lines():
    dense, sparse, labels = parse_lines("".join(line for line, _, _ in HAND_LINES).encode(), default_table_sizes())
    assert labels.tolist() == [1, 0, 1]
    for k, (_, expected_dense, expected_sparse) in enumerate(HAND_LINES):
        np.testing.assert_allclose(dense[k], expected_dense, rtol=1e-6)
        assert sparse[k].tolist() == expected_sparse


def test_criteo_round_trip(criteo_tsv, tmp_path):
    path, lines = criteo_tsv
    out = tmp_path / "bin"
    stats = preprocess_criteo(path, out, chunk_bytes=50_000, workers=2, progress=False)  # many chunks
    assert stats.n_samples == len(lines) == 3003
    meta = json.loads((out / "meta.json").read_text())
    assert meta["table_sizes"] == [min(s, 1_000_000) for s in CRITEO_KAGGLE_TABLE_SIZES]
    assert (out / "sparse.i32").stat().st_size == 3003 * 26 * 4

    ds = open_dataset(f"criteo:{out}")
    assert (ds.info.n_train, ds.info.n_eval) == (3003 - 300, 300)     # eval: the last 10%, rounded down
    rows = ds.rows(0, 3003)
    check_batch(rows, ds.info, 3003)
    for k in range(3):
        np.testing.assert_allclose(rows.dense[k], HAND_LINES[k][1], rtol=1e-6)
        assert rows.sparse[k].tolist() == HAND_LINES[k][2]
    for k, line in enumerate(lines):
        dense, sparse, label = reference_parse(line, ds.info.table_sizes)
        np.testing.assert_allclose(rows.dense[k], dense, rtol=1e-6)
        assert rows.sparse[k].tolist() == sparse and rows.labels[k] == label

    train = list(ds.batches(500, epochs=1))
    assert len(train) == 2703 // 500 and same(train[3], ds.rows(1500, 2000))
    assert same(next(ds.batches(500, start_batch=len(train) + 3)), train[3])   # epochs replay in file order
    assert same(next(ds.batches(100, "eval", start_batch=2)), ds.rows(2903, 3003))


def test_criteo_tsv_spec_preprocesses_once_into_a_cache(criteo_tsv, tmp_path):
    path, _ = criteo_tsv
    cache = tmp_path / "cache"
    ds = open_dataset(f"criteo:{path}", cache_dir=cache, max_table_size=1000, progress=False)
    assert max(ds.info.table_sizes) == 1000
    written = (cache / "meta.json").stat().st_mtime_ns
    again = open_dataset(f"criteo:{path}", cache_dir=cache, max_table_size=1000)
    assert (cache / "meta.json").stat().st_mtime_ns == written
    assert same(next(again.batches(256)), next(ds.batches(256)))


def run_cli(*args) -> int:
    parser = argparse.ArgumentParser()
    criteo_cli.add_arguments(parser)
    return criteo_cli.run(parser.parse_args([*map(str, args), "--no-progress"]))


def test_criteo_cli(criteo_tsv, tmp_path, capsys):
    path, _ = criteo_tsv
    assert run_cli(path, tmp_path / "out") == 0
    assert "3,003 samples" in capsys.readouterr().out
    assert open_dataset(f"criteo:{tmp_path / 'out'}").info.n_train == 2703


@pytest.mark.parametrize("line_number, bad, problem", [
    (1500, criteo_line(1, ["1"] * 12, [""] * 26), "expected 40 tab-separated fields, got 39"),
    (2999, criteo_line(1, ["1"] * 13, ["12x4"] + [""] * 25), "field 15 (C1) '12x4' is not a hexadecimal"),
    (7, criteo_line(1, ["1"] * 6 + ["3.5"] + ["1"] * 6, [""] * 26), "field 8 (I7) '3.5' is not an integer"),
    (2, criteo_line(2, ["1"] * 13, [""] * 26), "field 1 (label) '2' is not a 0/1 label"),
])
def test_malformed_line_names_its_number(tmp_path, capsys, line_number, bad, problem):
    lines = random_lines(3000, seed=2)
    lines[line_number - 1] = bad
    path = tmp_path / "bad.tsv"
    path.write_text("".join(lines))
    with pytest.raises(CriteoFormatError, match=f"line {line_number}: ") as error:
        preprocess_criteo(path, tmp_path / "out", chunk_bytes=20_000, progress=False)
    assert error.value.line == line_number and problem in str(error.value)
    assert not (tmp_path / "out" / "meta.json").exists()
    assert run_cli(path, tmp_path / "out") == 1
    assert f"line {line_number}: " in capsys.readouterr().err


# ----- MovieLens-100k ------------------------------------------------------------------------------

@needs_recbole
def test_movielens_counts_and_labels():
    ds = open_dataset("movielens-100k")
    assert ds.info.n_train + ds.info.n_eval == 100_000 and ds.info.n_eval == 20_000
    assert ds.info.table_sizes[:2] == (943, 1682)
    batches = list(ds.batches(1000, epochs=1)) + list(ds.batches(1000, "eval"))
    assert len(batches) == 100
    for batch in batches:
        check_batch(batch, ds.info, 1000)
    sparse = np.concatenate([b.sparse for b in batches])
    assert len(np.unique(sparse[:, 0])) == 943 and len(np.unique(sparse[:, 1])) == 1682
    assert 0.5 < np.concatenate([b.labels for b in batches]).mean() < 0.6      # 55,375 ratings >= 4
    assert "recbole" not in sys.modules                          # located, never imported


@needs_recbole
def test_movielens_deterministic_shuffled_epochs():
    ds, again = open_dataset("movielens-100k", seed=5), open_dataset("movielens-100k", seed=5)
    per_epoch = ds.batches_per_epoch(512)
    run = list(itertools.islice(ds.batches(512), per_epoch + 2))             # train: runs on past an epoch
    assert same(next(again.batches(512, start_batch=per_epoch + 1)), run[per_epoch + 1])
    assert same(next(again.batches(512, start_batch=3)), run[3])
    assert not same(run[0], run[per_epoch])                                  # each epoch reshuffled
    assert not same(run[0], next(open_dataset("movielens-100k", seed=6).batches(512)))


def test_movielens_directory_without_the_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_dataset("movielens-100k", path=os.fspath(tmp_path))
