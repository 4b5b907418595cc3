"""Writes the fuzzers' seed corpus (native/fuzz/corpus/<harness>/): valid data-path requests of each
operation, and small table files made by the store itself.  Run by `make fuzz-corpus`."""

from __future__ import annotations

import shutil
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np

from embps.store.data_server import WIRE_REQUEST
from embps.api import InitializerSpec, OptimizerSpec, TableSpec
from embps.store.store import Store, lib

CORPUS = Path(__file__).resolve().parent / "corpus"
TABLE_NAME = "fz"   # fuzz_table_file.c opens its input as this table


def request(op: int, name: str, keys: list[int], dim: int, flags: int = 0, grads: list[float] | None = None,
            tail: bytes = b"") -> bytes:
    """One frame as a client sends it (embps_data_server.h), against fuzz_wire_request.c's tables; tail
    is what follows the keys and gradients (an update's counts, a refresh's versions and bound)."""
    frame = WIRE_REQUEST.pack(lib.EMBPS_WIRE_MAGIC, op, flags, len(name), 0, len(keys), dim)
    frame += name.encode() + struct.pack(f"<{len(keys)}Q", *keys)
    return (frame + struct.pack(f"<{len(grads)}f", *grads) if grads is not None else frame) + tail


def wire_requests() -> dict[str, bytes]:
    lookup, update, refresh = lib.EMBPS_WIRE_OP_LOOKUP, lib.EMBPS_WIRE_OP_UPDATE, lib.EMBPS_WIRE_OP_REFRESH
    return {
        "lookup": request(lookup, "t", [1, 2, 3], 4),
        "lookup_any_dim_with_state": request(lookup, "a", [5, 6], 0, flags=lib.EMBPS_WIRE_WITH_STATE),
        "update": request(update, "t", [1, 2], 4, grads=[0.5] * 8),
        "update_repeated_keys": request(update, "a", [9, 9, 10], 3, grads=[0.25] * 9),
        "stream": (request(update, "t", [7], 4, grads=[1.0, -1.0, 2.0, 0.0]) + request(lookup, "t", [7, 8], 4)
                   + request(lookup, "nope", [1], 4) + request(lookup, "a", [9], 3)),
        "too_many_keys": request(lookup, "t", list(range(300)), 4),
        "update_counted": request(update, "t", [1, 2], 4, flags=lib.EMBPS_WIRE_WITH_COUNTS, grads=[0.5] * 8,
                                  tail=struct.pack("<2I", 3, 1)),
        "refresh": request(refresh, "t", [1, 2, 3], 4, tail=struct.pack("<4Q", 0, 1, 2**64 - 1, 0)),
        "refresh_with_state": request(refresh, "a", [9, 10], 0, flags=lib.EMBPS_WIRE_WITH_STATE,
                                      tail=struct.pack("<3Q", 0, 0, 1)),
    }


def table_file(spec: TableSpec, keys: list[int]) -> bytes:
    """A table file the store wrote, without its trailing zeros (the fuzzer restores them)."""
    tmp = Path(tempfile.mkdtemp(prefix="embps-corpus-"))
    try:
        with Store(tmp) as store:
            table = store.create_table(TABLE_NAME, spec)
            if keys:
                table.update(np.array(keys, dtype=np.uint64), np.full((len(keys), spec.dim), 0.5, np.float32))
        return (tmp / f"{TABLE_NAME}.table").read_bytes().rstrip(b"\0")
    finally:
        shutil.rmtree(tmp)


def table_files() -> dict[str, bytes]:
    sgd = OptimizerSpec(kind="sgd", lr=0.1)
    return {
        "empty": table_file(TableSpec(dim=2, capacity=16, optimizer=sgd), []),
        "sgd_rows": table_file(TableSpec(dim=2, capacity=16, optimizer=sgd), [1, 2, 3, 1 << 40]),
        "adam_rows": table_file(TableSpec(dim=2, capacity=16, optimizer=OptimizerSpec(kind="adam"),
                                          initializer=InitializerSpec(kind="normal", seed=3),
                                          missing_keys="report"), [5, 6]),
    }


def write(harness: str, inputs: dict[str, bytes]) -> None:
    out = CORPUS / harness
    out.mkdir(parents=True, exist_ok=True)
    for name, data in inputs.items():
        (out / f"seed_{name}").write_bytes(data)
        print(f"{out / f'seed_{name}'}: {len(data)} bytes", file=sys.stderr)


if __name__ == "__main__":
    write("fuzz_wire_request", wire_requests())
    write("fuzz_table_file", table_files())
