"""PSClient: one handle on a cluster of parameter shards.

Routes each key to its shard (by the cluster's placement file if it names one, else by jump hash),
splits a batch per shard, runs the shard calls concurrently and merges the answers back in the
caller's order as numpy arrays.  Row traffic (lookups, updates)
takes the best data path each shard offers (the native TCP path when the shard runs one and this
process has the native core, else gRPC); everything else is gRPC, which needs no native code.  Calls that are safe to repeat (all but Update) are retried while a shard
is UNAVAILABLE, within the call's deadline.  Thread-safe: share one client between threads.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import grpc
import numpy as np

from embps.api import TableSpec, as_keys, wire
from embps.api.status import grpc_code_from_number
from embps.api.wire import StaleRows
from embps.common.addresses import split_host_port
from embps.common.cluster_config import ClusterConfig
from embps.common.grpc_channels import channel_options
from embps.common.spec_messages import spec_from_message, spec_to_message
from embps.rdma.client import RdmaConnectionError, RdmaError, RdmaShardConnection, RdmaShardError
from embps.rdma.config import RdmaClientConfig
from embps.rdma.discovery import RdmaUnavailable
from embps.rdma.exchange import ExchangeError
from embps.v1 import ps_shard_pb2 as pb
from embps.v1 import ps_shard_pb2_grpc as pb_grpc

from .errors import ShardError
from .routing import Router, router_for, split_by_shard

if TYPE_CHECKING:
    from .tcp_data_path import TcpDataPath

log = logging.getLogger("embps.client")
_RETRY_FIRST_SLEEP, _RETRY_MAX_SLEEP = 0.05, 1.0
_monotonic = time.monotonic


class _Shard:
    """One shard's channel and, once chosen, its data path for row traffic."""

    def __init__(self, address: str, config: ClusterConfig):
        self.address = address
        self.channel = config.security.channel(address, channel_options(config.max_message_bytes))
        self.stub = pb_grpc.ParameterShardStub(self.channel)
        self.tcp: TcpDataPath | None = None
        self.rdma: RdmaShardConnection | None = None   # lookups only; updates take tcp or grpc
        self.path_kind: str | None = None if config.data_path != "grpc" else "grpc"
        self.config = config
        self._lock = threading.Lock()
        self._secure = config.security.enabled

    def choose_path(self, wanted: str, timeout: float) -> str:
        """Asks the shard what it offers, once."""
        with self._lock:
            if self.path_kind is None:
                stats = _grpc_call(self, lambda t: self.stub.GetShardStats(pb.GetShardStatsRequest(), timeout=t),
                                   timeout)
                self._connect_rdma(stats, wanted)
                tcp = next((p for p in stats.data_paths if p.kind == pb.DATA_PATH_KIND_TCP), None)
                if self._secure:   # the TCP path is plaintext: never with TLS or tokens
                    tcp = None
                if tcp is not None:
                    self.tcp = self._open_tcp(tcp.address, wanted, timeout)
                if self.tcp is not None:
                    self.path_kind = "tcp"
                elif wanted == "tcp":
                    raise ShardError(grpc.StatusCode.FAILED_PRECONDITION, "the shard offers no TCP data path",
                                     self.address)
                else:
                    self.path_kind = "grpc"
                log.info("data path chosen", extra={"shard": self.address, "path": self.path_kind,
                                                    "lookups": "rdma" if self.rdma else self.path_kind})
            return self.path_kind

    def _open_tcp(self, offered: str, wanted: str, timeout: float) -> TcpDataPath | None:
        """The native TCP path to the shard; None (take gRPC) when this process has no native core."""
        try:
            from .tcp_data_path import TcpDataPath
        except ImportError as error:
            if wanted == "tcp":
                raise ShardError(grpc.StatusCode.FAILED_PRECONDITION,
                                 f"the TCP data path needs the native core: {error}", self.address) from None
            log.warning("TCP data path offered but the native core is not importable here; using gRPC",
                        extra={"shard": self.address, "reason": str(error)})
            return None
        host, port = split_host_port(offered)
        return TcpDataPath(f"{host or split_host_port(self.address)[0]}:{port}", timeout)

    def _connect_rdma(self, stats: pb.ShardStats, wanted: str) -> None:
        offered = next((p for p in stats.data_paths if p.kind == pb.DATA_PATH_KIND_RDMA), None)
        if offered is None or wanted not in ("auto", "rdma") or self._secure:
            if wanted == "rdma":
                raise ShardError(grpc.StatusCode.FAILED_PRECONDITION, "the shard offers no RDMA data path",
                                 self.address)
            return
        try:
            self.rdma = RdmaShardConnection(offered.address, RdmaClientConfig.from_cluster(self.config))
        except (RdmaUnavailable, ExchangeError, RdmaError, OSError) as error:
            if wanted == "rdma":
                raise ShardError(grpc.StatusCode.FAILED_PRECONDITION, f"RDMA required: {error}", self.address) from None
            log.warning("RDMA offered but not usable here; using TCP/gRPC", extra={"shard": self.address,
                                                                                    "reason": str(error)})

    def rdma_lookup(self, table: str, keys: np.ndarray, dim: int, state_floats: int, with_state: bool,
                    timeout: float):
        """(rows, state, found) over RDMA, or None when this call must take another path."""
        if self.rdma is None:
            return None
        try:
            rows, found = self.rdma.lookup(table, keys, dim + (state_floats if with_state else 0), with_state,
                                           timeout)
        except RdmaConnectionError:
            self.rdma.close()
            self.rdma = None   # lookups are idempotent: this one, and the next, go another way
            return None
        except RdmaShardError as error:
            code = grpc_code_from_number(error.code)
            if code == grpc.StatusCode.UNAVAILABLE:
                return None
            raise ShardError(code, error.message, self.address) from None
        return rows[:, :dim], (rows[:, dim:] if with_state else None), found

    def close(self) -> None:
        if self.rdma:
            self.rdma.close()
        if self.tcp:
            self.tcp.close()
        self.channel.close()


