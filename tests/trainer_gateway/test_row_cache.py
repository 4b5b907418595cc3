"""The gateway's row cache leaves nothing behind: close() removes its directory, and a cache whose
process was killed is removed by the next cache made in the same place."""

import os
import signal
import subprocess
import sys

import numpy as np

from embps.api import OptimizerSpec, TableSpec
from embps.api.specs import state_floats
from embps.trainer_gateway.row_cache import RowCache

SPEC = TableSpec(dim=4, capacity=1024, optimizer=OptimizerSpec("sgd", lr=0.5))

KILLED = """
import os, signal, sys
from pathlib import Path
from embps.api import OptimizerSpec, TableSpec
from embps.api.specs import state_floats
from embps.trainer_gateway.row_cache import RowCache
RowCache(Path(sys.argv[1]), "gateway-0", TableSpec(dim=4, capacity=1024, optimizer=OptimizerSpec("sgd", lr=0.5)), 64)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_gateways_cache_is_removed_by_the_next_and_a_closed_one_by_itself(tmp_path):
    killed = subprocess.run([sys.executable, "-c", KILLED, str(tmp_path)], env=dict(os.environ), timeout=60)
    assert killed.returncode == -signal.SIGKILL
    (orphan,) = tmp_path.iterdir()
    assert orphan.name.startswith("embps-cache-") and any(orphan.iterdir())

    cache = RowCache(tmp_path, "gateway-1", SPEC, 64)
    (left,) = tmp_path.iterdir()   # the orphan went; this process's own directory stays while it lives
    assert left.name.startswith(f"embps-cache-{os.getpid()}-gateway-1-")
    cache.insert(np.array([7], np.uint64), np.ones((1, 4), np.float32), np.zeros((1, state_floats("sgd", 4)), np.float32))
    assert np.array_equal(cache.rows(np.array([7], np.uint64)), np.ones((1, 4), np.float32))

    RowCache(tmp_path, "mirrors-1", SPEC, 64).close()   # a live process's cache is not an orphan
    assert list(tmp_path.iterdir()) == [left]
    cache.close()
    assert not any(tmp_path.iterdir())
