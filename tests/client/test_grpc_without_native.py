"""A client that talks gRPC needs neither the native core nor torch: PSClient imports and
round-trips with both unimportable, against a real shard that offers the native TCP path too."""

import json
import subprocess
import sys

import numpy as np

from embps.common.local_cluster import LocalShard

CLIENT = r"""
import json, sys
sys.modules["embps.store._native"] = None   # importing it now raises ImportError, as with no compiled core
sys.modules["torch"] = None
import numpy as np
from embps.api import OptimizerSpec, TableSpec
from embps.client import ClusterConfig, PSClient

with PSClient(ClusterConfig.from_addresses([sys.argv[1]])) as ps:
    ps.create_table("plain", TableSpec(dim=4, capacity=100, optimizer=OptimizerSpec("sgd", lr=0.5)))
    keys = np.array([3, 1, 4, 1])
    before = ps.lookup("plain", keys)
    ps.update("plain", keys, np.ones((4, 4), np.float32))
    after = ps.lookup("plain", keys)
    kinds = ps.data_path_kinds()
    ps.drop_table("plain")
print(json.dumps({"kinds": kinds, "before": before.tolist(), "after": after.tolist(),
                  "store_modules": sorted(m for m, mod in sys.modules.items() if m.startswith("embps.store") and mod)}))
"""


def test_psclient_round_trips_over_grpc_without_the_native_core(tmp_path):
    with LocalShard(tmp_path) as shard:
        assert "tcp" in shard.addresses   # the client must fall back, not merely never be offered TCP
        run = subprocess.run([sys.executable, "-c", CLIENT, shard.address], capture_output=True, text=True,
                             timeout=120)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["kinds"] == ["grpc"] and result["store_modules"] == []
    before, after = np.array(result["before"]), np.array(result["after"])
    assert before.shape == (4, 4) and before.any()
    np.testing.assert_allclose(after, before - 0.5 * np.array([[1], [2], [1], [2]]), atol=1e-6)   # key 1 twice
    assert "the native core is not importable here; using gRPC" in run.stderr