def _grpc_call(shard: _Shard, call: Callable[[float], object], timeout: float):
    try:
        return call(timeout)
    except grpc.RpcError as error:
        raise ShardError.from_rpc_error(error, shard.address) from None


class PSClient:
    def __init__(self, config: ClusterConfig, router: Router | None = None, max_workers: int | None = None):
        self.config = config
        self.router = router or router_for(config)
        if self.router.n_shards != len(config.shards):
            raise ValueError(f"router has {self.router.n_shards} shards, the config {len(config.shards)}")
        self._shards = [_Shard(address, config) for address in config.shards]
        self._pool = ThreadPoolExecutor(max_workers or 4 * len(self._shards), thread_name_prefix="psclient")
        self._dims: dict[str, tuple[int, int]] = {}
        self._sole: TcpDataPath | None = None   # _sole_tcp() once it found one (it stays the path)

    # ---- tables (applied on every shard) ----------------------------------------------------

    def create_table(self, name: str, spec: TableSpec, if_not_exists: bool = False) -> None:
        request = pb.CreateTableRequest(name=name, spec=spec_to_message(spec), if_not_exists=if_not_exists)
        self._on_every_shard(lambda shard, t: shard.stub.CreateTable(request, timeout=t), idempotent=if_not_exists)

    def describe_table(self, name: str) -> pb.TableInfo:
        """The table as shard 0 describes it, with rows summed over all shards."""
        request = pb.DescribeTableRequest(table=name)
        infos = self._on_every_shard(lambda s, t: s.stub.DescribeTable(request, timeout=t))
        info = infos[0]
        info.rows = sum(i.rows for i in infos)
        return info

    def table_spec(self, name: str) -> TableSpec:
        return spec_from_message(self.describe_table(name).spec)

    def list_tables(self) -> list[str]:
        return sorted(t.name for t in self._call(self._shards[0], lambda s, t: s.stub.ListTables(
            pb.ListTablesRequest(), timeout=t), idempotent=True).tables)

    def drop_table(self, name: str) -> None:
        self._dims.pop(name, None)
        self._on_every_shard(lambda s, t: s.stub.DropTable(pb.DropTableRequest(table=name), timeout=t),
                             idempotent=False)

    def stats(self) -> list[pb.ShardStats]:
        return self._on_every_shard(lambda s, t: s.stub.GetShardStats(pb.GetShardStatsRequest(), timeout=t))

    def data_path_kinds(self) -> list[str]:
        """The path lookups take to each shard ("rdma", "tcp" or "grpc")."""
        return ["rdma" if shard.rdma else self._path(shard) for shard in self._shards]

    # ---- rows ------------------------------------------------------------------------------

    def lookup(self, table: str, keys, with_state: bool = False):
        """Rows of keys, (n, dim) float32; with_state: (rows, optimizer state, found mask)."""
        keys = as_keys(keys)
        if not with_state and (tcp := self._sole or self._sole_tcp()) is not None:
            return self._call(self._shards[0], _sole_lookup, True, tcp, table, keys)
        dim, state_floats = self._dim(table) if with_state else (0, 0)

        def shard_lookup(shard: _Shard, part: np.ndarray, timeout: float):
            tcp = self._tcp(shard)
            if shard.rdma is not None:
                d, s = self._dim(table)
                if (answer := shard.rdma_lookup(table, part, d, s, with_state, timeout)) is not None:
                    return answer
            if tcp is not None:
                return tcp.lookup(table, part, dim, state_floats, with_state, timeout)
            reply = shard.stub.Lookup(pb.LookupRequest(table=table, keys=part.tobytes(), with_state=with_state),
                                      timeout=timeout)
            rows = wire.rows_from_bytes(reply.rows, len(part))
            state = wire.rows_from_bytes(reply.state, len(part), "state") if with_state else None
            return rows, state, np.frombuffer(reply.found, np.bool_)

        parts = self._scatter(keys, shard_lookup, idempotent=True)
        rows = _gather(len(keys), [(pos, r[0]) for pos, r in parts])
        if not with_state:
            return rows
        return rows, _gather(len(keys), [(pos, r[1]) for pos, r in parts]), \
            _gather(len(keys), [(pos, r[2]) for pos, r in parts], np.bool_)

    def update(self, table: str, keys, grads, counts=None) -> None:
        """Applies the table's optimizer on the shards; gradients of repeated keys are summed.  Each row's
        version advances by the contributions its gradients carry: one per key given, or counts[i] (>= 1).
        Returns once every shard has made the update persistent.  Not retried (not idempotent)."""
        keys = as_keys(keys)
        grads = np.ascontiguousarray(grads, np.float32)
        if grads.ndim != 2 or len(grads) != len(keys):
            raise ValueError(f"grads must have shape ({len(keys)}, dim), got {grads.shape}")
        per_key = (grads,) if counts is None else (grads, np.ascontiguousarray(counts, wire.COUNT_DTYPE))
        if (tcp := self._sole or self._sole_tcp()) is not None:
            _check_lengths(keys, per_key)
            self._call(self._shards[0], _sole_update, False, tcp, table, keys, grads, *per_key[1:])
            return

        def shard_update(shard: _Shard, part: np.ndarray, timeout: float, rows: np.ndarray, part_counts=None):
            if (tcp := self._tcp(shard)) is not None:
                return tcp.update(table, part, rows, timeout, part_counts)
            shard.stub.Update(pb.UpdateRequest(table=table, keys=part.tobytes(), grads=rows.tobytes(),
                                               counts=b"" if part_counts is None else part_counts.tobytes()),
                              timeout=timeout)

        self._scatter(keys, shard_update, idempotent=False, per_key=per_key)

    def refresh_stale(self, table: str, keys, versions, bound: int, with_state: bool = False) -> StaleRows:
        """Of keys held at versions (uint64; wire.NO_VERSION: no copy), the rows whose owners hold them more
        than bound versions ahead, with their versions: positions gives their places in keys, ascending."""
        keys = as_keys(keys)
        versions = np.ascontiguousarray(versions, wire.VERSION_DTYPE)
        dim, state_floats = self._dim(table)

        def shard_refresh(shard: _Shard, part: np.ndarray, timeout: float, held: np.ndarray) -> StaleRows:
            if (tcp := self._tcp(shard)) is not None:
                return tcp.refresh(table, part, held, bound, dim, state_floats, with_state, timeout)
            reply = shard.stub.RefreshStale(pb.RefreshStaleRequest(table=table, keys=part.tobytes(),
                                                                   versions=held.tobytes(), bound=bound,
                                                                   with_state=with_state), timeout=timeout)
            m = len(reply.positions) // 4
            return StaleRows(wire.uints_from_bytes(reply.positions, m, wire.COUNT_DTYPE, "positions"),
                             wire.uints_from_bytes(reply.versions, m, wire.VERSION_DTYPE, "versions"),
                             wire.matrix_from_bytes(reply.rows, m, dim, "rows"),
                             wire.matrix_from_bytes(reply.state, m, state_floats, "state") if with_state else None)

        if len(keys) == 0:
            return shard_refresh(self._shards[0], keys, self.config.deadline_seconds, versions)
        parts = self._scatter(keys, shard_refresh, idempotent=True, per_key=(versions,))
        index = np.concatenate([r.positions if pos is None else pos[r.positions] for pos, r in parts]).astype(np.uint32)
        order = np.argsort(index, kind="stable")   # each shard's answer ascends: merged, the whole does
        state = np.concatenate([r.state for _, r in parts])[order] if with_state else None
        return StaleRows(index[order], np.concatenate([r.versions for _, r in parts])[order],
                         np.concatenate([r.rows for _, r in parts])[order], state)

    def assign(self, table: str, keys, rows, state=None) -> None:
        """Overwrites rows and optimizer state (zero state if not given)."""
        keys = as_keys(keys)
        per_key: tuple[np.ndarray, ...] = (np.ascontiguousarray(rows, np.float32),)
        if state is not None:
            per_key += (np.ascontiguousarray(state, np.float32),)

        def shard_assign(shard: _Shard, part: np.ndarray, timeout: float, part_rows, part_state=None):
            shard.stub.Assign(pb.AssignRequest(table=table, keys=part.tobytes(), rows=part_rows.tobytes(),
                                               state=b"" if part_state is None else part_state.tobytes()),
                              timeout=timeout)

        self._scatter(keys, shard_assign, idempotent=True, per_key=per_key)

    def delete(self, table: str, keys) -> int:
        keys = as_keys(keys)

        def shard_delete(shard: _Shard, part: np.ndarray, timeout: float):
            return shard.stub.Delete(pb.DeleteRequest(table=table, keys=part.tobytes()), timeout=timeout).deleted

        return sum(deleted for _, deleted in self._scatter(keys, shard_delete, idempotent=True))

    # ---- streams ---------------------------------------------------------------------------

    def export(self, table: str, chunk_rows: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(keys, rows, state) chunks of every row on every shard, shard after shard."""
        for shard in self._shards:
            try:
                for chunk in shard.stub.Export(pb.ExportRequest(table=table, chunk_rows=chunk_rows),
                                               timeout=self.config.deadline_seconds * 100):
                    keys = wire.keys_from_bytes(chunk.keys)
                    yield keys, wire.rows_from_bytes(chunk.rows, len(keys)), \
                        wire.rows_from_bytes(chunk.state, len(keys), "state")
            except grpc.RpcError as error:
                raise ShardError.from_rpc_error(error, shard.address) from None

    def import_rows(self, table: str, chunks: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> int:
        """Streams (keys, rows, state) chunks to the shards that own their keys (one Import stream per
        shard, bounded queues for back-pressure); returns the rows imported."""
        streams: list[queue.Queue] = [queue.Queue(maxsize=4) for _ in self._shards]

        def requests(q: queue.Queue):
            while (chunk := q.get()) is not None:
                yield chunk

        def run(shard: _Shard, q: queue.Queue) -> int:
            try:
                return shard.stub.Import(requests(q), timeout=self.config.deadline_seconds * 100).rows
            except grpc.RpcError as error:
                while q.get() is not None:   # unblock the producer
                    pass
                raise ShardError.from_rpc_error(error, shard.address) from None

        futures = [self._pool.submit(run, shard, q) for shard, q in zip(self._shards, streams)]
        try:
            for keys, rows, state in chunks:
                keys = as_keys(keys)
                owner = self.router.shard_of(keys)
                for i, q in enumerate(streams):
                    pos = np.flatnonzero(owner == i)
                    if len(pos):
                        q.put(pb.ImportRequest(table=table, keys=keys[pos].tobytes(),
                                               rows=np.ascontiguousarray(rows[pos], np.float32).tobytes(),
                                               state=np.ascontiguousarray(state[pos], np.float32).tobytes()))
        finally:
            for q in streams:
                q.put(None)
        return sum(f.result() for f in futures)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for shard in self._shards:
            shard.close()

    def __enter__(self) -> PSClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- plumbing --------------------------------------------------------------------------

    def _path(self, shard: _Shard) -> str:
        return shard.path_kind or shard.choose_path(self.config.data_path, self.config.deadline_seconds)

    def _sole_tcp(self) -> TcpDataPath | None:
        """The TCP data path when row traffic has one shard to go to and goes there by TCP (lookups too:
        no RDMA): the way with nothing to split and merge."""
        if len(self._shards) != 1:
            return None
        shard = self._shards[0]
        if shard.rdma is None and self._path(shard) == "tcp":
            self._sole = shard.tcp   # a shard's paths are chosen once, and RDMA is never added later
        return self._sole

    def _tcp(self, shard: _Shard) -> TcpDataPath | None:
        """The shard's TCP data path if row traffic takes it."""
        return shard.tcp if self._path(shard) == "tcp" else None

    def _dim(self, table: str) -> tuple[int, int]:
        if table not in self._dims:
            info = self.describe_table(table)
            self._dims[table] = (info.spec.dim, info.state_floats)
        return self._dims[table]

    def _call(self, shard: _Shard, fn: Callable, idempotent: bool, *args):
        """fn(shard, timeout, *args) within the deadline; UNAVAILABLE is retried if idempotent."""
        remaining = self.config.deadline_seconds
        deadline = _monotonic() + remaining
        sleep = _RETRY_FIRST_SLEEP
        while True:
            try:
                if remaining <= 0:
                    raise ShardError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed while retrying",
                                     shard.address)
                return fn(shard, remaining, *args)
            except grpc.RpcError as error:
                failure = ShardError.from_rpc_error(error, shard.address)
            except ShardError as error:
                failure = error
            if not (idempotent and failure.code == grpc.StatusCode.UNAVAILABLE and remaining > sleep):
                raise failure
            time.sleep(sleep)
            sleep = min(2 * sleep, _RETRY_MAX_SLEEP)
            remaining = deadline - _monotonic()

    def _on_every_shard(self, fn: Callable, idempotent: bool = True) -> list:
        if len(self._shards) == 1:
            return [self._call(self._shards[0], fn, idempotent)]
        futures = [self._pool.submit(self._call, shard, fn, idempotent) for shard in self._shards]
        return [f.result() for f in futures]

    def _scatter(self, keys: np.ndarray, fn: Callable, idempotent: bool, per_key: tuple = ()) -> list:
        """Calls fn(shard, its keys, timeout, its slices of per_key...) on each shard owning keys;
        returns [(positions in the batch or None for all, result)]."""
        _check_lengths(keys, per_key)
        if len(self._shards) == 1:
            return [(None, self._call(self._shards[0], lambda s, t: fn(s, keys, t, *per_key), idempotent))]
        order, grouped, bounds = split_by_shard(keys, self.router.shard_of(keys), len(self._shards))
        jobs = []
        for i, shard in enumerate(self._shards):
            lo, hi = bounds[i], bounds[i + 1]
            if hi > lo:
                pos = order[lo:hi]
                parts = [grouped[lo:hi]] + [values[pos] for values in per_key]
                jobs.append((pos, shard, lambda s, t, p=parts: fn(s, p[0], t, *p[1:])))
        # The last shard's call runs on this thread: one hand-off to the pool fewer per call.
        futures = [(pos, self._pool.submit(self._call, shard, call, idempotent)) for pos, shard, call in jobs[:-1]]
        last = [(pos, self._call(shard, call, idempotent)) for pos, shard, call in jobs[-1:]]
        return [(pos, future.result()) for pos, future in futures] + last


def _sole_lookup(_: _Shard, timeout: float, tcp: TcpDataPath, table: str, keys: np.ndarray) -> np.ndarray:
    return tcp.lookup_rows(table, keys, timeout)


def _sole_update(_: _Shard, timeout: float, tcp: TcpDataPath, table: str, keys: np.ndarray, grads: np.ndarray,
                 counts: np.ndarray | None = None) -> None:
    tcp.update(table, keys, grads, timeout, counts)


def _check_lengths(keys: np.ndarray, per_key: tuple) -> None:
    for values in per_key:
        if len(values) != len(keys):
            raise ValueError(f"{len(keys)} keys but {len(values)} rows")


def _gather(n: int, parts: list, dtype=np.float32) -> np.ndarray:
    """Merges per-shard answers back into batch order."""
    if len(parts) == 1 and parts[0][0] is None:
        return parts[0][1]
    width = parts[0][1].shape[1:] if parts else (0,)
    out = np.empty((n, *width), dtype)
    for pos, values in parts:
        out[pos] = values
    return out
