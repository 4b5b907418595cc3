"""The request and error records that travel over an RDMA queue pair, and the immediate data.

The client RDMA-WRITEs a request (table, keys, where to put the rows) into its request slot in the
shard's registered request buffer, with immediate data = batch id.  The shard answers by
RDMA-WRITEing the rows straight from the PM pool into the client's response slot (rows, then one
found byte per key); the last work request is WRITE_WITH_IMM carrying the batch id, so the client's
receive completion means every byte has landed (the IB ordering rule, unlike PetPS's sentinel
word).  Errors come back the same way with the top bit of the immediate set and an error record in
the response slot.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

import numpy as np

_WIRE_VERSION = 1
_U32 = (1 << 32) - 1

_REQUEST_MAGIC, _ERROR_MAGIC = b"EPRQ", b"EPER"
# magic, version, flags, batch id, keys, floats per row expected, response address, its capacity, name length
REQUEST_HEADER = struct.Struct("<4sHHIIIQQH2x")   # 40 bytes: keys stay 8-byte aligned
_ERROR_HEADER = struct.Struct("<4sHHI")        # magic, version, status code, message length
_FLAG_WITH_STATE = 1
IMM_ERROR = 1 << 31
BATCH_ID_MASK = IMM_ERROR - 1

# Status codes (the numbers of grpc.StatusCode, so clients map them 1:1).
OK, INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, FAILED_PRECONDITION, INTERNAL, UNAVAILABLE = 0, 3, 5, 8, 9, 13, 14
STATUS_NAMES = {OK: "OK", INVALID_ARGUMENT: "INVALID_ARGUMENT", NOT_FOUND: "NOT_FOUND",
                RESOURCE_EXHAUSTED: "RESOURCE_EXHAUSTED", FAILED_PRECONDITION: "FAILED_PRECONDITION",
                INTERNAL: "INTERNAL", UNAVAILABLE: "UNAVAILABLE"}


class ProtocolViolation(ValueError):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class LookupRequest:
    batch_id: int
    table: str
    keys: np.ndarray      # uint64
    width: int            # floats per row the client expects (dim, + state floats when with_state)
    with_state: bool
    remote_addr: int
    remote_capacity: int


def reply_bytes(n: int, width: int) -> int:
    """Rows (n x width float32) followed by one found byte per key."""
    return n * (width * 4 + 1)


def request_bytes(n: int, table: str) -> int:
    return REQUEST_HEADER.size + _pad8(len(table.encode())) + 8 * n


def _pad8(n: int) -> int:
    return (n + 7) & ~7


def encode_request(buf, batch_id: int, table: str, keys, width: int, with_state: bool, remote_addr: int,
                   remote_capacity: int) -> int:
    """Writes a lookup request into buf (a writable buffer); returns its length."""
    name = table.encode()
    if not 0 < len(name) < 1 << 16:
        raise ValueError("table name must be 1..65535 bytes")
    keys = np.ascontiguousarray(keys, dtype=np.uint64)
    total = request_bytes(len(keys), table)
    view = memoryview(buf).cast("B")
    if total > len(view):
        raise ValueError(f"request of {len(keys)} keys needs {total} bytes, the slot holds {len(view)}")
    REQUEST_HEADER.pack_into(view, 0, _REQUEST_MAGIC, _WIRE_VERSION, _FLAG_WITH_STATE if with_state else 0,
                             batch_id & BATCH_ID_MASK, len(keys), width, remote_addr, remote_capacity, len(name))
    off = REQUEST_HEADER.size
    view[off:off + len(name)] = name
    off += _pad8(len(name))
    view[off:off + 8 * len(keys)] = keys.view(np.uint8)
    return total


def decode_request(buf, length: int | None = None) -> LookupRequest:
    """Parses a request; ProtocolViolation(INVALID_ARGUMENT) when malformed.  Keys are copied."""
    view = memoryview(buf).cast("B")
    if length is not None:
        view = view[:length]
    if len(view) < REQUEST_HEADER.size:
        raise ProtocolViolation(INVALID_ARGUMENT, f"request of {len(view)} bytes is shorter than its header")
    magic, version, flags, batch_id, n, width, raddr, rcap, name_len = REQUEST_HEADER.unpack_from(view, 0)
    if magic != _REQUEST_MAGIC or version != _WIRE_VERSION:
        raise ProtocolViolation(INVALID_ARGUMENT, f"bad request magic {magic!r} or version {version}")
    off = REQUEST_HEADER.size
    end = off + _pad8(name_len) + 8 * n
    if name_len == 0 or end > len(view):
        raise ProtocolViolation(INVALID_ARGUMENT, f"request claims {n} keys and a {name_len}-byte name, "
                                f"which do not fit its {len(view)} bytes")
    try:
        table = bytes(view[off:off + name_len]).decode()
    except UnicodeDecodeError:
        raise ProtocolViolation(INVALID_ARGUMENT, "table name is not UTF-8") from None
    off += _pad8(name_len)
    keys = np.frombuffer(view, np.uint64, n, off).copy()
    return LookupRequest(batch_id, table, keys, width, bool(flags & _FLAG_WITH_STATE), raddr, rcap)


def encode_error(code: int, message: str, capacity: int) -> bytes:
    """An error record, truncated to capacity bytes (at least the header is kept when it fits)."""
    text = message.encode(errors="replace")[:max(0, capacity - _ERROR_HEADER.size)]
    return _ERROR_HEADER.pack(_ERROR_MAGIC, _WIRE_VERSION, code, len(text)) + text


def decode_error(buf) -> tuple[int, str]:
    view = memoryview(buf).cast("B")
    if len(view) < _ERROR_HEADER.size:
        return INTERNAL, "error reply truncated (response slot too small for its header)"
    magic, version, code, length = _ERROR_HEADER.unpack_from(view, 0)
    if magic != _ERROR_MAGIC or version != _WIRE_VERSION:
        return INTERNAL, f"malformed error reply (magic {magic!r}, version {version})"
    text = bytes(view[_ERROR_HEADER.size:_ERROR_HEADER.size + length]).decode(errors="replace")
    return code, text


def imm_to_wire(value: int) -> int:
    """Immediate data travel in network byte order; pyverbs passes the raw 32-bit field."""
    return socket.htonl(value & _U32)


def imm_from_wire(value: int) -> int:
    return socket.ntohl(value & _U32)
