"""ParameterShard over one store: decodes requests and calls the native store (each call's failure
becomes its gRPC status in call_outcome)."""

from __future__ import annotations

import functools
import logging
import threading
from contextlib import nullcontext

import numpy as np

from embps.api import (BatchTooLarge, CapacityExhausted, InvalidArgument, StoreError, TableExists, TableSpec,
                       state_floats, wire)
from embps.common.spec_messages import spec_from_message, spec_to_message
from embps.store import Store, Table
from embps.v1 import ps_shard_pb2 as pb
from embps.v1 import ps_shard_pb2_grpc as pb_grpc

from .call_outcome import CallOutcome
from .metrics import ShardMetrics

log = logging.getLogger("embps.ps_shard")
_FRAMING_BYTES = 32   # a reply's protobuf tags and lengths, beyond its keys, rows and state


def _rpc(method):
    """A unary call, counted, its failure turned into its gRPC status; the shard keeps serving."""
    name = method.__name__

    @functools.wraps(method)
    def handler(self, request, context):
        with CallOutcome(self.metrics, name, context) as call:
            call.count = len(getattr(request, "keys", b"")) // 8
            return method(self, request, context)

    return handler


def _export_row_bytes(dim: int, state: int) -> int:
    """Bytes of one row in an Export chunk: key, row, optimizer state."""
    return 8 + 4 * (dim + state)


def _table_info(name: str, table: Table) -> pb.TableInfo:
    stats = table.stats()
    return pb.TableInfo(name=name, spec=spec_to_message(table.spec), rows=stats.rows,
                        state_floats=stats.state_floats, file_bytes=stats.file_bytes,
                        recovery_seconds=stats.recovery_seconds)


