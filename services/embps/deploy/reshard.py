"""Offline resharding: moves every row of a table, with its optimizer state, from one shard layout to
another (`embps reshard --from OLD.toml --to NEW.toml`), and proves by counting and checksumming that
nothing was lost, duplicated or changed.

OFFLINE: writers (trainers, gateways) must be stopped for the whole run; the shards keep serving.
A run that sees a row change under it stops with an error.

Shards are physical: two addresses reaching the same shard process are one shard (found by a probe
table created on one address and listed through the others), so `localhost:1` in one file and
`127.0.0.1:1` in the other can never make the tool copy a row onto itself and then delete it.

Two modes, chosen from the layouts:

- in-place (the layouts share a shard, e.g. growing [A, B] to [A, B, C], or [A, B] routed by hash to
  [A, B] routed by a placement file): every row ends on exactly one shard, the one the new layout routes
  its key to (its placement file's owner host if it names one and lists the key, else jump hash over the
  new shard list).  Rows
  already there stay untouched; every other row is read from its shard (with its optimizer state),
  assigned to its new shard (persistent on return), and only then deleted from the old one.  At every
  instant a row is on its old shard, its new shard or both, never on neither; shards that leave the
  layout end with the table empty (the table itself is left for the operator to drop).
- copy (disjoint layouts, e.g. moving to new hosts): every row is assigned to the new layout and the
  old layout is left untouched, as a fallback.

Before anything moves, every shard involved is scanned: rows per shard, distinct keys, and an
order-independent checksum (sum mod 2^64 of a 64-bit hash of key, row bytes and state bytes).  After
moving, the new layout is scanned again and must hold the same distinct keys and checksum, every row on
the shard its key routes to, and (in place) no row left on a retired shard.

Tables are resharded one after another (memory holds one table's scan: 16 bytes per row, plus one
batch of rows); if one fails, the tables before it are already in the new layout and the error names
them.  Re-running is safe: assign is idempotent, and a key found on two shards with identical contents
(a run interrupted between assign and delete) counts once.  Rows on a shard that only the new layout
names are refused (they would be merged into the table) unless `resume=True`, for continuing an
interrupted run.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import grpc
import numpy as np

from embps.client import PSClient, ShardError, router_for
from embps.client.routing import Router
from embps.common.cluster_config import ClusterConfig
from embps.common.spec_messages import spec_from_message
from embps.api import InitializerKind, InitializerSpec, OptimizerKind, OptimizerSpec, TableSpec

PROBE_PREFIX = "_embps_reshard_probe_"
DEFAULT_BATCH_ROWS = 4096

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


class ReshardError(Exception):
    """A precondition failed or a shard call failed; the message says what to do.  No row is lost."""


# ---- checksums ------------------------------------------------------------------------------------

def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, vectorised (uint64 arithmetic wraps)."""
    x = x ^ (x >> _S30)
    x = x * _MIX1
    x = x ^ (x >> _S27)
    x = x * _MIX2
    return x ^ (x >> _S31)


def _salt(i: int) -> np.uint64:
    return np.uint64((int(_GOLDEN) * i) & 0xFFFFFFFFFFFFFFFF)


