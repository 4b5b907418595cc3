"""What the crash phases hold a recovered table to, and how they report it."""

import hashlib
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from embps.api import StoreError
from embps.store import Table


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


class RowImage(NamedTuple):
    """What a table holds for a list of keys: rows, optimizer state, presence and version clocks."""

    rows: np.ndarray
    state: np.ndarray
    found: np.ndarray
    versions: np.ndarray

    @classmethod
    def read(cls, table: Table, keys: np.ndarray) -> "RowImage":
        rows, state, found = table.lookup_with_state(keys)
        return cls(rows, state, found, table.lookup_versioned(keys)[2])

    def copy(self) -> "RowImage":
        return RowImage(self.rows.copy(), self.state.copy(), self.found.copy(), self.versions.copy())

    def matches(self, other: "RowImage") -> np.ndarray:
        """Per key: bit-identical row and state, same presence, same version (persisted with the row)."""
        return ((self.rows == other.rows).all(axis=1) & (self.state == other.state).all(axis=1)
                & (self.found == other.found) & (self.versions == other.versions))


def check_recovered_rows(got: RowImage, acked: RowImage, with_in_flight: RowImage,
                         in_flight_rows: int) -> tuple[Check, int]:
    """Every key must read as after the acknowledged writes, or as after the one write in flight at the
    crash (which may have landed for some of its keys and not others).  Returns the check and how many
    keys of the in-flight write landed."""
    as_acked = got.matches(acked)
    as_in_flight = got.matches(with_in_flight)
    bad = int((~(as_acked | as_in_flight)).sum())
    landed = int((as_in_flight & ~as_acked).sum())
    detail = (f"{len(as_acked) - bad:,} of {len(as_acked):,} keys exact; "
              f"in-flight write landed for {landed:,} of {in_flight_rows:,} keys")
    return Check("acknowledged writes survive exactly", bad == 0, detail), landed


def check_invariants(table: Table) -> Check:
    """The native full check: index reachable, counts right, no slab shared or leaked."""
    stats = table.stats()
    try:
        table.check()
    except StoreError as exc:
        return Check("index and allocator consistent", False, str(exc))
    return Check("index and allocator consistent", True,
                 f"{stats.rows:,} rows, {stats.slabs_used:,} slabs used, {stats.slabs_retired} retired")


def check_row_count(table: Table, expected: int) -> Check:
    rows = table.stats().rows
    return Check("row count", rows == expected, f"{rows:,} rows, expected {expected:,}")


def table_digest(table: Table, keys: np.ndarray, chunk: int = 1 << 18) -> str:
    """sha256 of rows, state, presence and versions of keys, read in chunks to bound memory."""
    digest = hashlib.sha256()
    for lo in range(0, len(keys), chunk):
        for part in RowImage.read(table, keys[lo:lo + chunk]):
            digest.update(part.data)
    return digest.hexdigest()
