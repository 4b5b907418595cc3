"""A reference model of a shard's tables (spec, keys, rows, optimizer state) that a test keeps from every
write the shard acknowledged, and the comparison of a live shard with it, table by table, bit for bit.

Updates are modelled for SGD tables whose missing rows start at zero (float32 row - lr * summed
gradient, as the C core computes it); the other tables are written by Assign, Import and Delete."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field

import numpy as np

from embps.v1 import ps_shard_pb2 as pb


class Unmodelled(Exception):
    """A write the model cannot follow (an update of a table that is not zero-initialised SGD)."""


@dataclass
class TableModel:
    spec: pb.TableSpec
    state_floats: int
    rows: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)   # key -> (row, state)

    @property
    def dim(self) -> int:
        return self.spec.dim


def _keys(data: bytes) -> np.ndarray:
    return np.frombuffer(data, "<u8")


def _matrix(data: bytes, n: int, width: int) -> np.ndarray:
    return np.frombuffer(data, "<f4").reshape(n, width)


class ShardModel:
    def __init__(self):
        self.tables: dict[str, TableModel] = {}
        self.uncertain: dict[str, str] = {}   # table -> why its contents are not known (a write's outcome)
        self.lock = threading.RLock()

    # ---- writes the shard acknowledged ---------------------------------------------------------

    def create(self, info: pb.TableInfo) -> None:
        with self.lock:
            if info.name not in self.tables:
                self.tables[info.name] = TableModel(info.spec, info.state_floats)

    def drop(self, name: str) -> None:
        with self.lock:
            self.tables.pop(name, None)
            self.uncertain.pop(name, None)

    def assign(self, name: str, keys: np.ndarray, rows: np.ndarray, state: np.ndarray | None) -> None:
        with self.lock:
            table = self.tables[name]
            for i, key in enumerate(keys):   # the last of repeated keys wins
                row_state = state[i] if state is not None else np.zeros(table.state_floats, np.float32)
                table.rows[int(key)] = (rows[i].copy(), np.array(row_state, np.float32))

    def update(self, name: str, keys: np.ndarray, grads: np.ndarray) -> list[str]:
        """Applies an acknowledged update; returns findings (a non-finite value stored)."""
        with self.lock:
            table = self.tables[name]
            o, init = table.spec.optimizer, table.spec.initializer
            if o.kind != pb.OPTIMIZER_KIND_SGD or init.kind != pb.INITIALIZER_KIND_ZEROS:
                raise Unmodelled(f"update of {name}: only zero-initialised SGD tables are modelled")
            summed: dict[int, np.ndarray] = {}
            lr, findings = np.float32(o.lr), []
            with np.errstate(over="ignore", invalid="ignore"):   # overflow is what the check below finds
                for i, key in enumerate(keys):   # summed in input order, from zero, in float32
                    summed.setdefault(int(key), np.zeros(table.dim, np.float32))
                    summed[int(key)] += grads[i]
                new_rows = {key: (table.rows.get(key, (np.zeros(table.dim, np.float32),))[0] - lr * grad)
                            .astype(np.float32) for key, grad in summed.items()}
            for key, new in new_rows.items():
                if not np.isfinite(new).all():
                    findings.append(f"update of {name} acknowledged, but key {key} now holds non-finite values")
                table.rows[key] = (new, np.zeros(0, np.float32))
            return findings

    def delete(self, name: str, keys: np.ndarray) -> int:
        with self.lock:
            rows = self.tables[name].rows
            return sum(rows.pop(int(key), None) is not None for key in np.unique(keys))

    def apply(self, method: str, request, response: bytes | None) -> list[str]:
        """Applies a decoded request the shard answered OK (response: its serialized reply)."""
        with self.lock:
            if method == "CreateTable":
                self.create(pb.TableInfo.FromString(response))
            elif method == "DropTable":
                self.drop(request.table)
            elif method == "Update":
                keys, dim = _keys(request.keys), self.tables[request.table].dim
                return self.update(request.table, keys, _matrix(request.grads, len(keys), dim))
            elif method == "Assign":
                self.import_chunks([request])
            elif method == "Delete":
                deleted = self.delete(request.table, _keys(request.keys))
                got = pb.DeleteResponse.FromString(response).deleted
                if got != deleted:
                    return [f"Delete of {request.table} reported {got} rows deleted; {deleted} were present"]
            return []

    def import_chunks(self, chunks) -> None:
        """Assigns chunks of Assign or Import requests (an empty table name: the previous chunk's)."""
        with self.lock:
            name = None
            for chunk in chunks:
                name = chunk.table or name
                table = self.tables[name]
                keys = _keys(chunk.keys)
                state = _matrix(chunk.state, len(keys), table.state_floats) if chunk.state else None
                self.assign(name, keys, _matrix(chunk.rows, len(keys), table.dim), state)

    def mark_uncertain(self, name: str, why: str) -> None:
        with self.lock:
            if name in self.tables:
                self.uncertain.setdefault(name, why)

    # ---- what reads must return -------------------------------------------------------------

    def expected_rows(self, name: str, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, found, known): rows of present keys, zero rows of missing keys where the table starts
        rows at zero (or reports missing keys); `known` says which rows the model knows."""
        with self.lock:
            table = self.tables[name]
            zero_start = (table.spec.initializer.kind == pb.INITIALIZER_KIND_ZEROS
                          or table.spec.missing_keys == pb.MISSING_KEYS_REPORT)
            rows = np.zeros((len(keys), table.dim), np.float32)
            found = np.array([int(k) in table.rows for k in keys], np.bool_)
            for i, key in enumerate(keys):
                if found[i]:
                    rows[i] = table.rows[int(key)][0]
            return rows, found, found | zero_start

    def contents(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(keys, rows, state) sorted by key."""
        with self.lock:
            table = self.tables[name]
            keys = np.array(sorted(table.rows), np.uint64)
            rows = np.array([table.rows[int(k)][0] for k in keys], np.float32).reshape(len(keys), table.dim)
            state = np.array([table.rows[int(k)][1] for k in keys], np.float32).reshape(len(keys), table.state_floats)
            return keys, rows, state


def shard_contents(stub, name: str, timeout: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keys, rows, state) of a live table, by Export, sorted by key."""
    info = stub.DescribeTable(pb.DescribeTableRequest(table=name), timeout=timeout)
    chunks = list(stub.Export(pb.ExportRequest(table=name), timeout=timeout))
    keys = np.frombuffer(b"".join(c.keys for c in chunks), "<u8")
    rows = np.frombuffer(b"".join(c.rows for c in chunks), "<f4").reshape(len(keys), info.spec.dim)
    state = np.frombuffer(b"".join(c.state for c in chunks), "<f4").reshape(len(keys), info.state_floats)
    order = np.argsort(keys, kind="stable")
    return keys[order], rows[order], state[order]


def checksum(keys: np.ndarray, rows: np.ndarray, state: np.ndarray) -> str:
    digest = hashlib.sha256()
    for part in (keys, rows, state):
        digest.update(np.ascontiguousarray(part).tobytes())
    return digest.hexdigest()[:16]


def _differences(name: str, expected, got) -> list[str]:
    (ekeys, erows, estate), (gkeys, grows, gstate) = expected, got
    if not np.array_equal(ekeys, gkeys):
        missing, extra = np.setdiff1d(ekeys, gkeys), np.setdiff1d(gkeys, ekeys)
        repeated = len(gkeys) - len(np.unique(gkeys))
        return [f"{name}: keys differ: {len(missing)} missing (e.g. {missing[:5].tolist()}), {len(extra)} unexpected "
                f"(e.g. {extra[:5].tolist()}), {repeated} exported twice"]
    out = []
    for what, e, g in (("rows", erows, grows), ("state", estate, gstate)):
        if e.shape != g.shape:
            out.append(f"{name}: {what} shape {g.shape}, expected {e.shape}")
            continue
        bad = np.flatnonzero((e.view(np.uint32) != g.view(np.uint32)).any(axis=1))   # bit for bit: NaN too
        if len(bad):
            i = bad[0]
            out.append(f"{name}: {what} of {len(bad)} keys differ; key {int(ekeys[i])} holds {g[i][:6].tolist()}, "
                       f"expected {e[i][:6].tolist()}")
    return out


def compare(stub, model: ShardModel, timeout: float) -> tuple[list[str], dict[str, str]]:
    """(findings, checksum per table): every table the shard lists against the model.  A table whose
    contents are uncertain (a write with no clear outcome, already reported) is re-read into the model."""
    findings, sums = [], {}
    listed = {info.name: info for info in stub.ListTables(pb.ListTablesRequest(), timeout=timeout).tables}
    with model.lock:
        expected = set(model.tables)
        if set(listed) != expected:
            findings.append(f"tables listed {sorted(listed)}, expected {sorted(expected)}")
        for name in sorted(expected & set(listed)):
            got = shard_contents(stub, name, timeout)
            sums[name] = checksum(*got)
            table = model.tables[name]
            if listed[name].spec != table.spec or listed[name].state_floats != table.state_floats:
                findings.append(f"{name}: described as {listed[name].spec} with {listed[name].state_floats} state "
                                f"floats, expected {table.spec} with {table.state_floats}")
            if listed[name].rows != len(got[0]):
                findings.append(f"{name}: {listed[name].rows} rows described, {len(got[0])} exported")
            if name in model.uncertain:
                table.rows = {int(k): (r.copy(), s.copy()) for k, r, s in zip(*got)}
                del model.uncertain[name]
                continue
            findings += _differences(name, model.contents(name), got)
    return findings, sums
