"""The RDMA data path: discovery and fallback, the memcached queue-pair exchange against a real
memcached on loopback, and the gather list -> work request construction against a real store, with a
"software NIC" that executes the work requests (bounds-checked against the registered regions) and
must reproduce Table.lookup byte for byte.  Only the end-to-end test needs a device; it skips here."""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from embps.api import OptimizerSpec, TableSpec
from embps.common import rdma_exchange as rx
from embps.common.rdma_exchange import (FAILED_PRECONDITION, IMM_ERROR, INVALID_ARGUMENT, RESOURCE_EXHAUSTED,
                                        EndpointInfo, ExchangeError, ExchangeTimeout, LookupRequest, ProtocolViolation,
                                        RdmaExchange, RdmaProbe, RdmaUnavailable, choose_data_path, decode_error,
                                        decode_request, encode_error, encode_request, parse_rdma_address, probe_rdma,
                                        rdma_devices, reply_bytes)
from embps.ps_shard.rdma_path import (OP_WRITE, OP_WRITE_WITH_IMM, RdmaPathConfig, ScratchArea, ScratchTooSmall,
                                      build_write_requests, collect_metrics, error_reply_spec, plan_lookup_reply,
                                      start_rdma_path, to_send_wrs)
from embps.store import Store

POOL_LKEY, SCRATCH_LKEY, RKEY = 0x1111, 0x2222, 0x3333
REMOTE_BASE = 0x7F00_0000_0000


# ---- fixtures -------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def memcached():
    """A private memcached on a free loopback port (TCP only), stopped afterwards."""
    binary = shutil.which("memcached") or ("/usr/bin/memcached" if Path("/usr/bin/memcached").exists() else None)
    if binary is None:
        pytest.skip("memcached is not installed (apt-get install memcached)")
    port = _free_port()
    cmd = [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0"]
    if os.geteuid() == 0:
        cmd += ["-u", "root"]   # memcached refuses to run as root without naming the user
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"memcached did not start: {proc.stderr.read().decode(errors='replace')}") from None
            time.sleep(0.02)
    yield f"127.0.0.1:{port}"
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "store") as s:
        yield s


@pytest.fixture
def reset_fallback_log():
    rx._logged.clear()
    rx._last_choice.clear()
    yield
    rx._logged.clear()
    rx._last_choice.clear()


def _endpoint(qp_num: int, **extra) -> EndpointInfo:
    return EndpointInfo(gid="fe80:0000:0000:0000:0202:c9ff:fe00:0001", lid=0, qp_num=qp_num, psn=0x123456,
                        mr_addr=0x7F12_3456_0000, mr_rkey=0xDEADBEEF, mr_length=4 << 20, max_sge=30, mtu=4096,
                        generation="gen-1", extra=extra)


# ---- discovery and fallback -----------------------------------------------------------------------

def test_no_rdma_device_here_and_the_fallback_is_chosen_and_logged_once(caplog, reset_fallback_log, tmp_path):
    devices = rdma_devices()
    if devices:
        pytest.skip(f"this machine has RDMA devices {devices}: the no-device fallback cannot be observed")
    probe = probe_rdma()
    assert probe.devices == () and probe.reason   # e.g. "device listing failed: Failed to get devices list"
    with caplog.at_level(logging.INFO, logger="embps.rdma"):
        first = choose_data_path("auto", memcached="127.0.0.1:11211", role="shard")
        second = choose_data_path("auto", memcached="127.0.0.1:11211", role="shard")
    assert first == second and first.kind == "fallback" and not first.rdma and first.device is None
    assert first.reason == probe.reason
    assert rx.last_choice("shard") == first
    messages = [r.getMessage() for r in caplog.records if r.name == "embps.rdma"]
    assert messages == [f"no RDMA device ({probe.reason}); using the TCP/gRPC path"]
    assert caplog.records[-1].rdma_reason == probe.reason

    # The shard-side entry point: no path, the reason kept for Stats and metrics, nothing raised.
    with Store(tmp_path / "s") as store:
        path, choice = start_rdma_path(store, "shard-0", RdmaPathConfig(memcached="127.0.0.1:11211"))
    assert path is None and choice.reason == probe.reason
    families = {f.name: f for f in collect_metrics(path, choice)}
    assert list(families) == ["embps_shard_rdma_offered"]
    sample = families["embps_shard_rdma_offered"].samples[0]
    assert sample.value == 0 and sample.labels == {"device": "", "reason": probe.reason}
    with pytest.raises(RdmaUnavailable, match="RDMA required"):
        choose_data_path("on", memcached="127.0.0.1:11211")


