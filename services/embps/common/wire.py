"""Keys and rows on the wire: little-endian uint64 keys and float32 rows in `bytes`, row after row."""

import numpy as np

from embps.store.errors import InvalidArgument

KEY_DTYPE = np.dtype("<u8")
FLOAT_DTYPE = np.dtype("<f4")


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


def keys_to_bytes(keys: np.ndarray) -> bytes:
    return np.ascontiguousarray(keys, KEY_DTYPE).tobytes()


def floats_to_bytes(values: np.ndarray) -> bytes:
    return np.ascontiguousarray(values, FLOAT_DTYPE).tobytes()
