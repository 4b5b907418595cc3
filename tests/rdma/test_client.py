"""The client against the real shard side over a queue pair: over a device when there is one, and
always over a software NIC with verbs semantics (everything above the verbs calls runs for real,
through a real memcached)."""

from __future__ import annotations

import ctypes
import threading
import time

import numpy as np
import pytest

from embps.rdma.client import RdmaConnectionError, RdmaShardConnection, RdmaShardError, RdmaTimeout
from embps.rdma.config import RdmaClientConfig, RdmaPathConfig
from embps.rdma.discovery import DataPathChoice, probe_rdma
from embps.rdma.exchange import RdmaExchange
from embps.rdma.server import RdmaShardPath, collect_metrics
from embps.rdma.verbs import VerbsDevice
from embps.api import OptimizerSpec, TableSpec
from helpers.rdma import request_keys, sgd_table


# ---- end to end over a device -----------------------------------------------------------------------

def test_end_to_end_over_a_device(memcached, store):
    """Shard and client in one process over a real device (loopback through the NIC)."""
    probe = probe_rdma()
    if not probe.devices:
        pytest.skip(f"needs an RDMA device (none here: {probe.reason}); the verbs path "
                    "(QP setup, posting, completions) did not run")
    table = sgd_table(store)
    path = RdmaShardPath(store, "shard-0", RdmaPathConfig(memcached=memcached, cluster="e2e"), probe.devices[0])
    try:
        with RdmaShardConnection(path.data_path_address(), RdmaClientConfig(slot_bytes=64 << 10)) as conn:
            keys = np.concatenate([request_keys(np.random.default_rng(6))] * 4)   # several requests in flight
            rows, found = conn.lookup("t", keys, table.dim)
            want_rows, _, want_found = table.lookup_with_state(keys)
            np.testing.assert_array_equal(rows, want_rows)
            np.testing.assert_array_equal(found, want_found)
            with pytest.raises(RdmaShardError, match="NOT_FOUND"):
                conn.lookup("nope", keys[:3], 32)
            with path.table_drop_guard("t"):
                store.drop_table("t")
            assert path.stats().requests >= 5
    finally:
        path.stop()


# ---- the whole path over a simulated NIC ------------------------------------------------------------
# No device here, so the verbs objects are replaced by a small software NIC with verbs semantics:
# MRs with bounds-checked keys, RC QPs paired by QP number, RDMA WRITE executed by memmove in posting
# order, WRITE_WITH_IMM consuming a posted receive (and, like RC with rnr_retry 7, waiting with the
# WRs behind it until there is one), signaled completions, access errors as error completions that
# move the QP to ERROR, flush on error.  What a NIC would report as an access error or an RNR wait is
# also recorded (`violations`, `rnr_waits`): the tests check there were none.  Everything above
# the verbs calls runs for real: the memcached exchange, the shard's accept and poll threads, request
# encoding, gather, scratch, WR construction, completion handling and release, the client's pipelining.

class _SoftNic:
    def __init__(self):
        self.mrs: dict[int, _FakeMR] = {}
        self.qps: dict[int, _FakeQP] = {}
        self.next_key, self.next_qp = 0x100, 0x40
        self.lock = threading.Lock()      # the NIC's state: QPs' queues, registrations
        self.lose_replies = False
        self.violations: list[str] = []   # what the NIC refused: memory keys, bounds, access rights
        self.rnr_waits = 0                # WRITE_WITH_IMMs that found no receive posted

    def reset(self) -> None:
        self.lose_replies, self.violations, self.rnr_waits = False, [], 0

    def key(self) -> int:
        with self.lock:
            self.next_key += 1
            return self.next_key

    def qp_num(self) -> int:
        with self.lock:
            self.next_qp += 1
            return self.next_qp


_NIC = _SoftNic()


class _FakeMR:
    def __init__(self, pd, length, access, address=None, **kwargs):
        assert address, "every MR here registers existing memory"
        self.lkey = self.rkey = _NIC.key()
        self.buf, self.length, self.access = address, length, access
        _NIC.mrs[self.lkey] = self

    def close(self):
        _NIC.mrs.pop(self.lkey, None)


