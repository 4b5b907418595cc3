"""The native TCP data path (see native/embps_data_server.h): started by the PS shard beside its gRPC
server; its wire structs as the client packs them."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ._native import ffi, lib
from .store import Store, check_status

# The wire structs of embps_data_server.h, field by field (little-endian, no padding).
WIRE_REQUEST = struct.Struct("<IBBBBII")
WIRE_REQUEST_FIELDS = ("magic", "op", "flags", "name_len", "reserved", "n_keys", "dim")
WIRE_REPLY = struct.Struct("<IIQ")
WIRE_REPLY_FIELDS = ("status", "msg_len", "payload_bytes")


def check_wire_layout(ctype: str, packer: struct.Struct, fields: tuple[str, ...]) -> None:
    """What Python packs must be what C reads: the same fields at the same offsets and sizes."""
    codes = packer.format.lstrip("<")
    packed = [(name, struct.calcsize("<" + codes[:i]), struct.calcsize("<" + code))
              for i, (name, code) in enumerate(zip(fields, codes))]
    native = [(name, field.offset, ffi.sizeof(field.type)) for name, field in ffi.typeof(ctype).fields]
    if packed != native or len(codes) != len(fields) or packer.size != ffi.sizeof(ctype):
        raise ImportError(f"{ctype} is {native} ({ffi.sizeof(ctype)} bytes) in the native core, but Python packs "
                          f"{packed} ({packer.size} bytes)")


check_wire_layout("embps_wire_request", WIRE_REQUEST, WIRE_REQUEST_FIELDS)
check_wire_layout("embps_wire_reply", WIRE_REPLY, WIRE_REPLY_FIELDS)

LATENCY_BOUNDS_SECONDS = tuple(b / 1e6 for b in lib.embps_data_server_latency_bounds_us)


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
    refresh: OpStats
    connections_total: int
    connections_open: int
    connections_refused: int     # beyond max_connections
    connections_timed_out: int   # idle, or a request or reply past its timeout
    bytes_in: int
    bytes_out: int


def _op(c) -> OpStats:
    return OpStats(c.requests, c.errors, c.keys, c.latency_sum_ns / 1e9, tuple(c.latency_buckets))


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


class DataServer:
    def __init__(self, store: Store, host: str, port: int, max_batch_keys: int, max_request_bytes: int,
                 max_connections: int = 256, send_timeout_seconds: float = 30.0,
                 receive_timeout_seconds: float = 30.0, idle_timeout_seconds: float = 300.0):
        """The timeouts bound every wait on a client (see embps_data_server_config)."""
        cfg = ffi.new("embps_data_server_config *")
        host_bytes = ffi.new("char[]", host.encode())
        cfg.host, cfg.port = host_bytes, port
        cfg.max_batch_keys, cfg.max_request_bytes, cfg.max_connections = max_batch_keys, max_request_bytes, \
            max_connections
        cfg.send_timeout_ms, cfg.receive_timeout_ms, cfg.idle_timeout_ms = \
            _ms(send_timeout_seconds), _ms(receive_timeout_seconds), _ms(idle_timeout_seconds)
        out = ffi.new("embps_data_server **")
        check_status(lib.embps_data_server_start(store.handle, cfg, out))
        self._handle = out[0]
        self._store = store   # the server uses the store's tables: keep it alive
        self.port = lib.embps_data_server_port(self._handle)

    def stats(self) -> DataServerStats:
        s = ffi.new("embps_data_server_stats *")
        lib.embps_data_server_stats_get(self._handle, s)
        return DataServerStats(_op(s.lookup), _op(s.update), _op(s.refresh), s.connections_total, s.connections_open,
                               s.connections_refused, s.connections_timed_out, s.bytes_in, s.bytes_out)

    def stop(self) -> None:
        if self._handle is not None:
            lib.embps_data_server_stop(self._handle)
            self._handle = None
