"""The shard side: its fallback without a device (no path, the reason in its metrics), and the
planned work requests turned into pyverbs objects.  Serving over a queue pair is in test_client."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from embps.rdma.config import RdmaPathConfig
from embps.rdma.discovery import probe_rdma
from embps.rdma.planner import build_write_requests
from embps.rdma.server import collect_metrics, start_rdma_path, to_send_wrs
from helpers.rdma import POOL_LKEY, REMOTE_BASE, RKEY, SCRATCH_LKEY, request_keys, sgd_table


def test_without_a_device_the_shard_offers_no_rdma_path_and_says_why(store):
    """The shard-side entry point: no path, the reason kept for Stats and metrics, nothing raised."""
    probe = probe_rdma()
    if probe.devices:
        pytest.skip(f"this machine has RDMA devices {list(probe.devices)}: the no-device fallback cannot be observed")
    path, choice = start_rdma_path(store, "shard-0", RdmaPathConfig(memcached="127.0.0.1:11211"))
    assert path is None and choice.reason == probe.reason
    families = {f.name: f for f in collect_metrics(path, choice)}
    assert list(families) == ["embps_shard_rdma_offered"]
    sample = families["embps_shard_rdma_offered"].samples[0]
    assert sample.value == 0 and sample.labels == {"device": "", "reason": probe.reason}


def test_specs_become_pyverbs_work_requests(store):
    """The pyverbs objects can be built without a device (posting them needs one)."""
    pytest.importorskip("pyverbs", reason="python3-pyverbs is not importable in this venv")
    import pyverbs.enums as e
    table = sgd_table(store)
    keys = request_keys(np.random.default_rng(5))
    with table.gather(keys) as gathered:
        specs = build_write_requests(gathered.entries, POOL_LKEY, REMOTE_BASE, RKEY, 30, 0x5000_0000, 128,
                                     batch_id=0x1234, scratch_lkey=SCRATCH_LKEY)
    head, wrs = to_send_wrs(specs, wr_id=99)
    assert head is wrs[0] and len(wrs) == len(specs)
    assert [w.num_sge for w in wrs] == [len(s.sges) for s in specs]
    assert all(w.opcode == e.IBV_WR_RDMA_WRITE and w.send_flags == 0 for w in wrs[:-1])
    assert wrs[-1].opcode == e.IBV_WR_RDMA_WRITE_WITH_IMM and wrs[-1].send_flags == e.IBV_SEND_SIGNALED
    assert wrs[-1].imm_data == socket.htonl(0x1234) and all(w.wr_id == 99 for w in wrs)
    with pytest.raises(ValueError, match="without SGEs"):
        to_send_wrs(build_write_requests(np.zeros(0, gathered.entries.dtype), 1, 0, 0, 30, 0, 128), 1)
