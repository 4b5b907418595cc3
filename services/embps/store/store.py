"""Store and Table: numpy in, numpy out, over the native core (which runs without the GIL)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embps.api import (InitializerKind, InitializerSpec, InvalidArgument, MissingKeys, OptimizerKind, OptimizerSpec,
                       StoreError, TableExists, TableNotFound, TableSpec, as_keys, state_floats)
from embps.api.status import GRPC_CODES, error_for, shorten
from embps.api.wire import StaleRows

from . import _native
from ._native import ffi, lib

# native_version() of the public declarations in native/*.h this binding is written against (see
# native/build_store.py); tests/store/test_native_build.py fails when the headers change without it.
NATIVE_VERSION = "abi-c8e7813a275dbc6d"


def check_native_version(built: str) -> None:
    """An extension built from other declarations than the ones this binding calls must not load."""
    if built != NATIVE_VERSION:
        raise ImportError(f"the native core {Path(_native.__file__).name} is stale: it was built as {built}, "
                          f"this source expects {NATIVE_VERSION}; rebuild: pip install -e .")


def _built_version() -> str:
    try:
        return ffi.string(lib.embps_version()).decode()
    except AttributeError:   # built before the core had a version stamp
        return "unstamped"


check_native_version(_built_version())

# The api's enums name the C core's: EMBPS_OPT_ADAGRAD is OptimizerKind.ADAGRAD.
_OPTIMIZER_CODES = {kind: getattr(lib, f"EMBPS_OPT_{kind.name}") for kind in OptimizerKind}
_INITIALIZER_CODES = {kind: getattr(lib, f"EMBPS_INIT_{kind.name}") for kind in InitializerKind}
_MISSING_KEYS_CODES = {policy: getattr(lib, f"EMBPS_MISSING_{policy.name}") for policy in MissingKeys}
_OPTIMIZER_KINDS = {code: kind for kind, code in _OPTIMIZER_CODES.items()}
_INITIALIZER_KINDS = {code: kind for kind, code in _INITIALIZER_CODES.items()}
_MISSING_KEYS_POLICIES = {code: policy for policy, code in _MISSING_KEYS_CODES.items()}
SGE_DTYPE = np.dtype([("addr", "<u8"), ("len", "<u4"), ("found", "<u4")])


def _check_api_agrees_with_core() -> None:
    """embps.api answers in pure Python what the C core decides: a core that disagrees must not load."""
    for kind, code in _OPTIMIZER_CODES.items():
        for dim in (1, 7, 64):
            if lib.embps_optimizer_state_floats(code, dim) != state_floats(kind, dim):
                raise ImportError(f"embps.api.state_floats({kind!r}, {dim}) disagrees with the native core")
    for name in dir(lib):
        if name.startswith("EMBPS_E_"):
            reason = ffi.string(lib.embps_status_name(getattr(lib, name))).decode()
            if reason not in GRPC_CODES:
                raise ImportError(f"the native status {reason} has no place in embps.api.status")


_check_api_agrees_with_core()


def check_status(status: int) -> None:
    """Raises the exception for a native status, with the native error message."""
    if status != lib.EMBPS_OK:
        name = ffi.string(lib.embps_status_name(status)).decode()
        raise error_for(name, ffi.string(lib.embps_errormsg()).decode(errors="replace"))


_FLOAT32, _UINT64 = np.dtype(np.float32), np.dtype(np.uint64)
# Resolved once: ffi.from_buffer parses a type string, and its keyword argument, on every call.
_KEYS, _FLOATS, _BYTES = ffi.typeof("uint64_t[]"), ffi.typeof("float[]"), ffi.typeof("uint8_t[]")
_from_buffer = ffi.from_buffer
# Attributes of ffi and lib are looked up in their dicts on every use; the hot calls use these.
_NULL, _table_lookup = ffi.NULL, lib.embps_table_lookup


def _as_matrix(values, n: int, width: int, what: str) -> np.ndarray:
    arr = values if type(values) is np.ndarray and values.dtype == _FLOAT32 else \
        np.ascontiguousarray(values, dtype=np.float32)
    if arr.shape != (n, width):
        raise InvalidArgument(f"{what} must have shape ({n}, {width}), got {arr.shape}")
    return arr


def _keys_in(keys):
    """(n, the C view of the keys as as_keys makes them), straight from an array already so."""
    if type(keys) is np.ndarray and keys.dtype is _UINT64 and keys.ndim == 1:
        try:
            return len(keys), _from_buffer(_KEYS, keys)
        except ValueError:   # not contiguous: ffi.from_buffer takes C-contiguous buffers only
            pass
    keys = as_keys(keys)
    return len(keys), _from_buffer(_KEYS, keys)


def _floats_in(arr: np.ndarray):
    """The C view of a float32 matrix the core reads (a non-contiguous one is copied)."""
    try:
        return _from_buffer(_FLOATS, arr)
    except ValueError:
        return _from_buffer(_FLOATS, np.ascontiguousarray(arr))


def spec_to_c(spec: TableSpec):
    c = ffi.new("embps_table_spec *")
    for what, value, low, high in (("dim", spec.dim, 1, 2**32), ("capacity", spec.capacity, 1, 2**64),
                                   ("initializer seed", spec.initializer.seed, 0, 2**64)):
        if not low <= value < high:
            raise InvalidArgument(f"{what} must be an integer in [{low}, {high}), got {value}")
    c.dim, c.capacity = spec.dim, spec.capacity
    c.optimizer = _OPTIMIZER_CODES[spec.optimizer.kind]
    c.lr, c.eps, c.beta1, c.beta2 = spec.optimizer.lr, spec.optimizer.eps, spec.optimizer.beta1, spec.optimizer.beta2
    c.init = _INITIALIZER_CODES[spec.initializer.kind]
    c.init_scale, c.init_seed = spec.initializer.scale, spec.initializer.seed
    c.missing = _MISSING_KEYS_CODES[spec.missing_keys]
    return c


def _spec_from_c(c) -> TableSpec:
    return TableSpec(
        dim=c.dim,
        capacity=c.capacity,
        optimizer=OptimizerSpec(_OPTIMIZER_KINDS[c.optimizer], c.lr, c.eps, c.beta1, c.beta2),
        initializer=InitializerSpec(_INITIALIZER_KINDS[c.init], c.init_scale, c.init_seed),
        missing_keys=_MISSING_KEYS_POLICIES[c.missing],
    )


@dataclass(frozen=True)
class TableStats:
    rows: int
    buckets: int
    slabs_total: int
    slabs_used: int
    slabs_retired: int
    state_floats: int
    slab_bytes: int
    file_bytes: int
    recovery_seconds: float


@dataclass(frozen=True)
class CrashSimulation:
    """Makes PM stores volatile until persisted; power fails at persist point `crash_at` (0 = never)."""

    crash_at: int = 0
    evict_prob: float = 0.0
    seed: int = 0


class Table:
    def __init__(self, name: str, handle):
        self.name = name
        self._handle = handle
        spec = ffi.new("embps_table_spec *")
        lib.embps_table_describe(handle, spec, ffi.NULL)
        self.spec = _spec_from_c(spec)
        self.dim = self.spec.dim
        self.state_floats = state_floats(self.spec.optimizer.kind, self.dim)

    @property
    def handle(self):
        if self._handle is None:
            raise StoreError("table was dropped or its store closed")
        return self._handle

    # The hot calls below spend about as long in Python as the core spends on a few dozen keys, so they
    # check only what ffi.from_buffer does not: it takes C-contiguous buffers only (ValueError), and
    # writable ones where asked; the handle is read once, as a local.

    def lookup(self, keys, out: np.ndarray | None = None, found: np.ndarray | None = None) -> np.ndarray:
        """Rows of keys, shape (n, dim); missing keys read as their initial rows (or zero rows if the
        table reports missing keys).  `found`, an n-byte bool array if given, tells which were present."""
        n, keys_ptr = _keys_in(keys)
        dim, handle = self.dim, self._handle
        if out is None:
            rows = np.empty((n, dim), np.float32)
            rows_ptr = _from_buffer(_FLOATS, rows)
        else:
            rows, rows_ptr = out, None
            if rows.shape == (n, dim) and rows.dtype == _FLOAT32:
                try:
                    rows_ptr = _from_buffer(_FLOATS, rows, True)   # writable
                except ValueError:
                    pass
            if rows_ptr is None:
                raise InvalidArgument(f"out must be a contiguous float32 array of shape ({n}, {dim})")
        found_ptr = _NULL
        if found is not None:
            if found.shape != (n,) or found.dtype != np.bool_ or not found.flags.c_contiguous:
                raise InvalidArgument(f"found must be a contiguous bool array of shape ({n},)")
            found_ptr = _from_buffer(_BYTES, found, True)
        if handle is None:
            raise StoreError("table was dropped or its store closed")
        status = _table_lookup(handle, keys_ptr, n, rows_ptr, n * dim, _NULL, 0, found_ptr)
        if status:
            check_status(status)
        return rows

    def lookup_with_state(self, keys) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, optimizer state, found mask)."""
        n, keys_ptr = _keys_in(keys)
        rows = np.empty((n, self.dim), np.float32)
        state = np.empty((n, self.state_floats), np.float32)
        found = np.empty(n, np.bool_)
        check_status(lib.embps_table_lookup(self.handle, keys_ptr, n, _from_buffer(_FLOATS, rows), rows.size,
                                            _from_buffer(_FLOATS, state), state.size, _from_buffer(_BYTES, found)))
        return rows, state, found

    def lookup_versioned(self, keys, with_state: bool = False) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """(rows, optimizer state if with_state, versions): each row's version clock read with it (0 for a key
        never written)."""
        n, keys_ptr = _keys_in(keys)
        rows = np.empty((n, self.dim), np.float32)
        state = np.empty((n, self.state_floats), np.float32) if with_state else None
        versions = np.empty(n, np.uint64)
        state_ptr = ffi.NULL if state is None else _from_buffer(_FLOATS, state)
        check_status(lib.embps_table_lookup_versioned(
            self.handle, keys_ptr, n, _from_buffer(_FLOATS, rows), rows.size, state_ptr,
            0 if state is None else state.size, _from_buffer(_KEYS, versions)))
        return rows, state, versions

    def lookup_stale(self, keys, versions, bound: int, with_state: bool = False) -> StaleRows:
        """The rows among keys, held elsewhere at versions (NO_VERSION: no copy), whose version is more than
        bound ahead."""
        n, keys_ptr = _keys_in(keys)
        versions = np.ascontiguousarray(versions, np.uint64)
        if versions.shape != (n,):
            raise InvalidArgument(f"versions must have shape ({n},), got {versions.shape}")
        if not 0 <= bound < 2**64:
            raise InvalidArgument(f"the staleness bound must be in [0, 2^64), got {bound}")
        width = self.dim + (self.state_floats if with_state else 0)
        index, got = np.empty(n, np.uint32), np.empty(n, np.uint64)
        rows = np.empty((n, width), np.float32)
        m = ffi.new("size_t *")
        check_status(lib.embps_table_lookup_stale(
            self.handle, keys_ptr, _from_buffer(_KEYS, versions), n, bound, int(with_state),
            ffi.from_buffer("uint32_t[]", index), _from_buffer(_KEYS, got), _from_buffer(_FLOATS, rows), rows.size, m))
        m = m[0]
        return StaleRows(index[:m], got[:m], rows[:m, :self.dim], rows[:m, self.dim:] if with_state else None)

    def update(self, keys, grads, counts=None) -> None:
        """Applies the table's optimizer; gradients of repeated keys are summed.  Each row's version advances by
        the contributions its gradients carry: one per occurrence, or counts[i] (>= 1) for the i-th.  Persistent
        on return."""
        n, keys_ptr = _keys_in(keys)
        grads = _as_matrix(grads, n, self.dim, "gradients")
        handle = self._handle
        if handle is None:
            raise StoreError("table was dropped or its store closed")
        if counts is None:
            status = lib.embps_table_update(handle, keys_ptr, n, _floats_in(grads), grads.size)
        else:
            counts = np.ascontiguousarray(counts, np.uint32)
            if counts.shape != (n,):
                raise InvalidArgument(f"counts must have shape ({n},), got {counts.shape}")
            status = lib.embps_table_update_counted(handle, keys_ptr, n, _floats_in(grads), grads.size,
                                                    ffi.from_buffer("uint32_t[]", counts))
        if status:
            check_status(status)

    def assign(self, keys, rows, state=None) -> None:
        """Overwrites rows and optimizer state (zero if not given).  Persistent on return."""
        n, keys_ptr = _keys_in(keys)
        rows = _as_matrix(rows, n, self.dim, "rows")
        state_ptr, state_len = ffi.NULL, 0
        if state is not None:
            state = _as_matrix(state, n, self.state_floats, "state")
            state_ptr, state_len = _floats_in(state), state.size
        check_status(lib.embps_table_assign(self.handle, keys_ptr, n, _floats_in(rows), rows.size, state_ptr,
                                            state_len))

    def delete(self, keys) -> int:
        keys = as_keys(keys)
        deleted = ffi.new("uint64_t *")
        check_status(lib.embps_table_delete(self.handle, ffi.from_buffer("uint64_t[]", keys), len(keys), deleted))
        return int(deleted[0])

    def export(self, batch: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yields (keys, rows, state) for every present row, in index order."""
        batch = max(int(batch), 16)
        keys = np.empty(batch, np.uint64)
        rows = np.empty((batch, self.dim), np.float32)
        state = np.empty((batch, self.state_floats), np.float32)
        cursor = ffi.new("uint64_t *", 0)
        count = ffi.new("size_t *")
        bufs = (ffi.from_buffer("uint64_t[]", keys, require_writable=True),
                ffi.from_buffer("float[]", rows, require_writable=True),
                ffi.from_buffer("float[]", state, require_writable=True))
        while cursor[0] != 2**64 - 1:
            check_status(lib.embps_table_export(self.handle, cursor, batch, *bufs, count))
            n = count[0]
            if n:
                yield keys[:n].copy(), rows[:n].copy(), state[:n].copy()

    def gather(self, keys, with_state: bool = False) -> GatherList:
        """Scatter-gather entries pointing at the rows in the mapped pool (NIC / socket sends)."""
        keys = as_keys(keys)
        sges = np.empty(len(keys), SGE_DTYPE)
        guard = ffi.new("uint64_t *")
        entries = ffi.cast("embps_sge *", ffi.from_buffer(sges, require_writable=True))
        check_status(lib.embps_table_gather_begin(self.handle, ffi.from_buffer("uint64_t[]", keys), len(keys),
                                                  int(with_state), entries, guard))
        return GatherList(self, sges, guard[0])

    def pool_region(self) -> tuple[int, int]:
        """(address, length) of the slab pool: the memory region an RDMA NIC registers."""
        base, length = ffi.new("void **"), ffi.new("size_t *")
        lib.embps_table_pool_region(self.handle, base, length)
        return int(ffi.cast("uintptr_t", base[0])), int(length[0])

    def stats(self) -> TableStats:
        s = ffi.new("embps_table_stats *")
        lib.embps_table_describe(self.handle, ffi.NULL, s)
        return TableStats(s.rows, s.buckets, s.slabs_total, s.slabs_used, s.slabs_retired, s.state_floats,
                          s.slab_bytes, s.file_bytes, s.recovery_seconds)

    def check(self) -> None:
        """Verifies every index and allocator invariant; raises StoreCorrupted."""
        check_status(lib.embps_table_check(self.handle))


class GatherList:
    """Entries stay valid (their slabs are not reused) until release()."""

    def __init__(self, table: Table, entries: np.ndarray, guard: int):
        self.entries = entries
        self._table = table
        self._guard: int | None = guard

    def release(self) -> None:
        if self._guard is not None:
            lib.embps_table_gather_end(self._table.handle, self._guard)
            self._guard = None

    def __enter__(self) -> GatherList:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _encode_name(name: str) -> bytes:
    """C strings end at NUL: a name with one inside would silently name another table."""
    if not isinstance(name, str) or "\0" in name:
        raise InvalidArgument(f"table name must be a string without NUL characters, got {shorten(repr(name), 80)}")
    return name.encode()


_persist_mode: str | None = None


def _set_persist_mode(persist: str) -> None:
    global _persist_mode
    if persist not in ("cache_line", "native", "none"):
        raise InvalidArgument(f"persist must be 'cache_line', 'native' or 'none', got {persist!r}")
    if persist == "none":
        return   # no flushes at all: compatible with either mode
    if _persist_mode is not None and persist != _persist_mode:
        raise InvalidArgument(f"this process already maps stores with persist={_persist_mode!r}; "
                              "the mode is one per process")
    if persist == "cache_line":
        os.environ["PMEM2_FORCE_GRANULARITY"] = "CACHE_LINE"
    else:
        os.environ.pop("PMEM2_FORCE_GRANULARITY", None)
    _persist_mode = persist


class Store:
    """A directory of persistent tables.  Opening it recovers every table; a table file it cannot open
    is reported in `unopenable` and keeps its name, and the others are served."""

    def __init__(self, path: str | os.PathLike, crash_simulation: CrashSimulation | None = None,
                 persist: str = "cache_line"):
        """persist: "cache_line" flushes lines and fences as on PM (the emulation when the file is
        not on DAX; durable across process crashes); "native" lets libpmem2 choose, which means
        msync on non-DAX files (durable across power loss, much slower).  libpmem2 takes the mode
        from the environment when it maps a file, so it is one per process.  "none" is for caches:
        no flushes or fences, and the contents do not survive a crash."""
        _set_persist_mode(persist)
        self.path = Path(path)
        cfg = ffi.new("embps_store_config *")
        dir_bytes = ffi.new("char[]", os.fsencode(self.path))
        cfg.dir = dir_bytes
        cfg.volatile_tables = persist == "none"
        if crash_simulation is not None:
            cfg.crash_sim = 1
            cfg.crash_at = crash_simulation.crash_at
            cfg.crash_evict_prob = crash_simulation.evict_prob
            cfg.crash_seed = crash_simulation.seed
        out = ffi.new("embps_store **")
        check_status(lib.embps_store_open(cfg, out))
        self._handle = out[0]
        self._lock = threading.Lock()   # guards the three dicts below; never held across a call that waits
        self._tables: dict[str, Table] = {}   # the wrapper of each open table
        self._unopenable: dict[str, str] = {}
        self._name_locks: dict[str, list] = {}   # name -> [lock, holders]: see _name_held
        for name in self._listed():
            try:
                self._wrapper(name, self._get(name))
            except (StoreError, MemoryError) as error:
                self._unopenable[name] = str(error)

    @property
    def handle(self):
        if self._handle is None:
            raise StoreError("store is closed")
        return self._handle

    def _listed(self) -> list[str]:
        name = ffi.new("char[]", lib.EMBPS_NAME_MAX + 1)
        names: list[str] = []
        while lib.embps_store_table_at(self.handle, len(names), name) == lib.EMBPS_OK:
            names.append(ffi.string(name).decode())
        return names

    def _get(self, name: str):
        out = ffi.new("embps_table **")
        check_status(lib.embps_table_get(self.handle, _encode_name(name), out))
        return out[0]

    def _wrapper(self, name: str, handle) -> Table:
        """The one wrapper of an open table's handle (a Table reads its spec once); the caller holds
        the name or a reference, so no drop can have freed the handle."""
        with self._lock:
            table = self._tables.get(name)
            if table is None or table._handle != handle:
                table = self._tables[name] = Table(name, handle)
            return table

    @contextmanager
    def _name_held(self, name: str) -> Iterator[None]:
        """Creates and drops of one name run one at a time, so that the wrappers follow the native
        store; those of other names, and every other call, go on meanwhile."""
        with self._lock:
            held = self._name_locks.setdefault(name, [threading.Lock(), 0])
            held[1] += 1
        try:
            with held[0]:
                yield
        finally:
            with self._lock:
                held[1] -= 1
                if not held[1]:
                    del self._name_locks[name]

    def _create(self, name: str, spec: TableSpec) -> Table:
        out = ffi.new("embps_table **")
        check_status(lib.embps_table_create(self.handle, _encode_name(name), spec_to_c(spec), out))
        return self._wrapper(name, out[0])

    def create_table(self, name: str, spec: TableSpec) -> Table:
        with self._name_held(name):
            return self._create(name, spec)

    @contextmanager
    def create_acquired(self, name: str, spec: TableSpec, exist_ok: bool = False) -> Iterator[tuple[Table, bool]]:
        """(the new table, True), or with exist_ok (the table of that name, False), held as `acquire`
        holds it: no drop can come between the create and what the block reads."""
        with self._name_held(name):
            created = True
            try:
                self._create(name, spec)
            except TableExists:
                if not exist_ok:
                    raise
                created = False
            handle = self._acquire(name)   # no drop of name can run while the name is held
        with self._held(name, handle) as table:
            yield table, created

    def table(self, name: str) -> Table:
        """The table for single-threaded use: a concurrent drop would free it under the caller.  (So
        it is not kept as the name's wrapper: only calls that hold the name or a reference keep one.)"""
        handle = self._get(name)
        with self._lock:
            table = self._tables.get(name)
        return table if table is not None and table._handle == handle else Table(name, handle)

    def _acquire(self, name: str):
        out = ffi.new("embps_table **")
        check_status(lib.embps_table_acquire(self.handle, _encode_name(name), out))
        return out[0]

    @contextmanager
    def _held(self, name: str, handle) -> Iterator[Table]:
        try:
            yield self._wrapper(name, handle)
        finally:
            lib.embps_table_release(self._handle, handle)

    @contextmanager
    def acquire(self, name: str) -> Iterator[Table]:
        """The table, kept safe from a concurrent drop until the block ends (what servers use); a drop
        of another table never waits for it."""
        with self._held(name, self._acquire(name)) as table:
            yield table

    def tables(self) -> list[str]:
        """The open tables."""
        with self._lock:
            return sorted(self._tables)

    @property
    def unopenable(self) -> dict[str, str]:
        """Table files found at opening that could not be opened: name -> why.  Their names stay
        taken; dropping one removes its file."""
        with self._lock:
            return dict(self._unopenable)

    def drop_table(self, name: str) -> None:
        encoded = _encode_name(name)
        with self._name_held(name):
            check_status(lib.embps_table_drop(self.handle, encoded))
            with self._lock:
                table = self._tables.pop(name, None)
                self._unopenable.pop(name, None)
        if table is not None:
            table._handle = None

    @property
    def persist_points(self) -> int:
        """Persist points reached so far (crash simulator only)."""
        return lib.embps_store_persist_points(self.handle)

    def table_stats(self) -> dict[str, TableStats]:
        """Stats of every table, safe against concurrent drops."""
        result = {}
        for name in self.tables():
            try:
                with self.acquire(name) as table:
                    result[name] = table.stats()
            except TableNotFound:
                pass
        return result

    def recovery_seconds(self) -> float:
        return sum(stats.recovery_seconds for stats in self.table_stats().values())

    def close(self) -> None:
        if self._handle is not None:
            with self._lock:
                for table in self._tables.values():
                    table._handle = None
            lib.embps_store_close(self._handle)
            self._handle = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