def test_pyverbs_imports_in_the_venv():
    """Debian's pyverbs (python3-pyverbs) is made visible to the venv by a .pth file (Makefile)."""
    if not Path("/usr/lib/python3/dist-packages/pyverbs").is_dir():
        pytest.skip("python3-pyverbs is not installed (apt-get install python3-pyverbs)")
    import sysconfig

    import pyverbs.device
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    assert list(Path(pyverbs.device.__file__).parent.glob(f"device{suffix}")), \
        f"pyverbs extension modules do not carry this interpreter's ABI tag {suffix}"
    import numpy
    assert "dist-packages" not in numpy.__file__   # only pyverbs comes from Debian


def test_choice_rules_with_a_device_present(caplog, reset_fallback_log):
    present = RdmaProbe(("mlx5_0", "mlx5_1"))
    assert choose_data_path("auto", "", "10.0.0.1:11211", probe=present) == rx.DataPathChoice("rdma", "mlx5_0", "")
    assert choose_data_path("auto", "mlx5_1", "10.0.0.1:11211", probe=present).device == "mlx5_1"
    with caplog.at_level(logging.INFO, logger="embps.rdma"):
        missing = choose_data_path("auto", "mlx5_9", "10.0.0.1:11211", probe=present, role="client")
        no_memcached = choose_data_path("auto", "", "", probe=present, role="client")
        off = choose_data_path("off", probe=present, role="client")
    assert not missing.rdma and "mlx5_9" in missing.reason and "mlx5_0, mlx5_1" in missing.reason
    assert not no_memcached.rdma and "memcached" in no_memcached.reason
    assert not off.rdma and "disabled" in off.reason
    assert len(caplog.records) == 3 and all("using the TCP/gRPC path" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="rdma mode"):
        choose_data_path("maybe")


# ---- the memcached exchange ---------------------------------------------------------------------

def test_exchange_round_trip_between_a_shard_and_a_client(memcached):
    """Shard: open, notice the client, read its endpoint, answer with its QP.  Client: read the shard
    record, take an id, publish, poll for the answer.  Concurrent, through a real memcached."""
    shard_x = RdmaExchange(memcached, "test-rt", "shard-0")
    client_x = RdmaExchange(memcached, "test-rt", "shard-0")
    base = shard_x.open_shard({"generation": "gen-1", "max_keys": 8191, "slots": 8, "request_slot_bytes": 65832})
    client_info = _endpoint(0x000ABC, slots=4, slot_bytes=1 << 20)
    shard_info = _endpoint(0x000DEF, slots=4, request_slot_bytes=65832, max_keys=8191)
    seen: dict = {}

    def shard_side():
        deadline = time.monotonic() + 10
        while shard_x.client_count() <= base:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        cid = base + 1
        seen["client"] = shard_x.wait_client(cid, timeout=5, generation="gen-1")
        shard_x.publish_qp(cid, shard_info)

    thread = threading.Thread(target=shard_side)
    thread.start()
    record = client_x.wait_shard(timeout=5)
    assert record["generation"] == "gen-1" and record["max_keys"] == 8191
    cid = client_x.register_client()
    assert cid == base + 1
    time.sleep(0.05)   # the shard is polling for the record meanwhile
    client_x.publish_client(cid, client_info)
    got = client_x.wait_qp(cid, timeout=5, generation="gen-1")
    thread.join(5)
    assert got == shard_info and seen["client"] == client_info
    assert client_x.get(f"embps/test-rt/shard-0/qp/{cid}") == shard_info.to_json()

    client_x.forget_client(cid)
    assert client_x.get(client_x.client_key(cid)) is None and client_x.get(client_x.qp_key(cid)) is None
    assert client_x.register_client() == cid + 1   # ids keep increasing
    shard_x.close_shard()
    assert client_x.get(client_x.shard_key) is None
    shard_x.close()
    client_x.close()


