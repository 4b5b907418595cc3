"""The pure planner against a real store: the WRITE chain's chunking, coalescing and signalling, and
a "software NIC" that executes the planned work requests (bounds-checked against the registered
regions) and must reproduce Table.lookup_with_state byte for byte.  No hardware, no pyverbs."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from embps.rdma.planner import (OP_WRITE, OP_WRITE_WITH_IMM, ScratchArea, ScratchTooSmall, build_write_requests,
                                error_reply_spec, plan_lookup_reply)
from embps.rdma.wire import (FAILED_PRECONDITION, IMM_ERROR, RESOURCE_EXHAUSTED, LookupRequest, ProtocolViolation,
                             decode_error, reply_bytes)
from embps.api import OptimizerSpec, TableSpec
from helpers.rdma import POOL_LKEY, REMOTE_BASE, RKEY, SCRATCH_LKEY, request_keys, sgd_table


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


def test_build_write_requests_chunks_coalesces_and_signals_with_imm(store):
    table = sgd_table(store)
    keys = request_keys(np.random.default_rng(0))
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
    table = sgd_table(store, rows=64)
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
    keys = request_keys(np.random.default_rng(4))
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
    table = sgd_table(store, rows=10)
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