def row_hashes(keys: np.ndarray, rows: np.ndarray, state: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each (key, row bytes, state bytes)."""
    keys = np.asarray(keys, np.uint64)
    n = len(keys)
    words = np.concatenate([np.asarray(rows, np.float32).reshape(n, -1),
                            np.asarray(state, np.float32).reshape(n, -1)], axis=1).view(np.uint32)
    if words.shape[1] % 2:
        words = np.concatenate([words, np.zeros((n, 1), np.uint32)], axis=1)
    columns = np.ascontiguousarray(words).view(np.uint64).T.copy()   # (width/2, n)
    h = _mix(keys ^ _salt(words.shape[1] + 1))
    for j, column in enumerate(columns):
        h = _mix(h ^ (column + _salt(j + 1)))
    return h


def checksum(hashes: np.ndarray) -> int:
    """Order-independent: the sum of the row hashes mod 2^64."""
    return int(np.sum(hashes, dtype=np.uint64)) if len(hashes) else 0


# ---- reports --------------------------------------------------------------------------------------

@dataclass
class Snapshot:
    """Distinct rows of a table over a set of shards."""
    rows: int
    checksum: int
    per_shard: dict[str, int]          # shard address -> rows it holds


@dataclass
class TableResult:
    table: str
    mode: str                          # "in-place" or "copy"
    before: Snapshot
    after: Snapshot
    moved: int = 0                     # rows assigned to another shard
    deleted: int = 0                   # rows deleted from their old shard after the move
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class ReshardReport:
    mode: str
    verify_only: bool
    roles: dict[str, str]              # shard address -> "kept", "new", "retired" (in place) or "old"/"new"
    tables: list[TableResult]

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tables)


# ---- shards ---------------------------------------------------------------------------------------

@dataclass
class _Shard:
    """One physical shard: the address it is reached at, and a client of it alone."""
    address: str
    client: PSClient


def _physical_shards(configs: dict[str, ClusterConfig]) -> dict[str, str]:
    """address -> the first address of the same physical shard.  A probe table with a unique name is
    created through each address and listed through every address; probes are dropped afterwards."""
    token = secrets.token_hex(6)
    addresses = list(configs)
    clients = {a: _client_of(configs[a], a) for a in addresses}
    probes: dict[str, str] = {}
    try:
        spec = TableSpec(dim=1, capacity=1, optimizer=OptimizerSpec(OptimizerKind.SGD), initializer=InitializerSpec(InitializerKind.ZEROS))
        for i, address in enumerate(addresses):
            name = f"{PROBE_PREFIX}{token}_{i}"
            try:
                clients[address].create_table(name, spec)
            except ShardError as error:
                raise ReshardError(f"shard {address} cannot be reached or refused a probe table: {error}") from None
            probes[name] = address
        canonical: dict[str, str] = {}
        for address in addresses:
            try:
                seen = {t for t in clients[address].list_tables() if t.startswith(PROBE_PREFIX + token)}
            except ShardError as error:
                raise ReshardError(f"shard {address}: {error}") from None
            owners = sorted((addresses.index(probes[name]), probes[name]) for name in seen)
            if not owners:
                raise ReshardError(f"shard {address} does not list its own probe table")
            canonical[address] = owners[0][1]
        return canonical
    finally:
        for name, address in probes.items():
            try:
                clients[address].drop_table(name)
            except ShardError:
                pass
        for client in clients.values():
            client.close()


def _client_of(config: ClusterConfig, address: str) -> PSClient:
    """A client of one shard alone: it routes nothing, so it has no placement."""
    return PSClient(dataclasses.replace(config, shards=(address,), placement=""))


def _check_layout(name: str, config: ClusterConfig, canonical: dict[str, str]) -> list[str]:
    """The layout's shards as physical shard addresses, in routing order."""
    physical = [canonical[a] for a in config.shards]
    for i, p in enumerate(physical):
        if p in physical[:i]:
            j = physical.index(p)
            raise ReshardError(f"{name} layout: entries {j} ({config.shards[j]}) and {i} ({config.shards[i]}) "
                               "are the same shard")
    return physical


# ---- scanning -------------------------------------------------------------------------------------

@dataclass
class _Scan:
    """A table on one shard: its keys and row hashes (None if the table is missing there)."""
    keys: np.ndarray | None
    hashes: np.ndarray | None
    described_rows: int = 0

    @property
    def rows(self) -> int:
        return 0 if self.keys is None else len(self.keys)


def _describe_rows(shard: _Shard, table: str) -> int | None:
    try:
        return shard.client.describe_table(table).rows
    except ShardError as error:
        if error.code == grpc.StatusCode.NOT_FOUND:
            return None
        raise


def _scan(shard: _Shard, table: str, chunk_rows: int, advance: Callable[[int], None]) -> _Scan:
    described = _describe_rows(shard, table)
    if described is None:
        return _Scan(None, None)
    keys, hashes = [], []
    for k, rows, state in shard.client.export(table, chunk_rows):
        keys.append(k.copy())
        hashes.append(row_hashes(k, rows, state))
        advance(len(k))
    if not keys:
        return _Scan(np.empty(0, np.uint64), np.empty(0, np.uint64), described)
    return _Scan(np.concatenate(keys), np.concatenate(hashes), described)


def _merge(scans: dict[str, _Scan]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """All scanned rows as (keys, hashes, source shard index into scans) plus conflicts (keys held by
    two shards with different contents)."""
    names = list(scans)
    parts = [(s.keys, s.hashes, np.full(s.rows, i, np.int64)) for i, s in enumerate(scans.values()) if s.rows]
    if not parts:
        return np.empty(0, np.uint64), np.empty(0, np.uint64), np.empty(0, np.int64), []
    keys, hashes, source = (np.concatenate(p) for p in zip(*parts))
    order = np.argsort(keys, kind="stable")
    keys, hashes, source = keys[order], hashes[order], source[order]
    same = keys[1:] == keys[:-1]
    conflicts = []
    for i in np.flatnonzero(same & (hashes[1:] != hashes[:-1]))[:5]:
        conflicts.append(f"key {int(keys[i])} differs between shards {names[source[i]]} and "
                         f"{names[source[i + 1]]}")
    return keys, hashes, source, conflicts


def _snapshot(scans: dict[str, _Scan]) -> Snapshot:
    keys, hashes, _, _ = _merge(scans)
    first = np.ones(len(keys), bool)
    first[1:] = keys[1:] != keys[:-1]
    return Snapshot(int(first.sum()), checksum(hashes[first]), {a: s.rows for a, s in scans.items()})


# ---- the tool -------------------------------------------------------------------------------------

class _Progress:
    """A rich progress bar per phase, or nothing."""

    def __init__(self, enabled: bool, console=None):
        self._bar = None
        if enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)
            self._bar = Progress(TextColumn("{task.description:<20}"), BarColumn(bar_width=30), MofNCompleteColumn(),
                                 TextColumn("rows"), TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                                 transient=False)

    def __enter__(self):
        if self._bar:
            self._bar.start()
        return self

    def __exit__(self, *exc):
        if self._bar:
            self._bar.stop()

    def task(self, description: str, total: int) -> Callable[[int], None]:
        if not self._bar:
            return lambda n: None
        bar = self._bar
        task = bar.add_task(description, total=max(total, 0))
        return lambda n: bar.advance(task, n)


def _base_config(old: ClusterConfig, new: ClusterConfig) -> dict[str, ClusterConfig]:
    """Each address's client settings: those of the layout file that names it (the old one first)."""
    configs: dict[str, ClusterConfig] = {}
    for config in (old, new):
        for address in config.shards:
            configs.setdefault(address, config)
    return configs


def reshard(old: ClusterConfig, new: ClusterConfig, tables: Iterable[str] | None = None, *,
            verify_only: bool = False, resume: bool = False, batch_rows: int = DEFAULT_BATCH_ROWS,
            progress: bool = True, console=None) -> ReshardReport:
    """Moves (or with verify_only, only checks) the tables from layout `old` to layout `new`; see the
    module docstring.  Raises ReshardError when a precondition fails; a failed verification is in the
    report (report.ok is False, each table's problems say why)."""
    if batch_rows < 1:
        raise ReshardError("batch_rows must be positive")
    for name, config in (("old", old), ("new", new)):
        if len(set(config.shards)) != len(config.shards):
            raise ReshardError(f"the {name} layout names a shard twice: {list(config.shards)}")
    try:
        route = router_for(new)
    except (OSError, ValueError) as error:
        raise ReshardError(f"the new layout's placement cannot be used: {error}") from None
    configs = _base_config(old, new)
    canonical = _physical_shards(configs)
    old_ids, new_ids = _check_layout("old", old, canonical), _check_layout("new", new, canonical)
    in_place = bool(set(old_ids) & set(new_ids))
    mode = "in-place" if in_place else "copy"
    everyone = list(dict.fromkeys(old_ids + new_ids))
    if in_place:
        roles = {a: "kept" if a in old_ids and a in new_ids else "new" if a in new_ids else "retired"
                 for a in everyone}
    else:
        roles = {a: "old" if a in old_ids else "new" for a in everyone}
    shards = {a: _Shard(a, _client_of(configs[a], a)) for a in everyone}
    try:
        names = _tables(shards, old_ids, tables)
        results: list[TableResult] = []
        try:
            with _Progress(progress, console) as bar:
                for table in names:
                    results.append(_reshard_table(table, shards, old_ids, new_ids, route, roles, in_place,
                                                  verify_only, resume, batch_rows, bar))
        except (ShardError, ReshardError) as error:
            if isinstance(error, ShardError):
                error = ReshardError(f"shard call failed: {error}" + ("" if verify_only else
                                     ".  No row is lost: a row is deleted from a shard only after its new shard "
                                     "has it; run again with --resume to continue"))
            if results and not verify_only:
                done = ", ".join(r.table for r in results)
                error = ReshardError(f"{error}\n(tables are moved one after another: {done} already moved to the "
                                     "new layout; run again with --resume after fixing)")
            raise error from None
        return ReshardReport(mode, verify_only, roles, results)
    except ShardError as error:
        raise ReshardError(f"shard call failed: {error}") from None
    finally:
        for shard in shards.values():
            shard.client.close()


def _tables(shards: dict[str, _Shard], old_ids: list[str], wanted: Iterable[str] | None) -> list[str]:
    listed = {a: {t for t in shards[a].client.list_tables() if not t.startswith(PROBE_PREFIX)} for a in old_ids}
    if wanted is None:
        names = sorted(set().union(*listed.values()))
    else:
        names = list(dict.fromkeys(wanted))
    for table in names:
        missing = [a for a in old_ids if table not in listed[a]]
        if missing:
            raise ReshardError(f"table '{table}' does not exist on old shard(s) {', '.join(missing)}")
    return names


def _reshard_table(table: str, shards: dict[str, _Shard], old_ids: list[str], new_ids: list[str], route: Router,
                   roles: dict[str, str], in_place: bool, verify_only: bool, resume: bool, batch_rows: int,
                   bar: _Progress) -> TableResult:
    infos = {a: shards[a].client.describe_table(table) for a in old_ids}
    spec = spec_from_message(infos[old_ids[0]].spec)
    for a, info in infos.items():
        if spec_from_message(info.spec) != spec:
            raise ReshardError(f"table '{table}' has different specs on {old_ids[0]} ({spec}) and {a} "
                               f"({spec_from_message(info.spec)})")
    chunk_rows = _chunk_rows(shards, batch_rows, spec.dim, infos[old_ids[0]].state_floats)
    problems: list[str] = []

    # 1. The table on every new shard, with the same spec (nothing is created when only verifying).
    for a in new_ids:
        if verify_only:
            continue
        try:
            shards[a].client.create_table(table, spec, if_not_exists=True)
        except ShardError as error:
            if error.code == grpc.StatusCode.ALREADY_EXISTS:
                raise ReshardError(f"table '{table}' exists on new shard {a} with a different spec: "
                                   f"{error.details}") from None
            raise

    # 2. Scan: the rows the table has before.  In place, every shard involved (a row may sit on a shard
    # only the new layout names after an interrupted run); copying, the old layout.
    sources = list(roles) if in_place else list(old_ids)
    described = {a: _describe_rows(shards[a], table) for a in sources}
    advance = bar.task(f"{table}: scan", sum(r or 0 for r in described.values()))
    scans = {a: _scan(shards[a], table, chunk_rows, advance) for a in sources}
    if not verify_only and not resume:
        for a in new_ids:
            if a not in old_ids:
                rows = scans[a].rows if a in scans else (_describe_rows(shards[a], table) or 0)
                if rows:
                    raise ReshardError(f"new shard {a} already holds {rows} rows of table '{table}'; if they come "
                                       "from an interrupted reshard, run again with --resume")
    keys, hashes, source, conflicts = _merge(scans)
    if conflicts:
        message = f"table '{table}': a key is on two shards with different contents: " + "; ".join(conflicts)
        if not verify_only:
            raise ReshardError(message + ".  Resolve by hand (delete the stale copy) and run again")
        problems.append(message)
    before = _snapshot(scans)
    # Shards by index into `everyone`: where each scanned row is, and where the new layout routes it.
    everyone = list(roles)
    source_index = np.array([everyone.index(a) for a in sources], np.int64)[source]
    new_index = np.array([everyone.index(a) for a in new_ids], np.int64)
    target_index = new_index[route.shard_of(keys)] if len(keys) else np.empty(0, np.int64)
    moving = np.flatnonzero(source_index != target_index)

    moved = deleted = 0
    if not verify_only:
        # 3. Capacity: a shard's table holds at most spec.capacity rows.
        distinct = np.ones(len(keys), bool)
        distinct[1:] = keys[1:] != keys[:-1]
        final = np.bincount(target_index[distinct], minlength=len(everyone))
        for a in new_ids:
            if final[everyone.index(a)] > spec.capacity:
                raise ReshardError(f"table '{table}': shard {a} would hold {final[everyone.index(a)]} rows, more "
                                   f"than the table's capacity of {spec.capacity}; recreate the table with a "
                                   "larger capacity")
        # 4. Move: read from the source (rows and state), assign on the target, then delete from the source.
        advance = bar.task(f"{table}: move", len(moving))
        pair = source_index[moving] * len(everyone) + target_index[moving]
        for code in np.unique(pair):
            src, dst = everyone[code // len(everyone)], everyone[code % len(everyone)]
            positions = moving[pair == code]
            for lo in range(0, len(positions), chunk_rows):
                pos = positions[lo:lo + chunk_rows]
                batch = keys[pos]
                rows, state, found = shards[src].client.lookup(table, batch, with_state=True)
                if not found.all() or not np.array_equal(row_hashes(batch, rows, state), hashes[pos]):
                    raise ReshardError(f"table '{table}' changed on shard {src} during the reshard (rows missing "
                                       "or different from the scan): stop every writer and run again with "
                                       "--resume")
                shards[dst].client.assign(table, batch, rows, state)
                moved += len(batch)
                if in_place:
                    deleted += shards[src].client.delete(table, batch)
                advance(len(batch))

    # 5. Verify: the new layout holds the same rows, each where its key routes; retired shards are empty.
    retired = [a for a in everyone if roles[a] == "retired"]
    if verify_only:
        after_scans = {a: scans[a] if a in scans else _scan(shards[a], table, chunk_rows, lambda n: None)
                       for a in new_ids}
        retired_scans = {a: scans[a] for a in retired}
    else:
        total = sum(_describe_rows(shards[a], table) or 0 for a in new_ids + retired)
        advance = bar.task(f"{table}: verify", total)
        after_scans = {a: _scan(shards[a], table, chunk_rows, advance) for a in new_ids}
        retired_scans = {a: _scan(shards[a], table, chunk_rows, advance) for a in retired}
    after = _snapshot(after_scans)
    after.per_shard.update({a: s.rows for a, s in retired_scans.items()})
    if in_place and verify_only and len(moving):
        problems.append(f"{len(moving)} rows are not on the shard the new layout routes them to (run without "
                        "--verify-only to move them)")
    for a, s in after_scans.items():
        if s.keys is None:
            problems.append(f"table '{table}' does not exist on new shard {a}")
            continue
        wrong = int(np.count_nonzero(route.shard_of(s.keys) != new_ids.index(a))) if s.rows else 0
        if wrong:
            problems.append(f"{wrong} rows on shard {a} belong to another shard of the new layout")
    for a, s in retired_scans.items():
        if s.rows:
            problems.append(f"{s.rows} rows are still on shard {a}, which leaves the layout")
    for a, s in {**after_scans, **retired_scans}.items():
        if s.keys is not None and s.described_rows != s.rows:
            problems.append(f"shard {a} describes {s.described_rows} rows of '{table}' but exported {s.rows}")
    if after.rows != before.rows:
        problems.append(f"row counts differ: {before.rows} before, {after.rows} in the new layout")
    if after.checksum != before.checksum:
        problems.append(f"checksums differ: {before.checksum:#018x} before, {after.checksum:#018x} in the new "
                        "layout (rows or optimizer state differ)")
    return TableResult(table, "in-place" if in_place else "copy", before, after, moved, deleted, problems)


def _chunk_rows(shards: dict[str, _Shard], batch_rows: int, dim: int, state_floats: int) -> int:
    """Rows per batch: batch_rows, within every shard's key limit and message size."""
    limits = [s.client.stats()[0] for s in shards.values()]
    max_keys = min(limit.max_batch_keys or batch_rows for limit in limits)
    max_bytes = min(min(limit.max_message_bytes or (1 << 62) for limit in limits),
                    min(s.client.config.max_message_bytes for s in shards.values()))
    row_bytes = 8 + 4 * (dim + state_floats) + 1
    return max(1, min(batch_rows, max_keys, (max_bytes // 2) // row_bytes))