def test_exchange_timeouts_and_errors_are_clear(memcached):
    x = RdmaExchange(memcached, "test-err", "shard-7", poll_interval=0.01)
    started = time.monotonic()
    with pytest.raises(ExchangeTimeout, match=r"0.3s waiting for shard shard-7's queue pair at memcached "
                                              r".* key 'embps/test-err/shard-7/qp/42'"):
        x.wait_qp(42, timeout=0.3)
    assert 0.25 < time.monotonic() - started < 2
    with pytest.raises(ExchangeTimeout, match="RDMA record"):
        x.wait_shard(timeout=0.05)
    with pytest.raises(ExchangeError, match="has not opened its RDMA path"):
        x.register_client()

    x.open_shard({"generation": "new"})
    x.publish_client(1, _endpoint(5))   # gen-1: a record from an earlier run of the shard
    with pytest.raises(ExchangeError, match="joined shard generation 'gen-1'.*runs 'new'"):
        x.wait_client(1, timeout=1, generation="new")
    x.publish_refusal(2, "at most 64 clients")
    with pytest.raises(ExchangeError, match="refused the connection: at most 64 clients"):
        x.wait_qp(2, timeout=1)
    x.set(x.qp_key(3), b'{"v": 99, "gid": "x"}')
    with pytest.raises(ExchangeError, match="version 99"):
        x.wait_qp(3, timeout=1)
    x.set(x.qp_key(4), b"not json")
    with pytest.raises(ExchangeError, match="not a JSON endpoint record"):
        x.wait_qp(4, timeout=1)
    x.close()

    dead = RdmaExchange(f"127.0.0.1:{_free_port()}", "c", "s", connect_timeout=0.5)
    with pytest.raises(ExchangeError, match=r"memcached at 127\.0\.0\.1:\d+: get embps/c/s/shard failed: "
                                            r"ConnectionRefusedError"):
        dead.wait_shard(timeout=1)
    with pytest.raises(ValueError, match="shard id"):
        RdmaExchange(memcached, "c", "shard 0")   # spaces cannot be in memcached keys


def test_endpoint_records_validate():
    info = _endpoint(7, slots=2)
    assert EndpointInfo.from_json(info.to_json()) == info
    for bad in ({"qp_num": 1 << 24}, {"psn": -1}, {"mr_rkey": 1 << 32}, {"mtu": 1500}, {"gid": "fe80::1"},
                {"max_sge": 0}, {"link_layer": "wifi"}):
        with pytest.raises(ExchangeError):
            EndpointInfo(**{**vars(info), **bad})
    with pytest.raises(ExchangeError, match="unknown endpoint fields"):
        EndpointInfo.from_json(info.to_json().replace(b'"lid"', b'"lid2"'))


def test_rdma_address_round_trip():
    address = parse_rdma_address("memcached://10.0.0.5:11211/prod/shard-3")
    assert (address.memcached, address.cluster, address.shard_id) == ("10.0.0.5:11211", "prod", "shard-3")
    assert str(address) == "memcached://10.0.0.5:11211/prod/shard-3"
    assert parse_rdma_address("memcached://[::1]:11211/c/s").memcached == "[::1]:11211"
    for bad in ("10.0.0.5:11211", "memcached://h/c/s", "memcached://h:1/c", "memcached://h:1/c d/s"):
        with pytest.raises(ValueError):
            parse_rdma_address(bad)


# ---- requests on the queue pair -----------------------------------------------------------------

