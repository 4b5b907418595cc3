"""Raw requests on the native TCP data path (wire format in native/embps_data_server.h), for tests that
must send what no well-behaved client would: bad bytes, stalls, half-sent requests."""

from __future__ import annotations

import socket
import urllib.request
from dataclasses import dataclass

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


@dataclass(frozen=True)
class WireRequest:
    """A request as the server reads it from a byte stream (the fields of embps_wire_request)."""

    magic: int
    op: int
    flags: int
    name: bytes
    n_keys: int
    dim: int
    keys: np.ndarray
    grads: np.ndarray | None   # n_keys x dim, for updates
    counts: np.ndarray | None = None     # n_keys uint32, for updates with counts
    versions: np.ndarray | None = None   # n_keys uint64, for refreshes
    bound: int = 0                       # a refresh's staleness bound


@dataclass(frozen=True)
class WireReply:
    status: str
    message: str
    payload: bytes


def split_requests(data: bytes) -> list[WireRequest]:
    """The whole requests in data, in order, cut where their headers say (a server answers them in
    this order; a cut-off last request is left out)."""
    requests, pos = [], 0
    while pos + WIRE_REQUEST.size <= len(data):
        magic, op, flags, name_len, _, n, dim = WIRE_REQUEST.unpack_from(data, pos)
        update, refresh = op == lib.EMBPS_WIRE_OP_UPDATE, op == lib.EMBPS_WIRE_OP_REFRESH
        grad_bytes = n * dim * 4 if update else 0
        count_bytes = n * 4 if update and flags & lib.EMBPS_WIRE_WITH_COUNTS else 0
        start = pos + WIRE_REQUEST.size
        after_keys = start + name_len + n * 8
        pos = after_keys + grad_bytes + count_bytes + (n * 8 + 8 if refresh else 0)
        if pos > len(data):
            break
        keys = np.frombuffer(data, "<u8", n, start + name_len)
        grads = np.frombuffer(data, "<f4", n * dim, after_keys).reshape(n, dim) if grad_bytes else None
        counts = np.frombuffer(data, "<u4", n, after_keys + grad_bytes) if count_bytes else None
        versions = np.frombuffer(data, "<u8", n, after_keys) if refresh else None
        bound = int(np.frombuffer(data, "<u8", 1, after_keys + n * 8)[0]) if refresh else 0
        requests.append(WireRequest(magic, op, flags, data[start:start + name_len], n, dim, keys, grads, counts,
                                    versions, bound))
    return requests


def split_replies(data: bytes, max_message: int = 1 << 16) -> tuple[list[WireReply], str]:
    """(replies, what is left: "" when data ends at a reply's end, else what is wrong with the rest)."""
    replies, pos = [], 0
    while pos + WIRE_REPLY.size <= len(data):
        status, msg_len, payload_bytes = WIRE_REPLY.unpack_from(data, pos)
        if msg_len > max_message:
            return replies, f"a reply with a {msg_len}-byte message"
        end = pos + WIRE_REPLY.size + msg_len + payload_bytes
        if end > len(data):
            return replies, f"a reply cut short ({len(data) - pos} of {end - pos} bytes)"
        message = data[pos + WIRE_REPLY.size:pos + WIRE_REPLY.size + msg_len].decode(errors="replace")
        replies.append(WireReply(ffi.string(lib.embps_status_name(status)).decode(), message,
                                 data[end - payload_bytes:end]))
        pos = end
    return replies, f"{len(data) - pos} stray bytes" if pos < len(data) else ""


def exchange(address: tuple[str, int], data: bytes, timeout: float) -> tuple[bytes, str]:
    """Sends data on a fresh connection, ends the sending side, reads until the server closes;
    returns (what it sent, how it ended: "closed", "reset" or "timeout")."""
    received = bytearray()
    with socket.create_connection(address, timeout=timeout) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass   # the server may close before taking every byte; what it sent is still readable
        while True:
            try:
                chunk = sock.recv(1 << 20)
            except socket.timeout:
                return bytes(received), "timeout"
            except OSError:
                return bytes(received), "reset"
            if not chunk:
                return bytes(received), "closed"
            received += chunk