class _FakeCQ:
    def __init__(self, *args):
        from collections import deque
        self.queue = deque()

    def poll(self, num_entries=1):
        out = []
        while self.queue and len(out) < num_entries:
            out.append(self.queue.popleft())
        return len(out), out

    def close(self):
        pass


class _FakeSGE:
    def __init__(self, addr, length, lkey):
        self.addr, self.length, self.lkey = addr, length, lkey


class _FakeSendWR:
    def __init__(self, wr_id=0, opcode=0, num_sge=0, imm_data=0, sg=None, send_flags=0):
        assert num_sge == len(sg or []) and num_sge >= 1
        self.wr_id, self.opcode, self.imm_data, self.sg, self.send_flags = wr_id, opcode, imm_data, sg, send_flags
        self.next_wr = self.rkey = self.remote_addr = None

    def set_wr_rdma(self, rkey, addr):
        self.rkey, self.remote_addr = rkey, addr


class _FakeRecvWR:
    def __init__(self, wr_id=0, num_sge=0, sg=None):
        assert num_sge == 1
        self.wr_id = wr_id


def _wc(**fields):
    from types import SimpleNamespace
    return SimpleNamespace(**{"status": 0, "vendor_err": 0, "imm_data": 0, "byte_len": 0, **fields})


class _FakeQP:
    def __init__(self, cq, max_send_wr, max_recv_wr):
        from collections import deque
        self.cq, self.max_recv_wr = cq, max_recv_wr
        self.qp_num = _NIC.qp_num()
        self.recvs = deque()
        self.sends = deque()        # posted send WRs not executed yet: behind a receiver not ready
        self.waiting_on = None      # the WRITE_WITH_IMM at the head of `sends` counted in rnr_waits
        self.peer_num = None
        self.state = "init"
        with _NIC.lock:
            _NIC.qps[self.qp_num] = self

    def post_recv(self, wr, bad_wr):
        with _NIC.lock:
            assert self.state != "err" and len(self.recvs) < self.max_recv_wr, "receive queue overflow"
            self.recvs.append(wr.wr_id)
            for sender in list(_NIC.qps.values()):   # the peer's RNR retry now finds a receive
                if sender.peer_num == self.qp_num and sender.sends:
                    sender._execute()

    def to_rts(self, attr):
        self.peer_num, self.state = attr.dest_qp_num, "rts"

    def modify(self, attr, mask):
        import pyverbs.enums as e
        if attr.qp_state == e.IBV_QPS_ERR:
            with _NIC.lock:
                self._to_error()

    def _to_error(self):
        import pyverbs.enums as e
        self.state = "err"
        while self.sends:
            self.cq.queue.append(_wc(wr_id=self.sends.popleft().wr_id, status=e.IBV_WC_WR_FLUSH_ERR,
                                     opcode=e.IBV_WC_RDMA_WRITE, qp_num=self.qp_num))
        while self.recvs:
            self.cq.queue.append(_wc(wr_id=self.recvs.popleft(), status=e.IBV_WC_WR_FLUSH_ERR,
                                     opcode=e.IBV_WC_RECV, qp_num=self.qp_num))

    def post_send(self, wr, bad_wr):
        if self.state == "init":
            raise RuntimeError("QP not ready to send")
        with _NIC.lock:
            while wr is not None:
                self.sends.append(wr)
                wr = wr.next_wr
            if self.state == "err":
                self._to_error()   # accepted, and flushed
            self._execute()

    def _execute(self):
        """Runs the send queue in order, until it is empty or its head waits for a receive at the peer."""
        import pyverbs.enums as e
        peer = _NIC.qps.get(self.peer_num)
        while self.sends and self.state == "rts":
            wr = self.sends[0]
            with_imm = wr.opcode == e.IBV_WR_RDMA_WRITE_WITH_IMM and not _NIC.lose_replies
            if with_imm and peer is not None and peer.state == "rts" and not peer.recvs:
                if self.waiting_on is not wr:
                    self.waiting_on = wr
                    _NIC.rnr_waits += 1
                return
            self.sends.popleft()
            status = self._write(wr, peer)
            if status != e.IBV_WC_SUCCESS:   # reported as a completion, and the QP stops
                self.cq.queue.append(_wc(wr_id=wr.wr_id, status=status, opcode=e.IBV_WC_RDMA_WRITE,
                                         qp_num=self.qp_num))
                self._to_error()
                return
            if with_imm:
                peer.cq.queue.append(_wc(wr_id=peer.recvs.popleft(), opcode=e.IBV_WC_RECV_RDMA_WITH_IMM,
                                         imm_data=wr.imm_data, qp_num=peer.qp_num))
            if wr.send_flags & e.IBV_SEND_SIGNALED:
                self.cq.queue.append(_wc(wr_id=wr.wr_id, opcode=e.IBV_WC_RDMA_WRITE, qp_num=self.qp_num))

    def _write(self, wr, peer) -> int:
        """The WR's data into the peer's memory; the completion status."""
        import pyverbs.enums as e
        if peer is None or peer.state != "rts":
            return e.IBV_WC_RETRY_EXC_ERR     # nobody answers: the transport gives up
        remote = _NIC.mrs.get(wr.rkey)
        total = sum(sge.length for sge in wr.sg)
        if remote is None or not remote.access & e.IBV_ACCESS_REMOTE_WRITE or not (
                remote.buf <= wr.remote_addr and wr.remote_addr + total <= remote.buf + remote.length):
            _NIC.violations.append(f"QP {self.qp_num}: remote access error (rkey {wr.rkey:#x})")
            return e.IBV_WC_REM_ACCESS_ERR
        for sge in wr.sg:
            local = _NIC.mrs.get(sge.lkey)
            if local is None or not (local.buf <= sge.addr and sge.addr + sge.length <= local.buf + local.length):
                _NIC.violations.append(f"QP {self.qp_num}: local protection error (lkey {sge.lkey:#x})")
                return e.IBV_WC_LOC_PROT_ERR
        at = wr.remote_addr
        for sge in wr.sg:
            ctypes.memmove(at, sge.addr, sge.length)
            at += sge.length
        return e.IBV_WC_SUCCESS

    def close(self):
        with _NIC.lock:
            _NIC.qps.pop(self.qp_num, None)


