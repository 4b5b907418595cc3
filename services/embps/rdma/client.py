"""The client side of the RDMA data path: one RC queue pair to one shard, lookups only.

    conn = RdmaShardConnection("memcached://10.0.0.5:11211/prod/shard-0")   # the shard's DataPath address
    rows, found = conn.lookup("user", keys, width=32)
    conn.close()

Setup (PetPS-style, through memcached; see `embps.rdma.exchange`): read the shard's record
(generation, limits), create the QP and register a response buffer of `slots` slots, INCR the shard's
client counter for an id, publish our endpoint (QP, response MR addr/rkey) under client/<id>, wait
for the shard's endpoint under qp/<id>, connect.

A lookup is split into requests of at most the shard's max_keys and of what a response slot holds;
up to `slots` are in flight.  Each request is one RDMA WRITE_WITH_IMM of (table, keys) into our
request slot at the shard; the shard writes the rows from PM straight into our response slot and
signals with WRITE_WITH_IMM (immediate = batch id, top bit = error).  A timeout or a failed
completion breaks the connection (`broken` says why): writes may still land in its buffers, so it
is never reused, and the caller (PSClient) falls back to the TCP/gRPC path.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time

import numpy as np

from .config import RdmaClientConfig
from .discovery import DataPathChoice, RdmaUnavailable, choose_data_path
from .exchange import ExchangeError, RdmaExchange, parse_rdma_address
from .verbs import RegisteredBuffer, VerbsDevice, connect_rc_qp, create_rc_qp, post_recvs, set_qp_error
from .wire import (BATCH_ID_MASK, IMM_ERROR, RESOURCE_EXHAUSTED, STATUS_NAMES, decode_error, encode_request,
                   imm_from_wire, imm_to_wire, request_bytes)

log = logging.getLogger("embps.rdma.client")


class RdmaError(RuntimeError):
    """Any failure of the RDMA path."""


class RdmaConnectionError(RdmaError):
    """The connection broke (failed completion, or could not be set up); use another path."""


class RdmaTimeout(RdmaConnectionError, TimeoutError):
    """No reply in time; the connection is broken."""


class RdmaShardError(RdmaError):
    """The shard answered with an error (the connection stays usable).  `code` is a gRPC status code
    number, `code_name` its name; UNAVAILABLE means this table cannot be served over RDMA now."""

    def __init__(self, code: int, message: str):
        self.code, self.code_name = code, STATUS_NAMES.get(code, str(code))
        super().__init__(f"{self.code_name}: {message}")
        self.message = message


class RdmaShardConnection:
    """One RC queue pair to one shard, set up through memcached; lookups pipelined over its slots."""

    def __init__(self, address: str, config: RdmaClientConfig | None = None, *, choice: DataPathChoice | None = None):
        import pyverbs.enums as e
        from pyverbs.cq import CQ

        self.config = config = config or RdmaClientConfig()
        self.address = parse_rdma_address(address)
        choice = choice or choose_data_path(config.mode, config.device, self.address.memcached, role="client")
        if not choice.rdma or choice.device is None:
            raise RdmaUnavailable(choice.reason)
        self.broken: str | None = None
        self._lock = threading.Lock()
        self._resources: list = []
        timeout = config.connect_timeout_seconds
        self.exchange = RdmaExchange(self.address.memcached, self.address.cluster, self.address.shard_id)
        self.client_id = None
        try:
            shard = self.exchange.wait_shard(timeout)
            self.generation = str(shard["generation"])
            self.max_keys = int(shard["max_keys"])
            self.request_slot_bytes = int(shard["request_slot_bytes"])
            self.slots = max(1, min(config.slots, int(shard["slots"])))
            self.slot_bytes = int(config.slot_bytes)
            self.device = VerbsDevice(choice.device, config.port, config.gid_index)
            self._resources.append(self.device)
            self.cq = CQ(self.device.ctx, 2 * self.slots + 8, None, None, 0)
            self._resources.append(self.cq)
            access_remote = e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE
            self.responses = self._buffer(self.slots * self.slot_bytes, access_remote)
            self.requests = self._buffer(self.slots * self.request_slot_bytes, e.IBV_ACCESS_LOCAL_WRITE)
            self.sink = self._buffer(64, e.IBV_ACCESS_LOCAL_WRITE)
            self.qp, _ = create_rc_qp(self.device, self.cq, self.slots, self.slots, 1)
            self._resources.append(self.qp)
            self.psn = secrets.randbits(24)
            self._recv_wr_id = 1
            post_recvs(self.qp, self.slots, self._recv_wr_id, self.sink.addr, self.sink.lkey)
            self.client_id = self.exchange.register_client()
            self.exchange.publish_client(self.client_id, self.device.endpoint(
                int(self.qp.qp_num), self.psn, self.responses.addr, self.responses.rkey, self.responses.nbytes, 1,
                self.generation, {"slots": self.slots, "slot_bytes": self.slot_bytes}))
            self.shard = self.exchange.wait_qp(self.client_id, timeout, self.generation)
            if self.shard.mr_length < self.slots * self.request_slot_bytes:
                raise ExchangeError(f"the shard's request buffer ({self.shard.mr_length} bytes) is smaller than "
                                    f"{self.slots} slots of {self.request_slot_bytes}")
            connect_rc_qp(self.qp, self.device, self.psn, self.shard)
        except BaseException:
            self._teardown()
            raise
        self._next_batch = secrets.randbits(20)
        log.info("RDMA connection ready", extra={"shard": str(self.address), "client_id": self.client_id,
                                                 "slots": self.slots, "max_keys": self.max_keys})

    def _buffer(self, nbytes: int, access: int) -> RegisteredBuffer:
        buf = RegisteredBuffer(self.device, nbytes, access)
        self._resources.append(buf)
        return buf

    # ---- lookups ------------------------------------------------------------------------------

    def keys_per_request(self, table: str, width: int) -> int:
        by_slot = self.slot_bytes // (width * 4 + 1)
        by_request = (self.request_slot_bytes - request_bytes(0, table)) // 8
        return max(0, min(self.max_keys, by_slot, by_request))

    def lookup(self, table: str, keys, width: int, with_state: bool = False,
               timeout: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
        """(rows (n, width) float32, found (n,) bool).  width = dim, + state floats with_state."""
        keys = np.ascontiguousarray(keys, dtype=np.uint64)
        n = len(keys)
        rows = np.empty((n, width), np.float32)
        found = np.empty(n, np.bool_)
        if n == 0:
            return rows, found
        per = self.keys_per_request(table, width)
        if per < 1:
            raise RdmaShardError(RESOURCE_EXHAUSTED, f"one row of {width} floats does not fit a {self.slot_bytes}-byte response slot")
        with self._lock:
            if self.broken:
                raise RdmaConnectionError(f"RDMA connection to {self.address} is broken: {self.broken}")
            self._run(table, keys, width, with_state, per, rows, found, time.monotonic() + timeout)
        return rows, found

    def _run(self, table, keys, width, with_state, per, rows, found, deadline) -> None:
        import pyverbs.enums as e
        from pyverbs.wr import SGE, SendWR

        pending: dict[int, tuple[int, int]] = {}   # batch id -> (start, count)
        starts = list(range(0, len(keys), per))
        sends_outstanding = 0
        idle = 0
        error: RdmaShardError | None = None
        while starts or pending:
            while starts and len(pending) < self.slots and sends_outstanding < self.slots and error is None:
                start = starts.pop(0)
                count = min(per, len(keys) - start)
                batch = self._next_batch & BATCH_ID_MASK
                self._next_batch += 1
                slot = batch % self.slots
                req_at = slot * self.request_slot_bytes
                remote_at, capacity = self.responses.addr + slot * self.slot_bytes, self.slot_bytes
                length = encode_request(self.requests.array[req_at:req_at + self.request_slot_bytes], batch, table,
                                        keys[start:start + count], width, with_state, remote_at, capacity)
                wr = SendWR(wr_id=batch, opcode=e.IBV_WR_RDMA_WRITE_WITH_IMM, num_sge=1, imm_data=imm_to_wire(batch),
                            sg=[SGE(self.requests.addr + req_at, length, self.requests.lkey)],
                            send_flags=e.IBV_SEND_SIGNALED)
                wr.set_wr_rdma(self.shard.mr_rkey, self.shard.mr_addr + slot * self.request_slot_bytes)
                try:
                    self.qp.post_send(wr, None)
                except Exception as exc:
                    self._break(f"posting a request failed: {exc}")
                    raise RdmaConnectionError(f"RDMA request to {self.address} failed: {exc}") from None
                pending[batch] = (start, count)
                sends_outstanding += 1
            if not pending and not starts:
                break
            polled, wcs = self.cq.poll(2 * self.slots)
            if not polled:
                if time.monotonic() > deadline:
                    self._break(f"no reply within the deadline ({len(pending)} requests outstanding)")
                    raise RdmaTimeout(f"RDMA lookup on {self.address} timed out")
                idle += 1
                if idle > 1000:   # spin first (replies take microseconds), then yield the core
                    time.sleep(50e-6)
                continue
            idle = 0
            for wc in wcs[:polled]:
                if wc.status != e.IBV_WC_SUCCESS:
                    self._break(f"completion status {wc.status} (vendor error {wc.vendor_err})")
                    raise RdmaConnectionError(f"RDMA connection to {self.address} failed: {self.broken}")
                if wc.opcode != e.IBV_WC_RECV_RDMA_WITH_IMM:
                    sends_outstanding -= 1   # our request WRITE completed
                    continue
                post_recvs(self.qp, 1, self._recv_wr_id, self.sink.addr, self.sink.lkey)
                imm = imm_from_wire(int(wc.imm_data))
                batch = imm & BATCH_ID_MASK
                if batch not in pending:
                    self._break(f"reply for unknown batch {batch}")
                    raise RdmaConnectionError(f"RDMA connection to {self.address} failed: {self.broken}")
                start, count = pending.pop(batch)
                at = (batch % self.slots) * self.slot_bytes
                reply = self.responses.array[at:at + self.slot_bytes]
                if imm & IMM_ERROR:
                    error = error or RdmaShardError(*decode_error(reply))
                    starts.clear()   # send nothing more; drain what is in flight
                    continue
                n_bytes = count * width * 4
                rows[start:start + count] = reply[:n_bytes].view(np.float32).reshape(count, width)
                found[start:start + count] = reply[n_bytes:n_bytes + count] != 0
        # Send completions can trail the replies (the shard's reply may beat our ACK); collect them so
        # the send queue never overflows.
        while sends_outstanding > 0:
            polled, wcs = self.cq.poll(2 * self.slots)
            for wc in wcs[:polled]:
                if wc.status != e.IBV_WC_SUCCESS:
                    self._break(f"completion status {wc.status}")
                    raise RdmaConnectionError(f"RDMA connection to {self.address} failed: {self.broken}")
                sends_outstanding -= 1
            if not polled and time.monotonic() > deadline:
                self._break("request completions missing")
                raise RdmaTimeout(f"RDMA lookup on {self.address} timed out")
        if error is not None:
            raise error

    # ---- lifetime -----------------------------------------------------------------------------

    def _break(self, reason: str) -> None:
        self.broken = reason
        log.warning("RDMA connection broken", extra={"shard": str(self.address), "reason": reason})
        try:
            set_qp_error(self.qp)
        except Exception:
            pass

    def _teardown(self) -> None:
        # QP first (no DMA after it), then buffers, CQ, device: reverse order of creation.
        for resource in reversed(self._resources):
            try:
                resource.close()
            except Exception:
                log.exception("closing an RDMA resource failed")
        self._resources.clear()
        if self.client_id is not None:
            try:
                self.exchange.forget_client(self.client_id)
            except ExchangeError:
                pass
        self.exchange.close()

    def close(self) -> None:
        with self._lock:
            if self.broken != "closed":
                self.broken = "closed"
                self._teardown()

    def __enter__(self) -> RdmaShardConnection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

