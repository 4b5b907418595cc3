"""Client side of the native TCP data path (wire format in native/embps_data_server.h): lookups, updates
and refreshes as one request and one reply per batch on a pooled connection.  Needs the native core (PSClient
imports this module only for a shard that offers the path)."""

from __future__ import annotations

import queue
import select
import socket

import grpc
import numpy as np

from embps.api.status import grpc_code
from embps.api.wire import StaleRows
from embps.common.addresses import split_host_port
from embps.store._native import ffi, lib
from embps.store.data_server import WIRE_REPLY, WIRE_REQUEST

from .errors import ShardError

_CLOSES_CONNECTION = {lib.EMBPS_E_TOO_LARGE, lib.EMBPS_E_PROTOCOL}


def _status_name(status: int) -> str:
    return ffi.string(lib.embps_status_name(status)).decode()


class TcpDataPath:
    def __init__(self, address: str, timeout: float):
        self.address, self._target = address, split_host_port(address)
        self._timeout = timeout
        self._idle: queue.SimpleQueue[socket.socket] = queue.SimpleQueue()

    def lookup(self, table: str, keys: np.ndarray, dim: int = 0, state_floats: int = 0, with_state: bool = False,
               timeout: float | None = None):
        """(rows, state or None, found); dim 0 lets the server's dim stand (not allowed with state)."""
        flags = lib.EMBPS_WIRE_WITH_STATE if with_state else 0
        payload = self._call(lib.EMBPS_WIRE_OP_LOOKUP, flags, table, keys, dim, (), timeout)
        n = len(keys)
        if n == 0:
            return np.empty((0, dim), np.float32), np.empty((0, state_floats), np.float32) if with_state else None, \
                np.empty(0, np.bool_)
        matrix = payload[:len(payload) - n].view(np.float32).reshape(n, -1)
        found = payload[len(payload) - n:].view(np.bool_)
        if with_state:
            return matrix[:, :dim], matrix[:, dim:], found
        return matrix, None, found

    def update(self, table: str, keys: np.ndarray, grads: np.ndarray, timeout: float | None = None,
               counts: np.ndarray | None = None) -> None:
        """counts (uint32, one per key) says how many contributions each gradient carries."""
        flags, body = (0, (grads,)) if counts is None else (lib.EMBPS_WIRE_WITH_COUNTS, (grads, counts))
        self._call(lib.EMBPS_WIRE_OP_UPDATE, flags, table, keys, grads.shape[1], body, timeout)

    def refresh(self, table: str, keys: np.ndarray, versions: np.ndarray, bound: int, dim: int,
                state_floats: int = 0, with_state: bool = False, timeout: float | None = None) -> StaleRows:
        """The rows of keys more than bound versions ahead of versions (uint64, NO_VERSION: no copy)."""
        flags = lib.EMBPS_WIRE_WITH_STATE if with_state else 0
        payload = self._call(lib.EMBPS_WIRE_OP_REFRESH, flags, table, keys, dim,
                             (versions, np.array([bound], np.uint64)), timeout)
        m = int(payload[:8].view(np.uint64)[0])
        versions_end, index_end = 8 + 8 * m, 8 + 12 * m
        rows = payload[index_end:].view(np.float32).reshape(m, dim + (state_floats if with_state else 0))
        return StaleRows(payload[index_end - 4 * m:index_end].view(np.uint32), payload[8:versions_end].view(np.uint64),
                         rows[:, :dim], rows[:, dim:] if with_state else None)

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return

    def _connection(self, timeout: float) -> socket.socket:
        while True:
            try:
                sock = self._idle.get_nowait()
            except queue.Empty:
                sock = socket.create_connection(self._target, timeout=timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return sock
            if _still_open(sock):
                return sock
            sock.close()

    def _call(self, op: int, flags: int, table: str, keys: np.ndarray, dim: int, body: tuple,
              timeout: float | None) -> np.ndarray:
        name = table.encode()
        header = WIRE_REQUEST.pack(lib.EMBPS_WIRE_MAGIC, op, flags, len(name), 0, len(keys), dim)
        try:
            sock = self._connection(timeout or self._timeout)
        except OSError as error:
            raise ShardError(grpc.StatusCode.UNAVAILABLE, f"cannot connect: {error}", self.address) from None
        try:
            sock.settimeout(timeout or self._timeout)
            try:
                _send_all(sock, [header, name, keys, *body])
            except (BrokenPipeError, ConnectionResetError):
                pass   # a shard refusing the connection answers before it reads: the reply says why
            status, msg_len, payload_bytes = WIRE_REPLY.unpack(_recv_exact(sock, WIRE_REPLY.size))
            message = _recv_exact(sock, msg_len).decode(errors="replace") if msg_len else ""
            payload = np.empty(payload_bytes, np.uint8)
            _recv_into(sock, memoryview(payload))
        except socket.timeout:
            sock.close()
            raise ShardError(grpc.StatusCode.DEADLINE_EXCEEDED, "data path call timed out", self.address) from None
        except OSError as error:
            sock.close()
            raise ShardError(grpc.StatusCode.UNAVAILABLE, f"data path connection failed: {error}",
                             self.address) from None
        if status in _CLOSES_CONNECTION:
            sock.close()
        else:
            self._idle.put(sock)
        if status != lib.EMBPS_OK:
            reason = _status_name(status)
            raise ShardError(grpc_code(reason), message, self.address, reason)
        return payload


def _still_open(sock: socket.socket) -> bool:
    """A pooled connection has nothing to read between calls; readable means the shard closed it
    (its idle timeout), so it must not carry a request the shard would never see."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return not poller.poll(0)


def _send_all(sock: socket.socket, parts: list) -> None:
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    while views:
        sent = sock.sendmsg(views)
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if views and sent:
            views[0] = views[0][sent:]


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    _recv_into(sock, memoryview(buf))
    return bytes(buf)


def _recv_into(sock: socket.socket, view: memoryview) -> None:
    while len(view):
        got = sock.recv_into(view)
        if got == 0:
            raise ConnectionResetError("the shard closed the connection")
        view = view[got:]
