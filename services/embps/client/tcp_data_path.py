"""Client side of the native TCP data path (wire format in native/embps_data_server.h): lookups, updates
and refreshes as one request and one reply per batch on a pooled connection, each exchange one call into
the native core (native/embps_data_client.h), which holds no GIL meanwhile.  Needs the native core
(PSClient imports this module only for a shard that offers the path)."""

from __future__ import annotations

import queue
import socket

import grpc
import numpy as np

from embps.api.status import grpc_code
from embps.api.wire import StaleRows
from embps.common.addresses import split_host_port
from embps.store._native import ffi, lib

from .errors import ShardError

_CLOSES_CONNECTION = {lib.EMBPS_E_TOO_LARGE, lib.EMBPS_E_PROTOCOL}
_MESSAGE_BYTES = 1024   # the shard's messages are shorter (native/status.c keeps 511 bytes)
_KEYS, _BYTES = ffi.typeof("uint64_t[]"), ffi.typeof("uint8_t[]")
_from_buffer = ffi.from_buffer
_NO_BODY = [(ffi.NULL, 0)] * 2
# Looked up once: an attribute of lib or np costs a dictionary walk per call on the hot path.
_exchange, _receive = lib.embps_data_client_exchange, lib.embps_data_client_receive
_LOOKUP, _UPDATE, _WITH_COUNTS = lib.EMBPS_WIRE_OP_LOOKUP, lib.EMBPS_WIRE_OP_UPDATE, lib.EMBPS_WIRE_WITH_COUNTS
_REPLIED, _STALE = lib.EMBPS_EXCHANGE_REPLIED, lib.EMBPS_EXCHANGE_STALE
_empty, _float32, _uint8 = np.empty, np.float32, np.uint8
_NO_PAYLOAD = np.empty(0, np.uint8)   # an update's reply has none (one with some gets its own array)
_MAX_TIMEOUT_MS = 2**32 - 1
_NAMES_KEPT = 1024   # encoded table names kept per path (a caller cycling through more only re-encodes)


def _status_name(status: int) -> str:
    return ffi.string(lib.embps_status_name(status)).decode()


class _Connection:
    """A socket and the native structs its exchanges fill."""

    __slots__ = ("sock", "fd", "request", "reply", "message", "got", "pooled", "framed", "bodied")

    def __init__(self, sock: socket.socket):
        self.sock, self.fd = sock, sock.fileno()
        self.request = ffi.new("embps_exchange_request *")
        self.reply = ffi.new("embps_wire_reply *")
        self.message = ffi.new("char[]", _MESSAGE_BYTES)
        self.got = ffi.new("size_t *")
        self.pooled = 0
        # What request holds besides its keys, so that a call like the last sets only its keys: the
        # (op, flags, name's C view and length, dim) it was framed for, and whether its body parts are set.
        self.framed: tuple | None = None
        self.bodied = True