class ParameterShardServicer(pb_grpc.ParameterShardServicer):
    def __init__(self, store: Store, metrics: ShardMetrics, max_batch_keys: int, max_message_bytes: int,
                 max_tables: int, stats_extra=None, drop_guard=None):
        self.store, self.metrics = store, metrics
        self._drop_guard = drop_guard or (lambda name: nullcontext())   # RDMA: no NIC still reading the table
        self.max_batch_keys, self.max_message_bytes, self.max_tables = max_batch_keys, max_message_bytes, max_tables
        self._creating = threading.Lock()   # the table count is checked and grown at once
        self._stats_extra = stats_extra   # fills data paths and data-path counters into ShardStats

    def _keys(self, data: bytes) -> np.ndarray:
        keys = wire.keys_from_bytes(data)
        if len(keys) > self.max_batch_keys:
            raise BatchTooLarge(f"batch of {len(keys)} keys exceeds the shard's limit of {self.max_batch_keys}")
        return keys

    def _check_reply_fits(self, table: Table, keys: np.ndarray, with_state: bool) -> None:
        """Refuses a lookup whose reply would exceed max_message_bytes, before building it."""
        row_bytes = 4 * (table.dim + (table.state_floats if with_state else 0)) + 1   # row, state, found
        if len(keys) * row_bytes + _FRAMING_BYTES > self.max_message_bytes:
            fit = (self.max_message_bytes - _FRAMING_BYTES) // row_bytes
            raise BatchTooLarge(f"a lookup of {len(keys)} keys of table '{table.name}' would reply with "
                                f"{len(keys) * row_bytes} bytes, above the shard's max_message_bytes of "
                                f"{self.max_message_bytes}; ask for at most {fit} keys per call")

    def _check_new_table(self, name: str, spec: TableSpec) -> None:
        """A table must fit the shard's count, and each of its rows a message (or Export could not send it)."""
        message_bytes = _export_row_bytes(spec.dim, state_floats(spec.optimizer.kind, spec.dim)) + _FRAMING_BYTES
        if message_bytes > self.max_message_bytes:
            raise InvalidArgument(f"a row of dim {spec.dim} with its optimizer state needs a message of "
                                  f"{message_bytes} bytes, more than the shard's max_message_bytes of "
                                  f"{self.max_message_bytes}")
        tables = self.store.tables()
        if len(tables) >= self.max_tables and name not in tables:
            raise CapacityExhausted(f"the shard holds {len(tables)} tables, its limit (max_tables)")

    # ---- tables ---------------------------------------------------------------------------

    @_rpc
    def CreateTable(self, request, context):
        spec = spec_from_message(request.spec)
        with self._creating:   # the table count is checked and grown at once
            self._check_new_table(request.name, spec)
            with self.store.create_acquired(request.name, spec, exist_ok=request.if_not_exists) as (table, created):
                if created:
                    log.info("table created", extra={"table": request.name, "dim": spec.dim,
                                                     "capacity": spec.capacity})
                elif table.spec != spec:
                    raise TableExists(f"table '{request.name}' exists with a different spec: {table.spec}")
                return _table_info(request.name, table)

    @_rpc
    def DescribeTable(self, request, context):
        with self.store.acquire(request.table) as table:
            return _table_info(request.table, table)

    def _table_infos(self) -> list[pb.TableInfo]:
        infos = []
        for name in self.store.tables():
            try:
                with self.store.acquire(name) as table:
                    infos.append(_table_info(name, table))
            except StoreError:
                pass   # dropped meanwhile
        return infos

    @_rpc
    def ListTables(self, request, context):
        return pb.ListTablesResponse(tables=self._table_infos())

    @_rpc
    def DropTable(self, request, context):
        with self._drop_guard(request.table):
            self.store.drop_table(request.table)
        log.info("table dropped", extra={"table": request.table})
        return pb.DropTableResponse()

    # ---- rows -----------------------------------------------------------------------------

    @_rpc
    def Lookup(self, request, context):
        keys = self._keys(request.keys)
        with self.store.acquire(request.table) as table:
            self._check_reply_fits(table, keys, request.with_state)
            if request.with_state:
                rows, state, found = table.lookup_with_state(keys)
                return pb.LookupResponse(rows=rows.tobytes(), state=state.tobytes(), found=found.tobytes())
            found = np.empty(len(keys), np.bool_)
            rows = table.lookup(keys, found=found)
            return pb.LookupResponse(rows=rows.tobytes(), found=found.tobytes())

    @_rpc
    def Update(self, request, context):
        keys = self._keys(request.keys)
        counts = wire.uints_from_bytes(request.counts, len(keys), wire.COUNT_DTYPE, "counts") \
            if request.counts else None
        with self.store.acquire(request.table) as table:
            table.update(keys, wire.matrix_from_bytes(request.grads, len(keys), table.dim, "grads"), counts)
        return pb.UpdateResponse()

    @_rpc
    def RefreshStale(self, request, context):
        keys = self._keys(request.keys)
        versions = wire.uints_from_bytes(request.versions, len(keys), wire.VERSION_DTYPE, "versions")
        with self.store.acquire(request.table) as table:
            self._check_reply_fits(table, keys, request.with_state)   # as if every row were stale
            stale = table.lookup_stale(keys, versions, request.bound, request.with_state)
        return pb.RefreshStaleResponse(positions=stale.positions.tobytes(), versions=stale.versions.tobytes(),
                                       rows=stale.rows.tobytes(),
                                       state=b"" if stale.state is None else stale.state.tobytes())

    @_rpc
    def Assign(self, request, context):
        keys = self._keys(request.keys)
        with self.store.acquire(request.table) as table:
            self._assign(table, keys, request.rows, request.state)
        return pb.AssignResponse()

    @staticmethod
    def _assign(table: Table, keys: np.ndarray, rows: bytes, state: bytes) -> None:
        table.assign(keys, wire.matrix_from_bytes(rows, len(keys), table.dim, "rows"),
                     wire.matrix_from_bytes(state, len(keys), table.state_floats, "state") if state else None)

    @_rpc
    def Delete(self, request, context):
        keys = self._keys(request.keys)
        with self.store.acquire(request.table) as table:
            return pb.DeleteResponse(deleted=table.delete(keys))

    # ---- streams --------------------------------------------------------------------------

    def Export(self, request, context):
        """Holds the table (a drop waits) until the stream ends: at the latest when its client has taken
        no chunk for stream_send_timeout_seconds (embps.common.grpc_service cuts it)."""
        with CallOutcome(self.metrics, "Export", context) as call, self.store.acquire(request.table) as table:
            fit = max(1, (self.max_message_bytes // 2) // _export_row_bytes(table.dim, table.state_floats))
            chunk_rows = min(request.chunk_rows or fit, fit)
            for keys, values, state in table.export(chunk_rows):   # whole buckets: it may return more
                for part in (slice(lo, lo + chunk_rows) for lo in range(0, len(keys), chunk_rows)):
                    call.count += len(keys[part])
                    yield pb.ExportResponse(keys=keys[part].tobytes(), rows=values[part].tobytes(),
                                            state=state[part].tobytes())

    def Import(self, request_iterator, context):
        """Assigns each chunk as it arrives; a failed import may be retried (assign is idempotent)."""
        with CallOutcome(self.metrics, "Import", context, " (after {count} rows were imported)") as call:
            name = None
            for chunk in request_iterator:
                name = chunk.table or name
                if not name:
                    raise InvalidArgument("the first chunk of an import must name its table")
                keys = self._keys(chunk.keys)
                with self.store.acquire(name) as table:
                    self._assign(table, keys, chunk.rows, chunk.state)
                call.count += len(keys)
            return pb.ImportResponse(rows=call.count)

    @_rpc
    def GetShardStats(self, request, context):
        response = pb.ShardStats(max_batch_keys=self.max_batch_keys, max_message_bytes=self.max_message_bytes,
                                 tables=self._table_infos(), unopenable_tables=self.store.unopenable)
        if self._stats_extra:
            self._stats_extra(response)
        return response
