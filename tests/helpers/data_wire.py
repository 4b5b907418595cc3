"""Raw requests on the native TCP data path (wire format in native/embps_data_server.h), for tests that
must send what no well-behaved client would: bad bytes, stalls, half-sent requests."""

from __future__ import annotations

import socket
import urllib.request

import numpy as np

from embps.common.addresses import split_host_port
from embps.store._native import ffi, lib
from embps.store.data_server import WIRE_REPLY, WIRE_REQUEST


def tcp_address(shard) -> tuple[str, int]:
    host, port = split_host_port(shard.addresses["tcp"])
    return host or "127.0.0.1", int(port)


def header(op=lib.EMBPS_WIRE_OP_LOOKUP, name=b"guarded", n=1, dim=8, magic=lib.EMBPS_WIRE_MAGIC, flags=0) -> bytes:
    """A request's header and table name; its keys (and gradients) follow."""
    return WIRE_REQUEST.pack(magic, op, flags, len(name), 0, n, dim) + name


def keys_bytes(*keys) -> bytes:
    return np.array(keys, np.uint64).tobytes()


def read_reply(sock: socket.socket) -> tuple[str, str, bytes]:
    """(status name, message, payload) of one reply."""
    status, msg_len, payload_bytes = WIRE_REPLY.unpack(sock.recv(WIRE_REPLY.size, socket.MSG_WAITALL))
    message = sock.recv(msg_len, socket.MSG_WAITALL).decode() if msg_len else ""
    payload = sock.recv(payload_bytes, socket.MSG_WAITALL) if payload_bytes else b""
    return ffi.string(lib.embps_status_name(status)).decode(), message, payload


def shard_metric(shard, sample: str) -> float:
    """One sample of the shard's metrics endpoint, e.g. 'embps_shard_data_connections'."""
    with urllib.request.urlopen(f"http://{shard.addresses['metrics']}/metrics", timeout=10) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(sample + " "):
                return float(line.split()[-1])
    raise AssertionError(f"no {sample} in the shard's metrics")


def data_connections_open(shard) -> int:
    return int(shard_metric(shard, "embps_shard_data_connections"))