class TcpDataPath:
    def __init__(self, address: str, timeout: float):
        self.address, self._target = address, split_host_port(address)
        self._timeout = timeout
        self._idle: queue.SimpleQueue[_Connection] = queue.SimpleQueue()
        self._widths: dict[tuple[str, int], int] = {}   # (table, flags) -> floats per row, from replies
        self._names: dict[str, tuple] = {}   # table -> (its name's C view, its length), encoded once

    def lookup_rows(self, table: str, keys: np.ndarray, timeout: float) -> np.ndarray:
        """lookup's rows alone, by the shortest way (PSClient's hot path): once the row width is known,
        the payload is received into an (n + spare, width) float32 array whose spare rows take the found
        bytes, so that the rows are its first n, with no view or copy to make."""
        n = len(keys)
        width = self._widths.get((table, 0), 0)
        if not width:
            return self._rows_of(table, 0, self._call(_LOOKUP, 0, table, keys, 0, (), timeout, n), n)[0]
        rows = _empty((n + -(-n // (4 * width)), width), _float32)
        payload, size = self._exchange(_LOOKUP, 0, table, keys, 0, (), timeout, rows)
        if size == n * (4 * width + 1) and payload is rows:
            return rows[:n]
        return self._rows_of(table, 0, payload.reshape(-1).view(_uint8)[:size], n)[0]   # the width changed

    def lookup(self, table: str, keys: np.ndarray, dim: int = 0, state_floats: int = 0, with_state: bool = False,
               timeout: float | None = None):
        """(rows, state or None, found); dim 0 lets the server's dim stand (not allowed with state)."""
        flags = lib.EMBPS_WIRE_WITH_STATE if with_state else 0
        n = len(keys)
        width = self._widths.get((table, flags), dim + state_floats)
        payload = self._call(lib.EMBPS_WIRE_OP_LOOKUP, flags, table, keys, dim, (), timeout, n * (4 * width + 1))
        if n == 0:
            return np.empty((0, dim), np.float32), np.empty((0, state_floats), np.float32) if with_state else None, \
                np.empty(0, np.bool_)
        matrix, found = self._rows_of(table, flags, payload, n)
        if with_state:
            return matrix[:, :dim], matrix[:, dim:], found
        return matrix, None, found

    def _rows_of(self, table: str, flags: int, payload: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """A lookup payload's (rows, found); remembers the row width it shows."""
        if n == 0:
            return np.empty((0, self._widths.get((table, flags), 0)), np.float32), np.empty(0, np.bool_)
        matrix = payload[:len(payload) - n].view(np.float32).reshape(n, -1)
        self._widths[(table, flags)] = matrix.shape[1]
        return matrix, payload[len(payload) - n:].view(np.bool_)

    def update(self, table: str, keys: np.ndarray, grads: np.ndarray, timeout: float | None = None,
               counts: np.ndarray | None = None) -> None:
        """counts (uint32, one per key) says how many contributions each gradient carries."""
        if counts is None:
            self._exchange(_UPDATE, 0, table, keys, grads.shape[1], (grads,), timeout, _NO_PAYLOAD)
        else:
            self._exchange(_UPDATE, _WITH_COUNTS, table, keys, grads.shape[1], (grads, counts), timeout, _NO_PAYLOAD)

    def refresh(self, table: str, keys: np.ndarray, versions: np.ndarray, bound: int, dim: int,
                state_floats: int = 0, with_state: bool = False, timeout: float | None = None) -> StaleRows:
        """The rows of keys more than bound versions ahead of versions (uint64, NO_VERSION: no copy)."""
        flags = lib.EMBPS_WIRE_WITH_STATE if with_state else 0
        width = dim + (state_floats if with_state else 0)
        payload = self._call(lib.EMBPS_WIRE_OP_REFRESH, flags, table, keys, dim,
                             (versions, np.array([bound], np.uint64)), timeout, 8 + len(keys) * (12 + 4 * width))
        m = int(payload[:8].view(np.uint64)[0])
        versions_end, index_end = 8 + 8 * m, 8 + 12 * m
        rows = payload[index_end:].view(np.float32).reshape(m, width)
        return StaleRows(payload[versions_end:index_end].view(np.uint32), payload[8:versions_end].view(np.uint64),
                         rows[:, :dim], rows[:, dim:] if with_state else None)

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().sock.close()
            except queue.Empty:
                return

    def _connect(self, timeout: float) -> _Connection:
        try:
            sock = socket.create_connection(self._target, timeout=timeout)
        except OSError as error:
            raise ShardError(grpc.StatusCode.UNAVAILABLE, f"cannot connect: {error}", self.address) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Connection(sock)

    def _name(self, table: str) -> tuple:
        entry = self._names.get(table)
        if entry is None:
            name = table.encode()
            if len(name) > 255:   # the frame has a byte for its length; the shard allows far fewer
                raise ShardError(grpc.StatusCode.INVALID_ARGUMENT, f"table name of {len(name)} bytes: a table name "
                                 f"has at most 63", self.address)
            if len(self._names) >= _NAMES_KEPT:
                self._names.clear()
            entry = self._names[table] = (_from_buffer(name), len(name))   # the C view keeps name alive
        return entry

    def _call(self, op: int, flags: int, table: str, keys: np.ndarray, dim: int, body: tuple[np.ndarray, ...],
              timeout: float | None, payload_guess: int) -> np.ndarray:
        """The reply's payload, received into a guess of payload_guess bytes (see _exchange)."""
        payload, size = self._exchange(op, flags, table, keys, dim, body, timeout, _empty(payload_guess, _uint8))
        return payload[:size] if size < len(payload) else payload

    def _exchange(self, op: int, flags: int, table: str, keys: np.ndarray, dim: int, body: tuple[np.ndarray, ...],
                  timeout: float | None, out: np.ndarray) -> tuple[np.ndarray, int]:
        """(payload, its size in bytes): the payload is received into out (C-contiguous, any dtype) when it
        fits, else into a new uint8 array of its size.  body: the arrays that follow the keys (at most two,
        each C-contiguous)."""
        name_ptr, name_len = self._name(table)
        timeout = timeout or self._timeout
        timeout_ms = round(timeout * 1000)
        timeout_ms = 1 if timeout_ms < 1 else timeout_ms if timeout_ms < _MAX_TIMEOUT_MS else _MAX_TIMEOUT_MS
        keys_ptr = _from_buffer(_KEYS, keys)
        body_ptrs = [(_from_buffer(part), part.nbytes) for part in body] + _NO_BODY[len(body):] if body else None
        capacity = out.nbytes
        out_ptr = _from_buffer(_BYTES, out, True)
        framing = (op, flags, name_ptr, name_len, dim)
        while True:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                conn = self._connect(timeout)
            rq = conn.request
            if conn.framed != framing:
                rq.op, rq.flags, rq.name, rq.name_len, rq.dim = op, flags, name_ptr, name_len, dim
                conn.framed = framing
            rq.keys, rq.n_keys = keys_ptr, len(keys)
            if body_ptrs is not None:
                (rq.body[0], rq.body_bytes[0]), (rq.body[1], rq.body_bytes[1]) = body_ptrs
                conn.bodied = True
            elif conn.bodied:
                rq.body_bytes[0] = rq.body_bytes[1] = 0
                conn.bodied = False
            end = _exchange(conn.fd, rq, conn.pooled, timeout_ms, conn.reply, conn.message, _MESSAGE_BYTES,
                            out_ptr, capacity, conn.got)
            if end != _STALE:
                break
            conn.sock.close()
        reply = conn.reply
        if end == _REPLIED:
            size = reply.payload_bytes
            if size > capacity:   # a width not yet known: the rest of the payload is still to come
                got, early = conn.got[0], out.reshape(-1).view(_uint8)
                out = _empty(size, _uint8)
                out[:got] = early[:got]
                end = _receive(conn.fd, _from_buffer(_BYTES, out[got:], True), size - got, timeout_ms)
        if end != _REPLIED:
            conn.sock.close()
            code = grpc.StatusCode.DEADLINE_EXCEEDED if end == lib.EMBPS_EXCHANGE_TIMED_OUT \
                else grpc.StatusCode.UNAVAILABLE
            raise ShardError(code, ffi.string(lib.embps_errormsg()).decode(errors="replace"), self.address)
        status = reply.status
        if status:
            return self._failed(conn, status)
        conn.pooled = 1
        self._idle.put(conn)
        return out, size

    def _failed(self, conn: _Connection, status: int):
        """Raises the ShardError of a reply's status; a connection the shard closes is not pooled again."""
        if status in _CLOSES_CONNECTION:
            conn.sock.close()
        else:
            conn.pooled = 1
            self._idle.put(conn)
        reason = _status_name(status)
        message = ffi.string(conn.message, conn.reply.msg_len).decode(errors="replace")
        raise ShardError(grpc_code(reason), message, self.address, reason)