class _FakeDevice:
    endpoint = VerbsDevice.endpoint

    def __init__(self, name, port=1, gid_index=-1):
        from types import SimpleNamespace
        self.name, self.port, self.gid_index, self.lid, self.mtu = name, port, 0, 0, 4096
        self.gid, self.link_layer = "fe80:0000:0000:0000:0000:0000:0000:0001", "ethernet"
        self.ctx = self.pd = None
        self.attr = SimpleNamespace(max_sge=30, max_qp_wr=16384, max_cqe=65536)

    def close(self):
        pass


@pytest.fixture
def soft_nic(monkeypatch):
    pytest.importorskip("pyverbs", reason="python3-pyverbs is not importable in this venv")
    import pyverbs.cq
    import pyverbs.mr
    import pyverbs.wr

    from embps.rdma import client, server
    monkeypatch.setattr(pyverbs.mr, "MR", _FakeMR)
    monkeypatch.setattr(pyverbs.cq, "CQ", _FakeCQ)
    monkeypatch.setattr(pyverbs.wr, "SGE", _FakeSGE)
    monkeypatch.setattr(pyverbs.wr, "SendWR", _FakeSendWR)
    monkeypatch.setattr(pyverbs.wr, "RecvWR", _FakeRecvWR)
    fake_qp = lambda device, cq, send_wr, recv_wr, max_sge: (_FakeQP(cq, send_wr, recv_wr), max_sge)  # noqa: E731
    for module in (server, client):
        monkeypatch.setattr(module, "VerbsDevice", _FakeDevice)
        monkeypatch.setattr(module, "create_rc_qp", fake_qp)
    _NIC.reset()
    yield _NIC
    _NIC.reset()


