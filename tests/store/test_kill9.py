"""A real process crash: kill -9 a writer mid-stream; every acknowledged update must survive."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers.crash_writer import DIM, N_KEYS, batch
from helpers.reference_optimizers import sum_repeated
from embps.api import OptimizerSpec, TableSpec
from embps.store import Store, apply_optimizer, initial_rows

SPEC = TableSpec(DIM, N_KEYS, OptimizerSpec("adagrad", lr=0.05))


def replay(n_batches: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(rows, state) of every key after 0..n_batches acknowledged batches."""
    keys = np.arange(N_KEYS, dtype=np.uint64)
    rows, state = initial_rows(SPEC, keys), np.zeros((N_KEYS, DIM), np.float32)
    out = [(rows.copy(), state.copy())]
    for b in range(n_batches):
        keys, grads = batch(b)
        uniq, summed = sum_repeated(keys.astype(np.int64), grads)
        r, s = rows[uniq], state[uniq]
        apply_optimizer(SPEC, r, s, summed)
        rows[uniq], state[uniq] = r, s
        out.append((rows.copy(), state.copy()))
    return out


@pytest.mark.parametrize("kill_after", [3, 40, 150])
def test_kill9_mid_update_stream_keeps_every_acknowledged_update(tmp_path, kill_after):
    with Store(tmp_path / "s") as store:
        store.create_table("emb", SPEC)
    writer = Path(__file__).parents[1] / "helpers" / "crash_writer.py"
    child = subprocess.Popen([sys.executable, str(writer), str(tmp_path / "s")], stdout=subprocess.PIPE, text=True)
    acked = 0
    for line in child.stdout:
        acked = int(line) + 1
        if acked >= kill_after:
            child.kill()               # SIGKILL, most likely in the middle of the next update
            break
    acked = max([acked] + [int(line) + 1 for line in child.stdout])
    child.wait(timeout=30)
    assert child.returncode == -9
    images = replay(acked + 1)
    with Store(tmp_path / "s") as store:
        t = store.table("emb")
        t.check()
        rows, state, _ = t.lookup_with_state(np.arange(N_KEYS))
    done, inflight = images[acked], images[acked + 1]
    same_as_done = (rows == done[0]).all(1) & (state == done[1]).all(1)
    same_as_inflight = (rows == inflight[0]).all(1) & (state == inflight[1]).all(1)
    assert (same_as_done | same_as_inflight).all(), "rows lost acknowledged updates or were torn"
