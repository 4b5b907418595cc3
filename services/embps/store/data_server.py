"""The native TCP data path (see embps_store.h): started by the PS shard beside its gRPC server."""

from __future__ import annotations

from dataclasses import dataclass

from ._native import ffi, lib
from .store import Store, check_status

LATENCY_BOUNDS_SECONDS = tuple(b / 1e6 for b in lib.embps_latency_bounds_us)


@dataclass(frozen=True)
class OpStats:
    requests: int
    errors: int
    keys: int
    latency_sum_seconds: float
    latency_buckets: tuple[int, ...]   # per bucket (not cumulative); bounds LATENCY_BOUNDS_SECONDS, then +Inf


@dataclass(frozen=True)
class DataServerStats:
    lookup: OpStats
    update: OpStats
    connections_total: int
    connections_open: int
    bytes_in: int
    bytes_out: int


def _op(c) -> OpStats:
    return OpStats(c.requests, c.errors, c.keys, c.latency_sum_ns / 1e9, tuple(c.latency_buckets))


class DataServer:
    def __init__(self, store: Store, host: str, port: int, max_batch_keys: int, max_request_bytes: int,
                 max_connections: int = 256, send_timeout_seconds: float = 30.0):
        cfg = ffi.new("embps_data_server_config *")
        host_bytes = ffi.new("char[]", host.encode())
        cfg.host, cfg.port = host_bytes, port
        cfg.max_batch_keys, cfg.max_request_bytes = max_batch_keys, max_request_bytes
        cfg.max_connections, cfg.send_timeout_ms = max_connections, int(send_timeout_seconds * 1000)
        out = ffi.new("embps_data_server **")
        check_status(lib.embps_data_server_start(store.handle, cfg, out))
        self._handle = out[0]
        self._store = store   # the server uses the store's tables: keep it alive
        self.port = lib.embps_data_server_port(self._handle)

    def stats(self) -> DataServerStats:
        s = ffi.new("embps_data_server_stats *")
        lib.embps_data_server_stats_get(self._handle, s)
        return DataServerStats(_op(s.lookup), _op(s.update), s.connections_total, s.connections_open,
                               s.bytes_in, s.bytes_out)

    def stop(self) -> None:
        if self._handle is not None:
            lib.embps_data_server_stop(self._handle)
            self._handle = None
