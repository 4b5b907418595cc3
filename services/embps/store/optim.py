"""The store's fused optimizer and initializer kernels on plain arrays (the trainer gateway's cache uses them)."""

import numpy as np

from embps.api import TableSpec, as_keys, state_floats

from ._native import ffi, lib
from .store import check_status, spec_to_c


def apply_optimizer(spec: TableSpec, rows: np.ndarray, state: np.ndarray, grads: np.ndarray) -> None:
    """In place, exactly as a table applies Update (rows float32 (n, dim), state (n, state_floats))."""
    n = len(rows)
    width = state_floats(spec.optimizer.kind, spec.dim)
    for arr, cols, what in ((rows, spec.dim, "rows"), (state, width, "state"), (grads, spec.dim, "grads")):
        if arr.dtype != np.float32 or arr.shape != (n, cols) or not arr.flags.c_contiguous:
            raise ValueError(f"{what} must be a contiguous float32 array of shape ({n}, {cols})")
    check_status(lib.embps_optimizer_apply(spec_to_c(spec), ffi.from_buffer("float[]", rows, require_writable=True),
                                           ffi.from_buffer("float[]", state, require_writable=True),
                                           ffi.from_buffer("float[]", grads), n))


def initial_rows(spec: TableSpec, keys) -> np.ndarray:
    """The rows a table returns for keys it does not hold."""
    keys = as_keys(keys)
    rows = np.empty((len(keys), spec.dim), np.float32)
    check_status(lib.embps_initializer_fill(spec_to_c(spec), ffi.from_buffer("uint64_t[]", keys), len(keys),
                                            ffi.from_buffer("float[]", rows, require_writable=True), rows.size))
    return rows
