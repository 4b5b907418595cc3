"""The shard side of the RDMA data path: accepts clients through memcached and answers their lookups
with NIC gathering (PetPS §2), over pyverbs.

Lookups only (updates stay on the TCP/gRPC paths, which acknowledge persistence).  One RC queue pair
per client, set up through `embps.rdma.exchange`.  A request arrives as an RDMA WRITE_WITH_IMM of
(table, keys, width) into the client's request slot in a registered buffer of the shard
(`embps.rdma.wire`); the completion's immediate is the batch id.  The shard then acquires the table
(a concurrent DropTable waits), plans the reply (`embps.rdma.planner`: gather, scratch rows for
missing keys, the WRITE chain reading rows straight from the PM pool, registered once per table as
an MR), posts the chain, and releases the gather list (the epoch guard: replaced slabs are not
reused before) and the table only when the chain's completion is polled, so reclamation waits for
the NIC.  Errors go back as an error record written to the client's response slot, immediate =
batch id with the top bit set.  `start_rdma_path` falls back (with the reason) when this machine
cannot serve RDMA.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from embps.api import StoreError, TableNotFound
from embps.api.status import grpc_code_for
from embps.store import Store, Table

from .config import RdmaPathConfig
from .discovery import DataPathChoice, RdmaUnavailable, choose_data_path
from .exchange import EndpointInfo, ExchangeError, RdmaAddress, RdmaExchange, check_name, split_memcached
from .planner import (OP_WRITE_WITH_IMM, LookupReply, ScratchArea, ScratchTooSmall, WorkRequestSpec,
                      error_reply_spec, plan_lookup_reply)
from .verbs import RegisteredBuffer, VerbsDevice, connect_rc_qp, create_rc_qp, post_recvs, set_qp_error
from .wire import (BATCH_ID_MASK, INTERNAL, INVALID_ARGUMENT, NOT_FOUND, REQUEST_HEADER, UNAVAILABLE,
                   ProtocolViolation, decode_request, imm_from_wire, imm_to_wire)

log = logging.getLogger("embps.rdma.server")

_RECV_TAG = 1 << 63


@dataclass
class RdmaPathStats:
    """Counters of one shard's RDMA path (Stats and metrics read a copy)."""

    requests: int = 0
    errors: int = 0
    keys: int = 0
    keys_missing: int = 0
    bytes_written: int = 0
    work_requests: int = 0
    sges: int = 0
    connections_open: int = 0
    connections_total: int = 0
    connections_failed: int = 0
    scratch_grown: int = 0
    tables_registered: int = 0


@dataclass
class _InFlight:
    conn: _Connection
    reply: LookupReply | None
    table: str | None                  # counted in _table_inflight until the completion
    retired: list = field(default_factory=list)   # buffers to close with this completion
    posted: float = 0.0
    wrs: int = 0


