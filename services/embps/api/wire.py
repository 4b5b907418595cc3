"""Keys and rows as numpy arrays and on the wire: little-endian uint64 keys and float32 rows in
`bytes`, row after row; uint64 row versions and uint32 contribution counts the same way."""

from typing import NamedTuple

import numpy as np

from .errors import InvalidArgument

KEY_DTYPE = np.dtype("<u8")
FLOAT_DTYPE = np.dtype("<f4")
VERSION_DTYPE = np.dtype("<u8")   # a row's version clock: the gradient contributions applied to it
COUNT_DTYPE = np.dtype("<u4")     # contributions a gradient carries; positions in a request
NO_VERSION = 2**64 - 1            # a refresh's "I hold no copy": the row comes back whatever its version


class StaleRows(NamedTuple):
    """What a refresh of mirrors answers: the positions in the request of the rows more than the bound
    ahead, their versions, rows and (if asked for) optimizer state."""

    positions: np.ndarray  # uint32
    versions: np.ndarray   # uint64
    rows: np.ndarray       # float32 (m, dim)
    state: np.ndarray | None


def as_keys(keys) -> np.ndarray:
    """Keys as a contiguous uint64 vector; signed 64-bit ids keep their bits."""
    if type(keys) is np.ndarray and keys.dtype == np.uint64 and keys.ndim == 1 and keys.flags.c_contiguous:
        return keys   # the hot path of services passing decoded wire bytes
    arr = np.asarray(keys)
    if arr.ndim != 1:
        raise InvalidArgument(f"keys must be one-dimensional, got shape {arr.shape}")
    if arr.dtype == np.int64:
        arr = arr.view(np.uint64)
    elif arr.dtype != np.uint64:
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise InvalidArgument(f"keys must be integers, got {arr.dtype}")
        if arr.size and np.issubdtype(arr.dtype, np.signedinteger) and arr.min() < 0:
            arr = arr.astype(np.int64).view(np.uint64)
        arr = arr.astype(np.uint64)
    return np.ascontiguousarray(arr)


def keys_from_bytes(data: bytes) -> np.ndarray:
    if len(data) % KEY_DTYPE.itemsize:
        raise InvalidArgument(f"keys must be 8-byte little-endian integers; got {len(data)} bytes, "
                              f"not a multiple of 8")
    return np.frombuffer(data, KEY_DTYPE)


def matrix_from_bytes(data: bytes, n: int, width: int, what: str) -> np.ndarray:
    """An (n, width) float32 matrix; `what` names it in the error."""
    if len(data) != n * width * FLOAT_DTYPE.itemsize:
        raise InvalidArgument(f"{what} must hold {n} x {width} float32 ({n * width * 4} bytes) for {n} keys, "
                              f"got {len(data)} bytes")
    return np.frombuffer(data, FLOAT_DTYPE).reshape(n, width)


def rows_from_bytes(data: bytes, n: int, what: str = "rows") -> np.ndarray:
    """An (n, width) float32 matrix whose width the byte count implies."""
    if n == 0:
        return np.empty((0, 0), FLOAT_DTYPE)
    if len(data) % (n * FLOAT_DTYPE.itemsize):
        raise InvalidArgument(f"{what}: {len(data)} bytes do not divide into {n} float32 rows")
    return np.frombuffer(data, FLOAT_DTYPE).reshape(n, -1)


def uints_from_bytes(data: bytes, n: int, dtype: np.dtype, what: str) -> np.ndarray:
    """n little-endian unsigned integers of dtype (VERSION_DTYPE, COUNT_DTYPE); `what` names them in the error."""
    if len(data) != n * dtype.itemsize:
        raise InvalidArgument(f"{what} must hold {n} x {dtype.itemsize}-byte integers ({n * dtype.itemsize} bytes) "
                              f"for {n} keys, got {len(data)} bytes")
    return np.frombuffer(data, dtype)