def _wait_for(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_lookups_over_a_simulated_nic(memcached, store, soft_nic):
    t = store.create_table("t", TableSpec(dim=16, capacity=8192, optimizer=OptimizerSpec("adagrad")))
    t.assign(np.arange(0, 3000, 2, dtype=np.uint64), np.random.default_rng(7).standard_normal((1500, 16)))
    z = store.create_table("z", TableSpec(dim=8, capacity=1024, optimizer=OptimizerSpec("sgd"), missing_keys="report"))
    z.assign(np.arange(10, dtype=np.uint64), np.ones((10, 8), np.float32))

    config = RdmaPathConfig(memcached=memcached, cluster="soft", slots=4, max_keys=1000, scratch_slot_bytes=4096,
                            client_check_interval_seconds=0.1)
    path = RdmaShardPath(store, "shard-0", config, "soft0")
    choice = DataPathChoice("rdma", "soft0", "")
    try:
        conn = RdmaShardConnection(path.data_path_address(), RdmaClientConfig(slots=3, slot_bytes=16 << 10),
                                   choice=choice)
        assert conn.keys_per_request("t", 16) == (16 << 10) // 65   # by the response slot, < max_keys
        keys = np.random.default_rng(8).integers(0, 4000, 2000).astype(np.uint64)   # repeats, ~half missing
        rows, found = conn.lookup("t", keys, 16)                     # 8 requests, 3 in flight
        want_rows, want_state, want_found = t.lookup_with_state(keys)
        np.testing.assert_array_equal(rows, want_rows)
        np.testing.assert_array_equal(found, want_found)
        rows, found = conn.lookup("t", keys, 16 + t.state_floats, with_state=True)
        np.testing.assert_array_equal(rows, np.hstack([want_rows, want_state]))
        rows, found = conn.lookup("z", np.arange(5, 15, dtype=np.uint64), 8)   # report: zero rows
        assert found.tolist() == [True] * 5 + [False] * 5 and rows[:5].all() and not rows[5:].any()
        stats = path.stats()
        assert stats.requests == 8 + 16 + 1 and stats.keys == 4010 and stats.errors == 0
        assert stats.scratch_grown >= 1            # 4 KiB of scratch could not hold the missing rows
        assert stats.sges < stats.keys            # adjacent rows coalesced... and the mask per request
        assert stats.tables_registered == 2 and stats.connections_open == 1
        metrics = {f.name: f.samples[0].value for f in collect_metrics(path, choice)}
        assert metrics["embps_shard_rdma_offered"] == 1 and metrics["embps_shard_rdma_requests"] == 25
        assert metrics["embps_shard_rdma_keys"] == 4010 and metrics["embps_shard_rdma_connections_open"] == 1

        with pytest.raises(RdmaShardError, match="NOT_FOUND: no table named 'nope'") as error:
            conn.lookup("nope", keys[:3], 16)
        assert error.value.code == 5
        with pytest.raises(RdmaShardError, match="FAILED_PRECONDITION"):
            conn.lookup("t", keys, 17)             # an error in the middle of a pipelined batch: drained
        np.testing.assert_array_equal(conn.lookup("t", keys[:10], 16)[0], want_rows[:10])   # still usable
        _wait_for(lambda: not path._inflight)       # every completion polled: every gather list released
        t.update(keys[:100], np.ones((100, 16), np.float32))
        t.check()

        pool_mrs = {entry[3].lkey for entry in path._pool_mrs.values()}
        with path.table_drop_guard("z"):
            store.drop_table("z")
        _wait_for(lambda: path.stats().tables_registered == 1)
        assert not pool_mrs <= set(_NIC.mrs)        # z's pool MR was deregistered
        with pytest.raises(RdmaShardError, match="NOT_FOUND"):
            conn.lookup("z", keys[:3], 8)

        soft_nic.lose_replies = True                # writes land, immediates do not: no request arrives
        with pytest.raises(RdmaTimeout, match="timed out"):
            conn.lookup("t", keys[:10], 16, timeout=0.3)
        with pytest.raises(RdmaConnectionError, match="broken: no reply within the deadline"):
            conn.lookup("t", keys[:10], 16)
        soft_nic.lose_replies = False
        conn.close()
        _wait_for(lambda: path.stats().connections_open == 0)   # the shard noticed the client left
        # A second client gets the next id and its own queue pair.
        with RdmaShardConnection(path.data_path_address(), choice=choice) as other:
            np.testing.assert_array_equal(other.lookup("t", keys, 16)[0], t.lookup(keys))
            assert other.client_id == conn.client_id + 1
        assert path.stats().connections_total == 2
        assert soft_nic.violations == [] and soft_nic.rnr_waits == 0
    finally:
        path.stop()
    check = RdmaExchange(memcached, "soft", "shard-0")
    assert check.get(check.shard_key) is None       # withdrawn on stop
    assert not path._pool_mrs and not path._inflight


def test_a_request_sent_the_moment_the_shard_publishes_its_queue_pair_is_served(memcached, store, soft_nic):
    """A client connects and sends as soon as the shard's endpoint is in memcached.  Here the shard's
    accept thread stalls right after publishing it until the poll thread has taken the client's first
    request off the CQ and come back for more (what a loaded machine may do): the connection must be
    known to the poll thread by then, or the request is dropped as stale and the client waits in vain."""
    import pyverbs.enums as e
    t = store.create_table("t", TableSpec(dim=16, capacity=1024, optimizer=OptimizerSpec("sgd")))
    t.assign(np.arange(100, dtype=np.uint64), np.random.default_rng(3).standard_normal((100, 16)))
    config = RdmaPathConfig(memcached=memcached, cluster="publish-race", slots=2, max_keys=64, scratch_slot_bytes=4096)
    path = RdmaShardPath(store, "shard-0", config, "soft0")
    request_taken, shard_came_back = threading.Event(), threading.Event()
    take = path.cq.poll

    def poll(num_entries=1):
        if request_taken.is_set():
            shard_came_back.set()   # every completion of the previous poll is handled
        polled, wcs = take(num_entries)
        if any(wc.opcode == e.IBV_WC_RECV_RDMA_WITH_IMM for wc in wcs[:polled]):
            request_taken.set()
        return polled, wcs

    publish = path.exchange.publish_qp

    def publish_then_stall(client_id, info):
        publish(client_id, info)
        shard_came_back.wait(30)

    try:
        path.cq.poll = poll
        path.exchange.publish_qp = publish_then_stall
        with RdmaShardConnection(path.data_path_address(), RdmaClientConfig(slots=2, slot_bytes=4096),
                                 choice=DataPathChoice("rdma", "soft0", "")) as conn:
            keys = np.arange(50, 150, dtype=np.uint64)
            rows, found = conn.lookup("t", keys, 16, timeout=20)
            assert shard_came_back.is_set()         # the request was answered while the accept thread stalled
            np.testing.assert_array_equal(rows, t.lookup(keys))
            assert found.tolist() == [True] * 50 + [False] * 50
        assert soft_nic.violations == [] and soft_nic.rnr_waits == 0
    finally:
        path.stop()


def test_an_error_in_the_shards_poll_thread_is_logged_and_fails_only_that_connection(memcached, store, soft_nic,
                                                                                     monkeypatch, caplog):
    """A bug while handling one client's completion is logged with its traceback and breaks that
    connection; the poll thread goes on, and the next client is served."""
    from embps.rdma import server
    t = store.create_table("t", TableSpec(dim=16, capacity=1024, optimizer=OptimizerSpec("sgd")))
    t.assign(np.arange(100, dtype=np.uint64), np.random.default_rng(4).standard_normal((100, 16)))
    config = RdmaPathConfig(memcached=memcached, cluster="poll-error", slots=2, max_keys=64, scratch_slot_bytes=4096,
                            client_check_interval_seconds=0.1)
    decode_imm, calls = server.imm_from_wire, []

    def fails_first(value):
        calls.append(value)
        if len(calls) == 1:
            raise RuntimeError("a bug in the shard")
        return decode_imm(value)

    monkeypatch.setattr(server, "imm_from_wire", fails_first)
    path = RdmaShardPath(store, "shard-0", config, "soft0")
    choice, client_config = DataPathChoice("rdma", "soft0", ""), RdmaClientConfig(slots=2, slot_bytes=4096)
    keys = np.arange(50, dtype=np.uint64)
    try:
        with RdmaShardConnection(path.data_path_address(), client_config, choice=choice) as first:
            with pytest.raises(RdmaTimeout):
                first.lookup("t", keys, 16, timeout=1.0)
        assert any(r.message == "handling an RDMA completion failed" and r.exc_info and
                   "a bug in the shard" in str(r.exc_info[1]) for r in caplog.records)
        _wait_for(lambda: path.stats().connections_open == 0)
        assert path.stats().connections_failed == 1
        with RdmaShardConnection(path.data_path_address(), client_config, choice=choice) as second:
            np.testing.assert_array_equal(second.lookup("t", keys, 16)[0], t.lookup(keys))
        assert soft_nic.violations == [] and soft_nic.rnr_waits == 0
    finally:
        path.stop()