class _Connection:
    def __init__(self, path: RdmaShardPath, client_id: int, client: EndpointInfo):
        import pyverbs.enums as e
        self.path, self.client_id, self.client = path, client_id, client
        dev, cfg = path.device, path.config
        self.slots = min(cfg.slots, int(client.extra.get("slots", cfg.slots)))
        self.slot_bytes = int(client.extra.get("slot_bytes", 0))
        if self.slot_bytes <= 0 or self.slots * self.slot_bytes > client.mr_length:
            raise ExchangeError(f"client {client_id}: response buffer of {client.mr_length} bytes cannot hold "
                                f"{self.slots} slots of {self.slot_bytes}")
        self.request_slot_bytes = path.request_slot_bytes
        self.qp: Any = None
        self.buffers: list[RegisteredBuffer] = []
        try:
            self.requests = self._buffer(self.slots * self.request_slot_bytes,
                                         e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE)
            self.sink = self._buffer(64, e.IBV_ACCESS_LOCAL_WRITE)
            self.scratch = [self._buffer(cfg.scratch_slot_bytes, e.IBV_ACCESS_LOCAL_WRITE) for _ in range(self.slots)]
            self.qp, self.max_sge = create_rc_qp(dev, path.cq, path.send_depth, self.slots, path.max_sge)
            self.wrs_per_request = -(-(path.max_keys + 1) // self.max_sge)
            if self.wrs_per_request > path.send_depth:
                raise ExchangeError(f"the queue pair grants {self.max_sge} SGEs per WR: a request of "
                                    f"{path.max_keys} keys may need more WRs than its send queue holds")
            self.psn = secrets.randbits(24)
            self.recv_wr_id = _RECV_TAG | client_id
            post_recvs(self.qp, self.slots, self.recv_wr_id, self.sink.addr, self.sink.lkey)
            connect_rc_qp(self.qp, dev, self.psn, client)
        except BaseException:
            self.destroy()
            raise
        self.qp_num = int(self.qp.qp_num)
        self.inflight = 0
        self.sq_used = 0                       # WRs posted whose chain has not completed
        self.deferred: deque[int] = deque()    # batch ids waiting for send-queue room
        self.slot_token: dict[int, int] = {}
        self.failed: str | None = None
        self.failed_at = 0.0

    def _buffer(self, nbytes: int, access: int) -> RegisteredBuffer:
        buf = RegisteredBuffer(self.path.device, nbytes, access)
        self.buffers.append(buf)
        return buf

    def endpoint(self) -> EndpointInfo:
        return self.path.device.endpoint(self.qp_num, self.psn, self.requests.addr, self.requests.rkey,
                                         self.requests.nbytes, self.max_sge, self.path.generation,
                                         {"slots": self.slots, "request_slot_bytes": self.request_slot_bytes,
                                          "max_keys": self.path.max_keys})

    def response_slot(self, slot: int) -> tuple[int, int]:
        return self.client.mr_addr + slot * self.slot_bytes, self.slot_bytes

    def grow_scratch(self, slot: int, needed: int, retire_to: list) -> ScratchArea:
        import pyverbs.enums as e
        old = self.scratch[slot]
        new = RegisteredBuffer(self.path.device, max(needed, 2 * old.nbytes), e.IBV_ACCESS_LOCAL_WRITE)
        self.buffers.append(new)
        self.buffers.remove(old)
        self.scratch[slot] = new
        retire_to.append(old)
        return ScratchArea(new.array, new.lkey)

    def destroy(self) -> None:
        """Destroys the QP first: after that the NIC touches none of this connection's memory."""
        if self.qp is not None:
            try:
                self.qp.close()
            except Exception:
                log.exception("closing a queue pair failed")
            self.qp = None
        for buf in self.buffers:
            try:
                buf.close()
            except Exception:
                log.exception("deregistering a buffer failed")
        self.buffers.clear()


class RdmaShardPath:
    """Serves lookups of one store over RDMA to every client that joins through memcached.

    Two threads: `rdma-accept` (polls the client counter, sets up queue pairs, notices clients that
    left) and `rdma-poll` (polls the one CQ, answers requests, releases gather lists on completion).
    A table is acquired only while a reply is planned and posted; what keeps it alive until the
    completion is `table_drop_guard`, which DropTable must be wrapped in."""

    def __init__(self, store: Store, shard_id: str, config: RdmaPathConfig, device_name: str):
        from pyverbs.cq import CQ

        self.store, self.shard_id, self.config = store, check_name("shard id", shard_id), config
        self.generation = secrets.token_hex(8)
        self.stats_ = RdmaPathStats()
        self.device = VerbsDevice(device_name, config.port, config.gid_index)
        try:
            attr = self.device.attr
            self.max_sge = max(1, min(config.max_sge, int(attr.max_sge)))
            # Worst case one SGE per key, plus the mask.  The send queue holds twice the slots' worth:
            # a reply's completion may be polled after the client already sent the slot's next request.
            wrs_per_request = -(-(config.max_keys + 1) // self.max_sge)
            self.send_depth = min(int(attr.max_qp_wr), 2 * config.slots * wrs_per_request)
            self.max_keys = max(1, min(config.max_keys, (self.send_depth // (2 * config.slots)) * self.max_sge - 1))
            self.request_slot_bytes = REQUEST_HEADER.size + 256 + 8 * self.max_keys
            # A failing QP flushes every outstanding WR, unsignaled ones too, into the CQ.
            cqe = min(int(attr.max_cqe), config.max_clients * (self.send_depth + config.slots) + 64)
            self.cq = CQ(self.device.ctx, cqe, None, None, 0)
            self.exchange = RdmaExchange(config.memcached, config.cluster, shard_id)
            self._counter_base = self.exchange.open_shard({
                "generation": self.generation, "device": device_name, "slots": config.slots,
                "max_keys": self.max_keys, "request_slot_bytes": self.request_slot_bytes, "max_sge": self.max_sge})
        except BaseException:
            self.device.close()
            raise
        self.address = RdmaAddress(*split_memcached(config.memcached), config.cluster, shard_id)
        self._conns: dict[int, _Connection] = {}          # by QP number
        # Set up by rdma-accept and queued here *before* their endpoint is published; rdma-poll adopts
        # them after each CQ poll, so a completion always finds its connection.
        self._new: deque[_Connection] = deque()
        self._inflight: dict[int, _InFlight] = {}
        self._next_token = 1
        # table name -> (the Table object, pool base, length, MR).  The object is compared too: a table
        # dropped and re-created may be mapped at the same address, and the old MR pins the old pages.
        self._pool_mrs: dict[str, tuple[Table, int, int, Any]] = {}
        self._pool_failures: dict[str, tuple[float, str]] = {}
        self._dropped: deque[str] = deque()
        self._gone: deque[tuple[_Connection, str]] = deque()   # (connection, why): failed and closed by rdma-poll
        self._draining: set[str] = set()
        self._table_inflight: dict[str, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._accept = threading.Thread(target=self._accept_loop, name="rdma-accept", daemon=True)
        self._poll = threading.Thread(target=self._poll_loop, name="rdma-poll", daemon=True)
        self._accept.start()
        self._poll.start()
        log.info("RDMA data path serving", extra={"device": device_name, "address": str(self.address),
                                                  "max_sge": self.max_sge, "max_keys": self.max_keys,
                                                  "gid_index": self.device.gid_index,
                                                  "link_layer": self.device.link_layer})

    # -- what the server wires in
    def data_path_address(self) -> str:
        return str(self.address)

    def stats(self) -> RdmaPathStats:
        with self._lock:
            return RdmaPathStats(**vars(self.stats_))

    @contextmanager
    def table_drop_guard(self, name: str, timeout: float = 10.0):
        """Wrap DropTable in this: new RDMA lookups of the table are refused (UNAVAILABLE), the
        replies in flight complete (the NIC reads the pool until then), and afterwards the pool's MR
        is deregistered.  TimeoutError if replies are still in flight after timeout seconds."""
        with self._lock:
            self._draining.add(name)
        try:
            deadline = time.monotonic() + timeout
            while True:
                with self._lock:
                    busy = self._table_inflight.get(name, 0)
                if not busy:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{busy} RDMA replies of table {name!r} still in flight after {timeout:g}s")
                time.sleep(0.001)
            yield
        finally:
            with self._lock:
                self._draining.discard(name)
            self._dropped.append(name)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._accept.join(timeout)
        self._poll.join(timeout)
        try:
            self.exchange.close_shard()
        except ExchangeError as error:
            log.warning("could not withdraw the shard's RDMA record", extra={"error": str(error)})
        self.exchange.close()

    # -- accepting clients
    def _accept_loop(self) -> None:
        seen, checked = self._counter_base, time.monotonic()
        while not self._stop.wait(self.config.accept_interval_seconds):
            try:
                count = self.exchange.client_count()
                while seen < count and not self._stop.is_set():
                    seen += 1
                    self._admit(seen)
                if time.monotonic() - checked > self.config.client_check_interval_seconds:
                    checked = time.monotonic()
                    self._check_clients()
            except ExchangeError as error:
                log.warning("memcached unreachable; retrying", extra={"error": str(error)})
                self._stop.wait(1.0)
            except Exception:
                # A dead accept thread would leave every later client waiting for its endpoint.
                log.exception("RDMA accept loop failed; retrying")
                self._stop.wait(1.0)

    def _check_clients(self) -> None:
        """RC has no disconnect notice: a client that closed deleted its record, so its QP goes.
        (A client that crashed leaves its record; its QP stays until a reply to it fails.)"""
        with self._lock:
            conns = [c for c in self._conns.values() if not c.failed]
        for conn in conns:
            if self.exchange.get(self.exchange.client_key(conn.client_id)) is None:
                self._gone.append((conn, "the client left (its record is gone)"))

    def _admit(self, client_id: int) -> None:
        try:
            with self._lock:
                open_now = len(self._conns) + len(self._new)
            if open_now >= self.config.max_clients:
                self.exchange.publish_refusal(client_id, f"shard {self.shard_id} serves at most "
                                              f"{self.config.max_clients} RDMA clients")
                return
            info = self.exchange.wait_client(client_id, self.config.handshake_timeout_seconds, self.generation)
            conn = _Connection(self, client_id, info)
        except Exception as error:
            log.warning("RDMA client not connected", extra={"client_id": client_id, "error": str(error)})
            return
        # Queued for rdma-poll before the client can know the endpoint: it connects and sends the
        # moment the record is in memcached, and this thread may not run again until its request
        # has completed on the shard's CQ.
        with self._lock:
            self._new.append(conn)
        try:
            self.exchange.publish_qp(client_id, conn.endpoint())
        except Exception as error:
            log.warning("RDMA client not connected", extra={"client_id": client_id, "error": str(error)})
            self._gone.append((conn, f"publishing its endpoint failed: {error}"))
            return
        with self._lock:
            self.stats_.connections_total += 1
        log.info("RDMA client connected", extra={"client_id": client_id, "qp_num": conn.qp_num})

    # -- the completion loop
    def _poll_loop(self) -> None:
        idle, last_housekeeping = 0, time.monotonic()
        try:
            while not self._stop.is_set():
                polled, wcs = self.cq.poll(32)
                # After the poll: a connection whose completion was just polled was queued before
                # its endpoint was published, so before the client could send.
                self._adopt()
                for wc in wcs[:polled]:
                    self._handle(wc)
                if polled:
                    idle = 0
                    continue
                idle += 1
                if idle > 64:   # adaptive: spin briefly, then sleep up to 200 us
                    time.sleep(min(200e-6, 10e-6 * (idle - 64)))
                now = time.monotonic()
                if now - last_housekeeping > 0.1:
                    last_housekeeping = now
                    try:
                        self._housekeeping(now)
                    except Exception:
                        log.exception("RDMA housekeeping failed; the shard keeps serving")
        except Exception:
            log.exception("RDMA poll loop failed; the RDMA path stops")
        finally:
            self._shutdown()

    def _adopt(self) -> None:
        while self._new:
            with self._lock:
                conn = self._new.popleft()
                self._conns[conn.qp_num] = conn
                self.stats_.connections_open = len(self._conns)

    def _handle(self, wc) -> None:
        """One completion.  An unexpected error is logged and fails only the connection it came on
        (its client breaks instead of waiting for a reply that will never come); the others go on."""
        try:
            self._on_completion(wc)
        except Exception as error:
            conn = self._conns.get(int(wc.qp_num))
            log.exception("handling an RDMA completion failed",
                          extra={"qp_num": int(wc.qp_num), "client_id": conn.client_id if conn else None})
            if conn is not None:
                self._fail(conn, f"handling a completion failed: {type(error).__name__}: {error}")

    def _on_completion(self, wc) -> None:
        import pyverbs.enums as e
        if wc.wr_id & _RECV_TAG:
            conn = self._conns.get(int(wc.qp_num))
            if conn is None or int(wc.wr_id) != conn.recv_wr_id:
                log.debug("stale receive completion dropped", extra={"qp_num": int(wc.qp_num)})
                return   # of a destroyed QP (whose number may have been reused)
            if wc.status != e.IBV_WC_SUCCESS:
                self._fail(conn, f"receive completion status {wc.status}")
                return
            if conn.failed:
                return
            try:
                post_recvs(conn.qp, 1, conn.recv_wr_id, conn.sink.addr, conn.sink.lkey)
            except Exception as error:
                self._fail(conn, f"re-posting a receive failed: {error}")
                return
            batch_id = imm_from_wire(int(wc.imm_data)) & BATCH_ID_MASK
            if conn.deferred or conn.sq_used + conn.wrs_per_request > self.send_depth:
                conn.deferred.append(batch_id)   # served when completions free the send queue
            else:
                self._serve(conn, batch_id)
            return
        record = self._inflight.pop(int(wc.wr_id), None)
        if record is None:
            return   # an unsignaled WR flushed after its chain's record was already finished
        conn = record.conn
        self._finish(record)
        if wc.status != e.IBV_WC_SUCCESS:
            self._fail(conn, f"write completion status {wc.status} (vendor error {wc.vendor_err})")
            return
        while conn.deferred and not conn.failed and conn.sq_used + conn.wrs_per_request <= self.send_depth:
            self._serve(conn, conn.deferred.popleft())

    def _serve(self, conn: _Connection, batch_id: int) -> None:
        slot = batch_id % conn.slots
        remote_addr, capacity = conn.response_slot(slot)
        record = _InFlight(conn, None, None, posted=time.monotonic())
        scratch_buf = conn.scratch[slot]
        scratch = ScratchArea(scratch_buf.array, scratch_buf.lkey)
        start = slot * conn.request_slot_bytes
        n_keys = 0
        try:
            request = decode_request(conn.requests.array[start:start + conn.request_slot_bytes])
            n_keys = len(request.keys)
            if request.batch_id != batch_id:
                raise ProtocolViolation(INVALID_ARGUMENT, f"request slot {slot} holds batch {request.batch_id}, "
                                        f"the immediate says {batch_id}")
            if not (remote_addr <= request.remote_addr and
                    request.remote_addr + request.remote_capacity <= remote_addr + capacity):
                raise ProtocolViolation(INVALID_ARGUMENT, "the response range lies outside the client's slot")
            with self._lock:   # atomic with table_drop_guard's check: a drop never races a reply
                if request.table in self._draining:
                    raise ProtocolViolation(UNAVAILABLE, f"table {request.table!r} is being dropped")
                self._table_inflight[request.table] = self._table_inflight.get(request.table, 0) + 1
            record.table = request.table
            try:
                # The table is held only while planning: until the completion, table_drop_guard (not
                # the store) keeps a drop waiting, and can give up on a NIC that never completes.
                with self.store.acquire(request.table) as table:
                    lkey = self._pool_lkey(table)
                    try:
                        reply = plan_lookup_reply(table, request, pool_lkey=lkey, scratch=scratch,
                                                  rkey=conn.client.mr_rkey, max_sge=conn.max_sge)
                    except ScratchTooSmall as small:
                        scratch = conn.grow_scratch(slot, small.needed, record.retired)
                        with self._lock:
                            self.stats_.scratch_grown += 1
                        reply = plan_lookup_reply(table, request, pool_lkey=lkey, scratch=scratch,
                                                  rkey=conn.client.mr_rkey, max_sge=conn.max_sge)
            except TableNotFound as error:
                raise ProtocolViolation(NOT_FOUND, str(error)) from None
            record.reply = reply
            specs = reply.specs
        except Exception as error:
            code = error.code if isinstance(error, ProtocolViolation) else \
                grpc_code_for(error).value[0] if isinstance(error, StoreError) else INTERNAL
            if not isinstance(error, (ProtocolViolation, StoreError)):
                log.exception("RDMA lookup failed", extra={"client_id": conn.client_id})
            self._untrack_table(record)
            specs = [error_reply_spec(code, str(error), scratch, remote_addr, capacity, conn.client.mr_rkey, batch_id)]
            with self._lock:
                self.stats_.errors += 1
        self._post(conn, slot, record, specs, n_keys)

    def _post(self, conn: _Connection, slot: int, record: _InFlight, specs: list[WorkRequestSpec], n_keys: int):
        token = self._next_token
        self._next_token = (self._next_token + 1) % _RECV_TAG or 1
        try:
            head, wrs = to_send_wrs(specs, token)
            conn.qp.post_send(head, None)
        except Exception as error:
            self._finish(record)
            self._fail(conn, f"posting the reply failed: {error}")
            return
        record.wrs = len(wrs)
        self._inflight[token] = record
        conn.inflight += 1
        conn.sq_used += len(wrs)
        conn.slot_token[slot] = token
        with self._lock:
            s = self.stats_
            s.requests += 1
            s.keys += n_keys
            s.work_requests += len(wrs)
            s.sges += sum(len(spec.sges) for spec in specs)
            s.bytes_written += sum(spec.length for spec in specs)
            if record.reply is not None:
                s.keys_missing += record.reply.keys - record.reply.found

    def _finish(self, record: _InFlight) -> None:
        """The NIC is done with the reply: release the gather guard, the table, retired scratch."""
        if record.reply is not None:
            try:
                record.reply.release()
            except StoreError:
                pass   # the table was dropped without table_drop_guard; its guard went with it
            record.reply = None
        self._untrack_table(record)
        for buf in record.retired:
            buf.close()
        record.retired.clear()
        if record.wrs:   # counted in flight once posted
            record.conn.inflight -= 1
            record.conn.sq_used -= record.wrs
            record.wrs = 0

    def _untrack_table(self, record: _InFlight) -> None:
        if record.table is not None:
            with self._lock:
                left = self._table_inflight.get(record.table, 1) - 1
                if left:
                    self._table_inflight[record.table] = left
                else:
                    self._table_inflight.pop(record.table, None)
            record.table = None

    def _fail(self, conn: _Connection, reason: str) -> None:
        if conn.failed:
            return
        conn.failed, conn.failed_at = reason, time.monotonic()
        log.warning("RDMA connection failed", extra={"client_id": conn.client_id, "reason": reason})
        with self._lock:
            self.stats_.connections_failed += 1
        try:
            set_qp_error(conn.qp)   # outstanding WRs complete with flush errors
        except Exception:
            pass

    def _close(self, conn: _Connection) -> None:
        conn.destroy()   # no DMA after this: safe to release what is still in flight
        for token in [t for t, r in self._inflight.items() if r.conn is conn]:
            self._finish(self._inflight.pop(token))
        with self._lock:
            self._conns.pop(conn.qp_num, None)
            self.stats_.connections_open = len(self._conns)
        try:
            self.exchange.forget_client(conn.client_id)
        except ExchangeError:
            pass

    def _housekeeping(self, now: float) -> None:
        while self._gone:
            self._fail(*self._gone.popleft())
        limit = self.config.completion_timeout_seconds
        for record in list(self._inflight.values()):
            if now - record.posted > limit and not record.conn.failed:
                self._fail(record.conn, f"no write completion within {limit:g}s")
        for conn in list(self._conns.values()):
            if conn.failed and (conn.inflight <= 0 or now - conn.failed_at > 2.0):
                self._close(conn)
        while self._dropped:
            name = self._dropped.popleft()
            entry = self._pool_mrs.get(name)
            if entry is not None and self._current_table(name) is not entry[0]:
                self._forget_table(name)
        for name, entry in list(self._pool_mrs.items()):
            if self._current_table(name) is not entry[0]:
                self._forget_table(name)

    def _current_table(self, name: str) -> Table | None:
        try:
            return self.store.table(name)
        except (TableNotFound, StoreError):
            return None

    # -- pool registration (once per table)
    def _pool_lkey(self, table: Table) -> int:
        import pyverbs.enums as e
        from pyverbs.mr import MR
        base, length = table.pool_region()
        cached = self._pool_mrs.get(table.name)
        if cached and cached[0] is table and cached[1:3] == (base, length):
            return int(cached[3].lkey)
        if cached:
            self._forget_table(table.name)
        failed = self._pool_failures.get(table.name)
        if failed and time.monotonic() - failed[0] < 60:
            raise ProtocolViolation(UNAVAILABLE, failed[1])
        errors = []
        # fsdax pages cannot be pinned: then try on-demand paging
        for flags in (e.IBV_ACCESS_LOCAL_WRITE, e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_ON_DEMAND):
            try:
                mr = MR(self.device.pd, length, flags, address=base)
                break
            except Exception as error:
                errors.append(str(error))
        else:
            message = (f"table {table.name!r} cannot be served over RDMA: registering its pool "
                       f"({length} bytes) failed: {'; '.join(errors)} (PM must be devdax or DRAM-backed)")
            self._pool_failures[table.name] = (time.monotonic(), message)
            log.warning("pool registration failed", extra={"table": table.name, "error": message})
            raise ProtocolViolation(UNAVAILABLE, message)
        self._pool_mrs[table.name] = (table, base, length, mr)
        with self._lock:
            self.stats_.tables_registered = len(self._pool_mrs)
        log.info("PM pool registered", extra={"table": table.name, "bytes": length})
        return int(mr.lkey)

    def _forget_table(self, name: str) -> None:
        """Deregisters a table's pool MR.  Never while a reply reads from it: replies hold the table
        acquired until their completion, and a drop waits for that."""
        entry = self._pool_mrs.pop(name, None)
        self._pool_failures.pop(name, None)
        if entry:
            entry[3].close()
        with self._lock:
            self.stats_.tables_registered = len(self._pool_mrs)

    def _shutdown(self) -> None:
        for conn in list(self._conns.values()) + list(self._new):
            self._fail(conn, "the shard is stopping")
        deadline = time.monotonic() + 1.0
        while self._inflight and time.monotonic() < deadline:
            polled, wcs = self.cq.poll(32)
            self._adopt()
            for wc in wcs[:polled]:
                self._handle(wc)
        self._adopt()
        for conn in list(self._conns.values()):
            self._close(conn)
        for name in list(self._pool_mrs):
            self._pool_mrs.pop(name)[3].close()
        try:
            self.cq.close()
            self.device.close()
        except Exception:
            log.exception("closing the RDMA device failed")


def start_rdma_path(store: Store, shard_id: str, config: RdmaPathConfig) -> tuple[RdmaShardPath | None, DataPathChoice]:
    """The RDMA path when this machine can serve it, else (None, the fallback with its reason).
    The fallback is logged once; mode "on" raises RdmaUnavailable instead."""
    choice = choose_data_path(config.mode, config.device, config.memcached, role="shard")
    if not choice.rdma or choice.device is None:
        return None, choice
    try:
        return RdmaShardPath(store, shard_id, config, choice.device), choice
    except Exception as error:
        reason = f"opening {choice.device} failed: {error}"
        if config.mode == "on":
            raise RdmaUnavailable(f"RDMA required but unavailable: {reason}") from error
        log.warning(f"RDMA data path unavailable ({reason}); using the TCP/gRPC path", extra={"rdma_reason": reason})
        return None, DataPathChoice("fallback", choice.device, reason)


def collect_metrics(path: RdmaShardPath | None, choice: DataPathChoice | None):
    """Prometheus metric families for a shard's collector: whether RDMA is offered (with the fallback
    reason as a label) and, when it is, its counters."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    offered = GaugeMetricFamily("embps_shard_rdma_offered", "1 if the RDMA data path is offered; reason says why not",
                                labels=["device", "reason"])
    offered.add_metric([(choice.device if choice else "") or "", (choice.reason if choice else "not started")],
                       1 if path is not None else 0)
    yield offered
    if path is None:
        return
    s = path.stats()
    for name, value, help_text in (
            ("requests", s.requests, "RDMA lookup requests answered"),
            ("errors", s.errors, "RDMA lookup requests answered with an error"),
            ("keys", s.keys, "keys in RDMA lookups"),
            ("keys_missing", s.keys_missing, "keys in RDMA lookups the table does not hold"),
            ("bytes_written", s.bytes_written, "bytes RDMA-written to clients (rows and masks)"),
            ("work_requests", s.work_requests, "RDMA work requests posted"),
            ("sges", s.sges, "scatter-gather entries posted (after coalescing)"),
            ("connections", s.connections_total, "RDMA clients connected since start"),
            ("connections_failed", s.connections_failed, "RDMA connections that failed")):
        family = CounterMetricFamily(f"embps_shard_rdma_{name}", help_text)
        family.add_metric([], value)
        yield family
    gauge = GaugeMetricFamily("embps_shard_rdma_connections_open", "open RDMA client connections")
    gauge.add_metric([], s.connections_open)
    yield gauge
    gauge = GaugeMetricFamily("embps_shard_rdma_tables_registered", "PM pools registered with the NIC")
    gauge.add_metric([], s.tables_registered)
    yield gauge


def to_send_wrs(specs: list[WorkRequestSpec], wr_id: int):
    """pyverbs SendWR objects chained in order; returns (head, all WRs: keep them alive until posted)."""
    import pyverbs.enums as e
    from pyverbs.wr import SGE, SendWR

    wrs: list = []
    for spec in specs:
        if not spec.sges:
            raise ValueError("verbs cannot post a WR without SGEs (empty batches are rejected earlier)")
        opcode = e.IBV_WR_RDMA_WRITE_WITH_IMM if spec.opcode == OP_WRITE_WITH_IMM else e.IBV_WR_RDMA_WRITE
        wr = SendWR(wr_id=wr_id, opcode=opcode, num_sge=len(spec.sges),
                    imm_data=imm_to_wire(spec.imm) if spec.imm is not None else 0,
                    sg=[SGE(addr, length, key) for addr, length, key in spec.sges],
                    send_flags=e.IBV_SEND_SIGNALED if spec.signaled else 0)
        wr.set_wr_rdma(spec.rkey, spec.remote_addr)
        if wrs:
            wrs[-1].next_wr = wr
        wrs.append(wr)
    return wrs[0], wrs
