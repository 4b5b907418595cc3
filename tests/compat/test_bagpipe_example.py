"""Bagpipe's README example runs on embps with one changed import: two copies of its trainer_simple.py
(tests/compat/trainer_simple.py) train as the external trainers of a job that `embps train` starts on
Criteo-format data, with Bagpipe's table file; the loss falls, and the rows on the shards are those of
the same job trained by two trainers on embps's own SDK (sdk_trainer.py), within 1e-5."""

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embps.datasets import CRITEO_KAGGLE_TABLE_SIZES, open_dataset
from embps.store import Store

HERE = Path(__file__).resolve().parent
STEPS, GLOBAL_BATCH, TOLERANCE = 100, 64, 1e-5   # trainer_simple.py takes 100 steps


def write_criteo_tsv(path: Path, n: int, seed: int = 0) -> None:
    """Kaggle's layout: label, 13 integers, 26 hexadecimal categories, tab-separated.  Clicks follow I1
    and C1, so there is something to learn."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n):
        ints = rng.integers(0, 50, 13)
        cats = rng.integers(0, 1 << 20, 26)
        cats[0] = rng.integers(0, 8)
        label = int(rng.random() < 0.1 + 0.6 * (ints[0] > 35) + 0.2 * (cats[0] < 2))
        fields = [str(label), *map(str, ints), *(f"{c:08x}" for c in cats)]
        lines.append("\t".join(fields))
    path.write_text("\n".join(lines) + "\n")


def start_job(data_dir: Path, tsv: Path, emb_info: Path, trainers: str) -> subprocess.Popen:
    """`embps train` with the external trainers: the settings trainer_simple.py's init_cache asks for."""
    argv = [sys.executable, "-m", "embps.cli", "train", "--data-dir", str(data_dir), "--dataset", f"criteo:{tsv}",
            "--emb-info-file", str(emb_info), "--trainers", "2", "--batch", str(GLOBAL_BATCH), "--steps", str(STEPS),
            "--dim", "48", "--lookahead", "200", "--emb-optimizer", "sgd", "--emb-lr", "0.01",
            "--cache-size", "5000000", "--external-trainers", trainers]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finished(job: subprocess.Popen) -> str:
    output, _ = job.communicate(timeout=300)
    assert job.returncode == 0, output
    return output


def rows_on_shards(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every row the shards' PM files hold after the job, by key."""
    keys, rows = [], []
    for store_dir in sorted((data_dir / "shards").glob("shard-*/store")):
        with Store(store_dir) as store:
            for k, r, _ in store.table("emb").export():
                keys.append(k)
                rows.append(r)
    k, r = np.concatenate(keys), np.concatenate(rows)
    order = np.argsort(k)
    return k[order], r[order]


def test_trainer_simple_trains_as_embps_own_trainers(tmp_path):
    with socket.socket() as probe:   # trainer_simple.py's gloo rendezvous is tcp://127.0.0.1:9988
        if probe.connect_ex(("127.0.0.1", 9988)) == 0:
            pytest.fail("port 9988, where trainer_simple.py's trainers meet, is taken by another process")
    tsv, emb_info = tmp_path / "kaggle_head.txt", tmp_path / "emb_table_info.txt"
    write_criteo_tsv(tsv, STEPS * GLOBAL_BATCH * 10 // 9 + 10)   # 10% is the eval split
    sizes = [min(size, 500) for size in CRITEO_KAGGLE_TABLE_SIZES]   # each within trainer_simple.py's ln_emb
    emb_info.write_text("".join(f"{size}\n" for size in sizes))
    open_dataset(f"criteo:{tsv}", table_sizes=sizes, progress=False)   # preprocessed once, for both jobs
    # One thread per trainer, as embps's trainers take: idle OpenMP threads spin, and on a small shared
    # machine they take the cores from the gateways and shards.
    python = f"env OMP_NUM_THREADS=1 {shlex.quote(sys.executable)}"

    losses_dir = tmp_path / "bagpipe-losses"
    losses_dir.mkdir()
    path = ":".join(filter(None, [str(HERE / "loss_observer"), os.environ.get("PYTHONPATH")]))
    observed = f"env PYTHONPATH={shlex.quote(path)} "
    ours_out = tmp_path / "ours-losses"
    ours_out.mkdir()
    jobs = [start_job(tmp_path / "bagpipe", tsv, emb_info, f"env BAGPIPE_LOSS_LOG={shlex.quote(str(losses_dir))} "
                      f"{observed}{python} {shlex.quote(str(HERE / 'trainer_simple.py'))}"),
            start_job(tmp_path / "ours", tsv, emb_info,
                      f"{python} {shlex.quote(str(HERE / 'sdk_trainer.py'))} {shlex.quote(str(ours_out))}")]
    try:
        outputs = [finished(job) for job in jobs]
    finally:
        for job in jobs:   # after a failure: an interrupted `embps train` stops its processes
            job.send_signal(signal.SIGINT)
            job.wait(60)
    assert "external trainers" in outputs[0]

    per_trainer = [[float(x) for x in log.read_text().split()] for log in sorted(losses_dir.glob("*.txt"))]
    assert [len(losses) for losses in per_trainer] == [STEPS, STEPS]
    bagpipe_loss = np.mean(per_trainer, axis=0)        # the global batch's: the two halves are equal
    ours_loss = np.mean([json.loads(f.read_text()) for f in sorted(ours_out.glob("losses-*.json"))], axis=0)
    first, last = bagpipe_loss[:10].mean(), bagpipe_loss[-10:].mean()
    print(f"trainer_simple.py's loss: first 10 steps {first:.4f}, last 10 {last:.4f}; every 10th step",
          np.round(bagpipe_loss[::10], 4).tolist())
    assert last < first - 0.02
    np.testing.assert_allclose(bagpipe_loss, ours_loss, atol=TOLERANCE, rtol=0)

    keys, rows = rows_on_shards(tmp_path / "bagpipe")
    our_keys, our_rows = rows_on_shards(tmp_path / "ours")
    print(f"rows compared: {len(keys)}, largest difference {np.abs(rows - our_rows).max():.2e}")
    assert len(keys) > 1000
    np.testing.assert_array_equal(keys, our_keys)
    np.testing.assert_allclose(rows, our_rows, atol=TOLERANCE, rtol=0)