def test_request_and_error_records_round_trip():
    buf = np.zeros(4096, np.uint8)
    keys = np.array([1, 2**63 + 5, 7], np.uint64)
    length = encode_request(buf, 77, "user", keys, 32, True, REMOTE_BASE, 1 << 20)
    assert length == rx.REQUEST_HEADER.size + 8 + 24
    request = decode_request(buf, length)
    assert (request.batch_id, request.table, request.width, request.with_state) == (77, "user", 32, True)
    assert (request.remote_addr, request.remote_capacity) == (REMOTE_BASE, 1 << 20)
    assert request.keys.tolist() == keys.tolist()
    with pytest.raises(ProtocolViolation, match="do not fit") as info:
        decode_request(buf, length - 1)
    assert info.value.code == INVALID_ARGUMENT
    with pytest.raises(ProtocolViolation, match="magic"):
        decode_request(np.zeros(64, np.uint8))
    with pytest.raises(ValueError, match="slot holds"):
        encode_request(np.zeros(64, np.uint8), 1, "user", keys, 32, False, 0, 0)

    record = encode_error(5, "no table named 'x'", capacity=1000)
    assert decode_error(record) == (5, "no table named 'x'")
    assert decode_error(encode_error(5, "a long message", capacity=14)) == (5, "a ")   # truncated to the slot


# ---- gather list -> work requests -----------------------------------------------------------------

def _runs(addrs: list[int], row_bytes: int) -> int:
    """Independent count of runs of adjacent rows."""
    runs = 0
    for i, addr in enumerate(addrs):
        if i == 0 or addr != addrs[i - 1] + row_bytes:
            runs += 1
    return runs


def _software_nic(specs, regions: dict[int, tuple[int, int]], dest: np.ndarray, dest_addr: int) -> None:
    """Executes RDMA WRITEs with memmove, checking every SGE against its MR like a NIC would."""
    for spec in specs:
        assert spec.rkey == RKEY
        offset = spec.remote_addr - dest_addr
        for addr, length, lkey in spec.sges:
            base, size = regions[lkey]
            assert base <= addr and addr + length <= base + size, "SGE outside its memory region"
            assert 0 <= offset and offset + length <= dest.nbytes, "write outside the remote buffer"
            ctypes.memmove(dest.ctypes.data + offset, addr, length)
            offset += length


def _sgd_table(store, name="t", dim=32, rows=400, missing_keys="initialize"):
    table = store.create_table(name, TableSpec(dim=dim, capacity=4096, optimizer=OptimizerSpec("sgd"),
                                               missing_keys=missing_keys))
    keys = np.arange(rows, dtype=np.uint64)
    table.assign(keys, np.random.default_rng(1).standard_normal((rows, dim)).astype(np.float32))
    return table


def _request_keys(rng) -> np.ndarray:
    """512 keys: runs of consecutive present keys (adjacent slabs), shuffled runs, 112 missing keys."""
    present = np.arange(400, dtype=np.uint64)
    runs = np.split(present, np.sort(rng.choice(np.arange(1, 400), 60, replace=False)))
    rng.shuffle(runs)
    missing = np.arange(10_000, 10_112, dtype=np.uint64)
    pieces = []
    for i, run in enumerate(runs):
        pieces.append(run)
        pieces.append(missing[i * 2:i * 2 + 2])
    keys = np.concatenate(pieces)
    assert len(keys) == 512 and len(np.unique(keys)) == 512
    return keys


