"""The pure planner of the RDMA WRITE chain that answers a lookup: gather list in, work requests out.

No verbs and no hardware here (the server turns the plan into pyverbs objects), so all of it is
tested with a software NIC.  For a request of n keys, `plan_lookup_reply`

1. checks the request against the table (at least one key, the row width the client expects, a
   response slot that holds n rows and the mask) and gathers the keys: `Table.gather()` gives
   (addr, len, found) per key, pointing at the rows in the mapped PM pool, valid until release;
2. writes the rows of missing keys (initial rows, or one zero row for report-missing tables, with
   zero optimizer state) and the found mask into the registered scratch area; `ScratchTooSmall`
   says how much scratch it needs when it does not fit;
3. builds the chain with `build_write_requests`: found rows are read where they lie in PM (the pool
   is one MR per table), the j-th missing row from scratch; runs of rows adjacent in one memory
   region (each starting where the previous ended) become one SGE, split at `max_sge_bytes`; the
   SGEs, then the mask as a trailer, are cut into WRs of at most max_sge, each WR's remote address
   continuing where the previous one ended, so the rows land in request order; the last WR is
   WRITE_WITH_IMM carrying the batch id and is the only signaled one.

The plan holds the gather list: the caller releases it once the chain's completion is polled (the
epoch guard keeps replaced slabs from reuse until then).  `error_reply_spec` is the one-WR answer
carrying an error record.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embps.store import GatherList, Table, initial_rows

from .wire import (BATCH_ID_MASK, FAILED_PRECONDITION, IMM_ERROR, INVALID_ARGUMENT, RESOURCE_EXHAUSTED,
                   LookupRequest, ProtocolViolation, encode_error, reply_bytes)

OP_WRITE, OP_WRITE_WITH_IMM = "RDMA_WRITE", "RDMA_WRITE_WITH_IMM"
MAX_SGE_BYTES = 1 << 30   # the SGE length field is 32 bits; stay far below it and below port max_msg_sz


@dataclass(frozen=True)
class WorkRequestSpec:
    """One RDMA WRITE: local SGEs (addr, length, lkey) written contiguously at remote_addr."""

    sges: tuple[tuple[int, int, int], ...]
    remote_addr: int
    rkey: int
    opcode: str = OP_WRITE
    imm: int | None = None
    signaled: bool = False

    @property
    def length(self) -> int:
        return sum(length for _, length, _ in self.sges)


def build_write_requests(entries, lkey: int, remote_addr: int, rkey: int, max_sge: int, scratch_addr: int,
                         row_bytes: int, *, batch_id: int = 0, scratch_lkey: int | None = None,
                         scratch_stride: int | None = None, trailer: tuple[int, int, int] | None = None,
                         max_sge_bytes: int = MAX_SGE_BYTES) -> list[WorkRequestSpec]:
    """The RDMA WRITE chain that places n rows (then `trailer`, if any) contiguously at remote_addr.

    entries: the GatherList entries (addr, len, found) of n keys.  A found row is read where it lies
    (`lkey`, the pool's MR); the j-th missing row is read at scratch_addr + j * scratch_stride
    (`scratch_lkey`; stride row_bytes by default, 0 to repeat one zero row).  Runs of rows adjacent in
    memory become one SGE (split at max_sge_bytes); SGEs are cut into WRs of at most max_sge, each
    WR's remote address continuing where the previous one ended.  The last WR is WRITE_WITH_IMM with
    imm = batch_id and the only signaled one.  n = 0 without a trailer gives one WR with no SGE,
    which verbs cannot post: callers reject empty batches."""
    if max_sge < 1:
        raise ValueError(f"max_sge must be at least 1, got {max_sge}")
    if row_bytes < 1:
        raise ValueError(f"row_bytes must be positive, got {row_bytes}")
    if max_sge_bytes < row_bytes:
        raise ValueError(f"max_sge_bytes ({max_sge_bytes}) is smaller than a row ({row_bytes})")
    entries = np.asarray(entries)
    sges: list[tuple[int, int, int]] = []
    if len(entries):
        addrs, lkeys = _row_sources(entries, lkey, scratch_addr, row_bytes,
                                    lkey if scratch_lkey is None else scratch_lkey,
                                    row_bytes if scratch_stride is None else scratch_stride)
        sges = _coalesce(addrs, lkeys, row_bytes, max_sge_bytes // row_bytes)
    if trailer is not None and trailer[1] > 0:
        sges.append((int(trailer[0]), int(trailer[1]), int(trailer[2])))
    return _chain(sges, remote_addr, rkey, max_sge, batch_id)


def _row_sources(entries: np.ndarray, lkey: int, scratch_addr: int, row_bytes: int, scratch_lkey: int,
                 stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Where each row is read: (address, lkey) per key, the pool for found keys, scratch for the rest."""
    found = entries["found"] != 0
    bad = found & (entries["len"] != row_bytes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"gathered row {i} is {int(entries['len'][i])} bytes, expected {row_bytes} "
                         "(gathered with_state differently?)")
    addrs = entries["addr"].astype(np.uint64)
    missing = ~found
    if missing.any():
        rank = np.cumsum(missing, dtype=np.uint64)[missing] - np.uint64(1)
        addrs[missing] = np.uint64(scratch_addr) + rank * np.uint64(stride)
    return addrs, np.where(found, np.uint64(lkey), np.uint64(scratch_lkey))


def _coalesce(addrs: np.ndarray, lkeys: np.ndarray, row_bytes: int, rows_per_sge: int) -> list[tuple[int, int, int]]:
    """One SGE per run of rows adjacent in one memory region, split every rows_per_sge rows."""
    n = len(addrs)
    breaks = np.ones(n, bool)
    breaks[1:] = (addrs[1:] != addrs[:-1] + np.uint64(row_bytes)) | (lkeys[1:] != lkeys[:-1])
    starts = np.flatnonzero(breaks)
    counts = np.diff(np.append(starts, n))
    sges = []
    for addr, count, key in zip(addrs[starts].tolist(), counts.tolist(), lkeys[starts].tolist()):
        while count > rows_per_sge:
            sges.append((addr, rows_per_sge * row_bytes, key))
            addr += rows_per_sge * row_bytes
            count -= rows_per_sge
        sges.append((addr, count * row_bytes, key))
    return sges


def _chain(sges: list[tuple[int, int, int]], remote_addr: int, rkey: int, max_sge: int,
           batch_id: int) -> list[WorkRequestSpec]:
    """SGEs cut into WRs of at most max_sge, written back to back; the last one signals with the batch id."""
    specs: list[WorkRequestSpec] = []
    offset = 0
    for first in range(0, len(sges), max_sge):
        chunk = tuple(sges[first:first + max_sge])
        specs.append(WorkRequestSpec(chunk, remote_addr + offset, rkey))
        offset += sum(length for _, length, _ in chunk)
    last = specs.pop() if specs else WorkRequestSpec((), remote_addr, rkey)
    specs.append(WorkRequestSpec(last.sges, last.remote_addr, rkey, OP_WRITE_WITH_IMM, batch_id & BATCH_ID_MASK,
                                 signaled=True))
    return specs


@dataclass
class ScratchArea:
    """Registered memory for rows of missing keys and the found mask (a numpy uint8 view + its lkey)."""

    buffer: np.ndarray
    lkey: int

    @property
    def addr(self) -> int:
        return int(self.buffer.ctypes.data)

    @property
    def nbytes(self) -> int:
        return int(self.buffer.nbytes)


class ScratchTooSmall(Exception):
    def __init__(self, needed: int):
        super().__init__(f"the reply needs {needed} bytes of scratch")
        self.needed = needed


@dataclass
class LookupReply:
    """A planned reply: the WR chain and the gather list to release once its completion is polled."""

    gather: GatherList
    specs: list[WorkRequestSpec]
    keys: int
    found: int
    row_bytes: int

    @property
    def bytes(self) -> int:
        return sum(s.length for s in self.specs)

    def release(self) -> None:
        self.gather.release()


def _align(n: int, to: int = 64) -> int:
    return (n + to - 1) // to * to


def plan_lookup_reply(table: Table, request: LookupRequest, *, pool_lkey: int, scratch: ScratchArea, rkey: int,
                      max_sge: int) -> LookupReply:
    """Gathers the request's keys and builds the WR chain that writes (rows, found mask) to
    request.remote_addr.  Raises ProtocolViolation for a request the table cannot answer and
    ScratchTooSmall (with the size needed) when the missing rows and mask do not fit `scratch`."""
    width = _check_request(table, request)
    keys, n, row_bytes = request.keys, len(request.keys), width * 4
    gather = table.gather(keys, request.with_state)
    try:
        found = gather.entries["found"] != 0
        zero_rows = table.spec.missing_keys == "report"
        mask_at = _fill_scratch(table, keys, found, width, zero_rows, scratch)
        specs = build_write_requests(gather.entries, pool_lkey, request.remote_addr, rkey, max_sge, scratch.addr,
                                     row_bytes, batch_id=request.batch_id, scratch_lkey=scratch.lkey,
                                     scratch_stride=0 if zero_rows else row_bytes,
                                     trailer=(scratch.addr + mask_at, n, scratch.lkey))
    except BaseException:
        gather.release()
        raise
    return LookupReply(gather, specs, n, int(found.sum()), row_bytes)


def _check_request(table: Table, request: LookupRequest) -> int:
    """The row width in floats, once the request is one the table can answer."""
    n = len(request.keys)
    width = table.dim + (table.state_floats if request.with_state else 0)
    if n == 0:
        raise ProtocolViolation(INVALID_ARGUMENT, "a lookup needs at least one key")
    if request.width != width:
        raise ProtocolViolation(FAILED_PRECONDITION, f"table {table.name!r} rows are {width} floats "
                                f"(dim {table.dim}{', with state' if request.with_state else ''}), "
                                f"the client expects {request.width}")
    if reply_bytes(n, width) > request.remote_capacity:
        raise ProtocolViolation(RESOURCE_EXHAUSTED, f"{n} rows of {width} floats and their mask need "
                                f"{reply_bytes(n, width)} bytes, the response slot holds {request.remote_capacity}")
    return width


def _fill_scratch(table: Table, keys: np.ndarray, found: np.ndarray, width: int, zero_rows: bool,
                  scratch: ScratchArea) -> int:
    """Writes the missing keys' rows (one zero row when zero_rows), then the found mask at the returned
    offset, into scratch."""
    missing = np.flatnonzero(~found)
    row_bytes = width * 4
    rows_bytes = (row_bytes if zero_rows else len(missing) * row_bytes) if len(missing) else 0
    mask_at = _align(rows_bytes)
    if mask_at + len(keys) > scratch.nbytes:
        raise ScratchTooSmall(mask_at + len(keys))
    buf = scratch.buffer
    if len(missing):
        rows = buf[:rows_bytes].view(np.float32).reshape(-1, width)
        if zero_rows:
            rows[:] = 0
        else:
            rows[:, :table.dim] = initial_rows(table.spec, keys[missing])
            rows[:, table.dim:] = 0
    buf[mask_at:mask_at + len(keys)] = found
    return mask_at


def error_reply_spec(code: int, message: str, scratch: ScratchArea, remote_addr: int, capacity: int, rkey: int,
                     batch_id: int) -> WorkRequestSpec:
    """The one WR that answers with an error record (written into scratch), the immediate's top bit set."""
    record = encode_error(code, message, min(capacity, scratch.nbytes))
    scratch.buffer[:len(record)] = np.frombuffer(record, np.uint8)
    return WorkRequestSpec(((scratch.addr, len(record), scratch.lkey),), remote_addr, rkey, OP_WRITE_WITH_IMM,
                           (batch_id & BATCH_ID_MASK) | IMM_ERROR, signaled=True)