def test_build_write_requests_chunks_coalesces_and_signals_with_imm(store):
    table = _sgd_table(store)
    keys = _request_keys(np.random.default_rng(0))
    row_bytes = table.dim * 4
    scratch_addr = 0x5000_0000
    with table.gather(keys) as gathered:
        entries = gathered.entries
        specs = build_write_requests(entries, POOL_LKEY, REMOTE_BASE, RKEY, 30, scratch_addr, row_bytes, batch_id=4242,
                                     scratch_lkey=SCRATCH_LKEY)
        found = entries["found"] != 0
        addrs = [int(a) for a in entries["addr"][found]]
        assert found.sum() == 400
    n = len(keys)

    sges = [sge for spec in specs for sge in spec.sges]
    # chunking by max_sge
    assert all(1 <= len(spec.sges) <= 30 for spec in specs)
    assert all(len(spec.sges) == 30 for spec in specs[:-1])
    assert len(specs) == -(-len(sges) // 30)
    # only the last WR signals, with the batch id as immediate
    assert [s.opcode for s in specs[:-1]] == [OP_WRITE] * (len(specs) - 1)
    assert specs[-1].opcode == OP_WRITE_WITH_IMM and specs[-1].imm == 4242 and specs[-1].signaled
    assert not any(s.signaled or s.imm is not None for s in specs[:-1])
    # every byte once, contiguous at the remote side
    assert sum(s.length for s in specs) == n * row_bytes
    assert specs[0].remote_addr == REMOTE_BASE
    for a, b in zip(specs, specs[1:]):
        assert b.remote_addr == a.remote_addr + a.length
    assert all(s.rkey == RKEY for s in specs)
    # coalescing: present rows come in runs of adjacent slabs; each run (split only where a missing
    # key sits between two present ones) is one SGE; missing rows are adjacent in scratch too
    pool = [sge for sge in sges if sge[2] == POOL_LKEY]
    from_scratch = [sge for sge in sges if sge[2] == SCRATCH_LKEY]
    present_runs = 0
    idx = 0
    order = [bool(f) for f in found]
    pos = 0
    while pos < n:   # count runs independently, per maximal block of present keys
        if order[pos]:
            end = pos
            while end < n and order[end]:
                end += 1
            present_runs += _runs(addrs[idx:idx + end - pos], row_bytes)
            idx += end - pos
            pos = end
        else:
            pos += 1
    assert len(pool) == present_runs < 400 * 0.25   # 61 runs of ~6.5 rows
    assert sum(length for _, length, _ in pool) == 400 * row_bytes
    # the j-th missing row comes from scratch_addr + j * row_bytes
    missing_offsets = []
    for addr, length, _ in from_scratch:
        missing_offsets.extend(range(addr - scratch_addr, addr - scratch_addr + length, row_bytes))
    assert missing_offsets == [j * row_bytes for j in range(112)]


def test_build_write_requests_edges(store):
    table = _sgd_table(store, rows=64)
    keys = np.arange(64, dtype=np.uint64)
    with table.gather(keys) as gathered:
        entries = gathered.entries.copy()
    row = table.dim * 4
    # fully adjacent rows: one SGE; max_sge_bytes splits it at row boundaries
    one = build_write_requests(entries, 1, REMOTE_BASE, RKEY, 30, 0, row)
    assert len(one) == 1 and len(one[0].sges) == 1 and one[0].length == 64 * row
    split = build_write_requests(entries, 1, REMOTE_BASE, RKEY, 2, 0, row, max_sge_bytes=10 * row)
    assert [len(s.sges) for s in split] == [2, 2, 2, 1] and sum(s.length for s in split) == 64 * row
    assert all(length <= 10 * row for s in split for _, length, _ in s.sges)
    # max_sge 1, a trailer (the found mask), report-missing scratch stride 0 (one zero row repeated)
    entries["found"][[3, 4]] = 0
    specs = build_write_requests(entries, 1, REMOTE_BASE, RKEY, 1, 0x900, row, scratch_lkey=2, scratch_stride=0,
                                 trailer=(0xA00, 64, 2), batch_id=(1 << 31) + 9)
    assert all(len(s.sges) == 1 for s in specs)
    assert [s.sges[0] for s in specs[1:4]] == [(0x900, row, 2), (0x900, row, 2), (int(entries["addr"][5]), 59 * row, 1)]
    assert specs[-1].sges == ((0xA00, 64, 2),) and specs[-1].imm == 9   # batch ids are 31 bits
    assert sum(s.length for s in specs) == 64 * row + 64
    # nothing to send: one empty WRITE_WITH_IMM (callers reject empty batches: verbs needs an SGE)
    empty = build_write_requests(entries[:0], 1, REMOTE_BASE, RKEY, 30, 0, row, batch_id=3)
    assert len(empty) == 1 and empty[0].sges == () and empty[0].opcode == OP_WRITE_WITH_IMM
    with pytest.raises(ValueError, match="expected 132"):
        build_write_requests(entries, 1, REMOTE_BASE, RKEY, 30, 0, row + 4)
    with pytest.raises(ValueError, match="max_sge"):
        build_write_requests(entries, 1, REMOTE_BASE, RKEY, 0, 0, row)


@pytest.mark.parametrize("missing_keys", ["initialize", "report"])
@pytest.mark.parametrize("with_state", [False, True])
def test_planned_reply_reproduces_lookup_through_a_software_nic(store, missing_keys, with_state):
    """plan_lookup_reply + build_write_requests executed by memmove give exactly Table.lookup's rows
    (initial rows or zeros for missing keys, zero state) and found mask, read from inside the pool."""
    table = store.create_table("a", TableSpec(dim=20, capacity=4096, optimizer=OptimizerSpec("adagrad"),
                                              missing_keys=missing_keys))
    table.assign(np.arange(300, dtype=np.uint64), np.random.default_rng(2).standard_normal((300, 20)),
                 state=np.abs(np.random.default_rng(3).standard_normal((300, table.state_floats))))
    keys = _request_keys(np.random.default_rng(4))
    width = table.dim + (table.state_floats if with_state else 0)
    n = len(keys)
    capacity = reply_bytes(n, width)
    scratch = ScratchArea(np.zeros(1 << 20, np.uint8), SCRATCH_LKEY)
    request = LookupRequest(31, "a", keys, width, with_state, REMOTE_BASE, capacity)
    reply = plan_lookup_reply(table, request, pool_lkey=POOL_LKEY, scratch=scratch, rkey=RKEY, max_sge=30)
    try:
        dest = np.full(capacity, 0xAB, np.uint8)
        regions = {POOL_LKEY: table.pool_region(), SCRATCH_LKEY: (scratch.addr, scratch.nbytes)}
        _software_nic(reply.specs, {k: v for k, v in regions.items()}, dest, REMOTE_BASE)
    finally:
        reply.release()
    assert reply.keys == n and reply.found == 400 - 100 and reply.bytes == capacity
    assert reply.specs[-1].imm == 31 and reply.specs[-1].sges[-1][1] == n   # the mask is the last SGE
    rows = dest[:n * width * 4].view(np.float32).reshape(n, width)
    found = dest[n * width * 4:].astype(bool)
    want_rows, want_state, want_found = table.lookup_with_state(keys)
    np.testing.assert_array_equal(found, want_found)
    np.testing.assert_array_equal(rows[:, :20], want_rows)
    if with_state:
        np.testing.assert_array_equal(rows[:, 20:], want_state)
    if missing_keys == "report":
        assert not rows[~found].any()
        scratch_sges = [s for spec in reply.specs for s in spec.sges if s[2] == SCRATCH_LKEY]
        assert len({s[0] for s in scratch_sges}) == 2   # one zero row repeated, plus the mask


def test_planned_reply_errors(store):
    table = _sgd_table(store, rows=10)
    keys = np.arange(20, dtype=np.uint64)
    scratch = ScratchArea(np.zeros(4096, np.uint8), SCRATCH_LKEY)
    plan = dict(pool_lkey=POOL_LKEY, scratch=scratch, rkey=RKEY, max_sge=30)
    with pytest.raises(ProtocolViolation, match="rows are 32 floats") as info:
        plan_lookup_reply(table, LookupRequest(1, "t", keys, 33, False, REMOTE_BASE, 1 << 20), **plan)
    assert info.value.code == FAILED_PRECONDITION
    with pytest.raises(ProtocolViolation, match="response slot holds 100") as info:
        plan_lookup_reply(table, LookupRequest(1, "t", keys, 32, False, REMOTE_BASE, 100), **plan)
    assert info.value.code == RESOURCE_EXHAUSTED
    with pytest.raises(ProtocolViolation, match="at least one key"):
        plan_lookup_reply(table, LookupRequest(1, "t", keys[:0], 32, False, REMOTE_BASE, 100), **plan)
    tiny = ScratchArea(np.zeros(256, np.uint8), SCRATCH_LKEY)   # 10 missing rows of 128 bytes do not fit
    with pytest.raises(ScratchTooSmall) as small:
        plan_lookup_reply(table, LookupRequest(1, "t", keys, 32, False, REMOTE_BASE, 1 << 20),
                          **{**plan, "scratch": tiny})
    assert small.value.needed == 10 * 128 + 20
    # the gather list was released: an update (copy-on-write, reclaiming by epochs) still goes through
    table.update(np.arange(10, dtype=np.uint64), np.ones((10, 32), np.float32))
    table.check()

    spec = error_reply_spec(5, "no table named 'x'", scratch, REMOTE_BASE, 1 << 20, RKEY, 12)
    assert spec.opcode == OP_WRITE_WITH_IMM and spec.imm == 12 | IMM_ERROR and spec.signaled
    assert decode_error(scratch.buffer[:spec.length]) == (5, "no table named 'x'")


def test_specs_become_pyverbs_work_requests(store):
    """The pyverbs objects can be built without a device (posting them needs one)."""
    pytest.importorskip("pyverbs", reason="python3-pyverbs is not importable in this venv")
    import pyverbs.enums as e
    table = _sgd_table(store)
    keys = _request_keys(np.random.default_rng(5))
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


# ---- end to end over a device -----------------------------------------------------------------------

def test_end_to_end_over_a_device(memcached, store):
    """Shard and client in one process over a real device (loopback through the NIC)."""
    if not rdma_devices():
        pytest.skip(f"needs an RDMA device (none here: {probe_rdma().reason}); the verbs path "
                    "(QP setup, posting, completions) did not run")
    from embps.client.rdma_client import RdmaClientConfig, RdmaShardConnection, RdmaShardError
    from embps.ps_shard.rdma_path import RdmaShardPath
    table = _sgd_table(store)
    path = RdmaShardPath(store, "shard-0", RdmaPathConfig(memcached=memcached, cluster="e2e"), rdma_devices()[0])
    try:
        with RdmaShardConnection(path.data_path_address(), RdmaClientConfig(slot_bytes=64 << 10)) as conn:
            keys = np.concatenate([_request_keys(np.random.default_rng(6))] * 4)   # several requests in flight
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
# MRs with bounds-checked keys, RC QPs paired by QP number, RDMA WRITE executed by memmove,
# WRITE_WITH_IMM consuming a posted receive, signaled completions, flush on error.  Everything above
# the verbs calls runs for real: the memcached exchange, the shard's accept and poll threads, request
# encoding, gather, scratch, WR construction, completion handling and release, the client's pipelining.

class _SoftNic:
    def __init__(self):
        self.mrs: dict[int, _FakeMR] = {}
        self.qps: dict[int, _FakeQP] = {}
        self.next_key, self.next_qp = 0x100, 0x40
        self.lock = threading.Lock()
        self.lose_replies = False

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
        self.peer_num = None
        self.state = "init"
        _NIC.qps[self.qp_num] = self

    def post_recv(self, wr, bad_wr):
        assert self.state != "err" and len(self.recvs) < self.max_recv_wr, "receive queue overflow"
        self.recvs.append(wr.wr_id)

    def to_rts(self, attr):
        self.peer_num, self.state = attr.dest_qp_num, "rts"

    def modify(self, attr, mask):
        import pyverbs.enums as e
        if attr.qp_state == e.IBV_QPS_ERR:
            self.state = "err"
            while self.recvs:
                self.cq.queue.append(_wc(wr_id=self.recvs.popleft(), status=e.IBV_WC_WR_FLUSH_ERR,
                                         opcode=e.IBV_WC_RECV, qp_num=self.qp_num))

    def post_send(self, wr, bad_wr):
        import pyverbs.enums as e
        if self.state != "rts":
            raise RuntimeError("QP not in RTS")
        peer = _NIC.qps[self.peer_num]
        while wr is not None:
            remote = _NIC.mrs[wr.rkey]
            assert remote.access & e.IBV_ACCESS_REMOTE_WRITE, "remote MR without remote write access"
            at = wr.remote_addr
            for sge in wr.sg:
                local = _NIC.mrs[sge.lkey]
                assert local.buf <= sge.addr and sge.addr + sge.length <= local.buf + local.length, "lkey bounds"
                assert remote.buf <= at and at + sge.length <= remote.buf + remote.length, "rkey bounds"
                ctypes.memmove(at, sge.addr, sge.length)
                at += sge.length
            if wr.opcode == e.IBV_WR_RDMA_WRITE_WITH_IMM and not _NIC.lose_replies:
                assert peer.recvs, "receiver not ready (RNR)"
                peer.cq.queue.append(_wc(wr_id=peer.recvs.popleft(), opcode=e.IBV_WC_RECV_RDMA_WITH_IMM,
                                         imm_data=wr.imm_data, qp_num=peer.qp_num))
            if wr.send_flags & e.IBV_SEND_SIGNALED:
                self.cq.queue.append(_wc(wr_id=wr.wr_id, opcode=e.IBV_WC_RDMA_WRITE, qp_num=self.qp_num))
            wr = wr.next_wr

    def close(self):
        _NIC.qps.pop(self.qp_num, None)


class _FakeDevice:
    endpoint = rx.VerbsDevice.endpoint

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

    from embps.client import rdma_client
    from embps.ps_shard import rdma_path
    monkeypatch.setattr(pyverbs.mr, "MR", _FakeMR)
    monkeypatch.setattr(pyverbs.cq, "CQ", _FakeCQ)
    monkeypatch.setattr(pyverbs.wr, "SGE", _FakeSGE)
    monkeypatch.setattr(pyverbs.wr, "SendWR", _FakeSendWR)
    monkeypatch.setattr(pyverbs.wr, "RecvWR", _FakeRecvWR)
    fake_qp = lambda device, cq, send_wr, recv_wr, max_sge: (_FakeQP(cq, send_wr, recv_wr), max_sge)  # noqa: E731
    for module in (rdma_path, rdma_client):
        monkeypatch.setattr(module, "VerbsDevice", _FakeDevice)
        monkeypatch.setattr(module, "create_rc_qp", fake_qp)
    _NIC.lose_replies = False
    yield _NIC
    _NIC.lose_replies = False


def _wait_for(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_lookups_over_a_simulated_nic(memcached, store, soft_nic):
    from embps.client.rdma_client import (RdmaClientConfig, RdmaConnectionError, RdmaShardConnection, RdmaShardError,
                                          RdmaTimeout)
    from embps.ps_shard.rdma_path import RdmaShardPath
    t = store.create_table("t", TableSpec(dim=16, capacity=8192, optimizer=OptimizerSpec("adagrad")))
    t.assign(np.arange(0, 3000, 2, dtype=np.uint64), np.random.default_rng(7).standard_normal((1500, 16)))
    z = store.create_table("z", TableSpec(dim=8, capacity=1024, optimizer=OptimizerSpec("sgd"), missing_keys="report"))
    z.assign(np.arange(10, dtype=np.uint64), np.ones((10, 8), np.float32))

    config = RdmaPathConfig(memcached=memcached, cluster="soft", slots=4, max_keys=1000, scratch_slot_bytes=4096,
                            client_check_interval_seconds=0.1)
    path = RdmaShardPath(store, "shard-0", config, "soft0")
    choice = rx.DataPathChoice("rdma", "soft0", "")
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

        soft_nic.lose_replies = True                # the shard's writes land, its immediate never does
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
    finally:
        path.stop()
    check = RdmaExchange(memcached, "soft", "shard-0")
    assert check.get(check.shard_key) is None       # withdrawn on stop
    assert not path._pool_mrs and not path._inflight
