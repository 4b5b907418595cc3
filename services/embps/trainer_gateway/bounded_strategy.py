"""bounded (HET-GMP): each gateway mirrors its host's top `store_rate` remote rows and uses a mirror while
its owner is at most s = `staleness` contributions ahead of it; every other row is read from, and
updated at, its owner every step.

Clocks.  A row's version on its shard counts the gradient contributions applied to it (one per trainer
and step that used it; a mirror's accumulated push carries as many as it holds).  A mirror remembers
the owner version it reflects: the version its last refresh returned plus the contributions it has
pushed since.

Pull bound.  Before a batch's rows are served, once every gateway's updates of the previous batch are on
the shards, the gateway sends the (key, version) of the batch's mirrored keys to their owners
(`PSClient.refresh_stale`); an owner answers only the rows more than s ahead, with their state and
version, and the mirror takes them.  Push bound.  A mirror applies its trainer's gradient at once, with
the table's own optimizer kernel, and keeps the raw gradient and its count as pending; when more than s
contributions are pending they join the gateway's contribution of that step.  A contribution is the
gradients of unmirrored keys, counting 1 each, and the pending sums of mirrors, counting what they hold.

Writes.  At s = 0 each key's contributions are summed in trainer order by the gateway beside its owner
(the peer exchange's reduce-scatter), which pushes the sum with its count, so an owner applies every
row's step as one update.  At s > 0 no gradient goes to a peer: each gateway sends its contribution
straight to the owners (`PSClient.update` with the counts; rows its own host owns go to its own shard,
over no link), and an owner applies each gateway's push as an optimizer step of its own.

Rounds (PeerExchange's notices).  Round 2b+1 from a gateway: its updates of batch b are on the shards;
rows of batch b are read only once every gateway has passed round 2b-1.  At s > 0, round 2b: it has
served batch b's rows; a gateway sends its updates of b only once every gateway has passed it (at s = 0
the exchange waits for every gateway's contribution, which comes later still).  So no update lands on
a shard while another gateway reads the same batch: the owner versions a mirror is checked against
cannot move while its rows are served (the bound holds when the trainer gets the row, as the audit
reads it), and an unmirrored row read for batch b holds every update pushed for the batches before b.
What such a read misses is what other gateways' mirrors of that row still hold pending (at most s
contributions each), with either write path.  Reading without waiting would also miss the peers'
updates of the previous batch, and of more as the gateways drift apart, with no bound: the two notices
per step (a few bytes to each peer) keep that from happening.

Optimizer state (SGD and Adagrad; the table's other optimizers are refused when the gateway starts):
- The owner holds the authoritative row and Adagrad accumulator, and applies each update it is sent as
  one optimizer step on its gradient.  Mirrors push raw gradients, never their local deltas, so the
  owner's accumulator takes every gradient once, in its own step.
- A mirror holds a copy of the owner's row and accumulator as of its last refresh, and applies its own
  trainer's gradients to that copy (its accumulator copy grows by their squares): provisional values
  that the next refresh replaces.  A refresh takes the owner's row and accumulator and applies the
  still-pending gradient once more, as one step.
- SGD is linear, so it is exact for any s, up to the order of float additions: the owner's row is its
  start minus lr x every pushed gradient, in whatever order the pushes land, and a mirror's the owner's
  minus lr x its pending ones.  Adagrad is exact at s = 0: every contribution is pushed in the step it
  is made and summed with the other gateways' before the owner's one step, which is the single-process
  step; a mirror then is either refreshed (others moved the row) or equal to the owner bit for bit (the
  same kernel on the same row, accumulator and gradient).  At s > 0 an owner applies each gateway's push
  as its own step, so a row that k gateways update in one batch takes k steps, each dividing by an
  accumulator that has grown by that push's square alone (one process: one step on the sum, its
  accumulator grown by the square of the sum), in the order the pushes arrive; and a mirror's push of k
  steps' gradients is one step (the square of their sum, not the sum of their squares).  That deviation,
  and the order it depends on, is what s buys.

Mirror candidates come from the job's placement file (`embps partition`: HET-GMP's priority order);
under hash placement, from the job's own batches (see `usage_placement`), each host ranking the remote
keys its trainer uses by how many batches use them.
Setting EMBPS_BOUNDED_AUDIT to a directory makes each gateway record, for every mirrored row it serves,
the version it held and the owner's version read at the same moment (what the bound promises to keep
within s), in audit-<trainer>.npz there when it finishes.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import grpc
import numpy as np

from embps.api import OptimizerKind, wire
from embps.common.job_config import JobConfig, feature_keys
from embps.datasets import open_dataset
from embps.placement import Placement
from embps.placement.placement_file import load_placement
from embps.v1 import training_pb2 as pb

from .errors import GatewayError
from .row_cache import RowCache
from .strategy import GatewayContext, Strategy

SUPPORTED = (OptimizerKind.SGD, OptimizerKind.ADAGRAD)
USAGE_BATCHES = 256   # batches usage_placement reads at most
AUDIT_ENV = "EMBPS_BOUNDED_AUDIT"
log = logging.getLogger("embps.trainer_gateway")


class BoundedStrategy(Strategy):
    initial_round = -1   # batch 0 reads rows no update has touched

    def __init__(self, context: GatewayContext, placement: Placement | None = None):
        super().__init__(context)
        kind = context.spec.optimizer.kind
        if kind not in SUPPORTED:
            raise GatewayError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"bounded mode mirrors rows of SGD and Adagrad tables only; table "
                               f"'{context.job.table}' uses {kind.value}, whose state a mirror cannot merge "
                               f"(run it in sync or direct mode)")
        self.s = context.job.staleness
        if placement is None and context.job.placement:
            placement = load_placement(context.job.placement, hosts=context.job.trainers)
        elif placement is None:
            placement = usage_placement(context.job, context.ps.router.shard_of)
        self.keys = mirror_keys(placement, context.me, context.job.store_rate)
        n, dim = len(self.keys), context.dim
        self.version = np.full(n, wire.NO_VERSION, np.uint64)   # the owner version each mirror reflects
        self.pending = np.zeros((n, dim), np.float32)            # raw gradients not yet pushed
        self.pending_count = np.zeros(n, np.uint32)
        self.cache = RowCache(context.cache_dir, f"mirrors-{context.me}", context.spec, n + 16)
        self.audit: list[tuple[np.ndarray, ...]] | None = [] if os.environ.get(AUDIT_ENV) else None

    def _mirrored(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mask of keys that are mirrored, their indices among the mirrors)."""
        at = np.minimum(np.searchsorted(self.keys, keys), max(len(self.keys) - 1, 0))
        hit = self.keys[at] == keys if len(self.keys) else np.zeros(len(keys), np.bool_)
        return hit, at[hit]

    # ---- reads -----------------------------------------------------------------------------

    def rows(self, b: int, plan: pb.BatchPlan, keys: np.ndarray) -> np.ndarray:
        c = self.context
        c.peers.wait_round(2 * b - 1)   # every gateway's updates of the previous batch are on the shards
        hit, at = self._mirrored(keys)
        if len(at):
            self._refresh(at)
        rows = np.empty((len(keys), c.dim), np.float32)
        rows[hit] = self.cache.rows(keys[hit])
        others = keys[~hit]
        if len(others):
            rows[~hit] = c.ps.lookup(c.job.table, others)
        c.traffic.add(bytes_in=len(others) * (4 * c.dim + 1), bytes_out=16 * len(at) + 8 * len(others),
                      rows_fetched=len(others), rows_used=len(keys), remote_rows_fetched=c.remote_rows(others))
        if self.audit is not None and len(at):
            self._record(b, at)
        return rows

    def _refresh(self, at: np.ndarray) -> None:
        """The mirrors at `at` whose owners are more than s ahead take the owner's row, state and version,
        then apply their pending gradient again."""
        c = self.context
        stale = c.ps.refresh_stale(c.job.table, self.keys[at], self.version[at], self.s, with_state=True)
        taken = at[stale.positions]
        c.traffic.add(bytes_in=8 + len(taken) * (12 + 4 * (c.dim + c.state_floats)), rows_fetched=len(taken),
                      remote_rows_fetched=c.remote_rows(self.keys[taken]))
        if not len(taken):
            return
        assert stale.state is not None   # asked for with_state
        self.cache.insert(self.keys[taken], stale.rows, stale.state)
        self.version[taken] = stale.versions
        redo = taken[self.pending_count[taken] > 0]
        if len(redo):
            self.cache.apply(self.keys[redo], self.pending[redo])

    def _record(self, b: int, at: np.ndarray) -> None:
        c = self.context
        held = self.version[at].copy()
        owner = c.ps.refresh_stale(c.job.table, self.keys[at], np.full(len(at), wire.NO_VERSION, np.uint64), 0)
        assert self.audit is not None
        self.audit.append((np.full(len(at), b, np.int64), self.keys[at], held, owner.versions,
                           self.pending_count[at].copy()))

    # ---- writes ----------------------------------------------------------------------------

    def push(self, b: int, plan: pb.BatchPlan, keys: np.ndarray, grads: np.ndarray) -> None:
        c = self.context
        hit, at = self._mirrored(keys)
        if len(at):
            self.cache.apply(keys[hit], grads[hit])
            self.pending[at] += grads[hit]
            self.pending_count[at] += 1
        due = np.flatnonzero(self.pending_count > self.s)   # pushed before they are more than s behind
        sent_keys = np.concatenate([keys[~hit], self.keys[due]])   # disjoint: unmirrored, then mirrored
        sent_grads = np.concatenate([grads[~hit], self.pending[due]])
        sent_counts = np.concatenate([np.ones(len(keys) - len(at), np.uint32), self.pending_count[due]])
        self._write(b, sent_keys, sent_grads, sent_counts)
        self.version[due] += self.pending_count[due]
        self.pending[due] = 0
        self.pending_count[due] = 0
        c.peers.round_done(2 * b + 1)

    def _write(self, b: int, keys: np.ndarray, grads: np.ndarray, counts: np.ndarray) -> None:
        """Puts this gateway's contribution of batch b on the shards (see Writes and Rounds above)."""
        c = self.context
        if self.s == 0:   # summed with every gateway's first: the owner's one step is the single-process step
            c.push_to_shards(*c.reduced_gradients(b, keys, grads, counts))
            return
        c.peers.round_done(2 * b)
        c.peers.wait_round(2 * b)   # no update of b lands before every gateway has served b's rows
        if len(keys):
            c.ps.update(c.job.table, keys, grads, counts)
            c.traffic.add(bytes_out=len(keys) * (12 + 4 * c.dim))

    def finish(self) -> None:
        """Pushes what the mirrors still hold, and writes the audit if one was asked for."""
        c = self.context
        due = np.flatnonzero(self.pending_count)
        if len(due):
            c.ps.update(c.job.table, self.keys[due], self.pending[due], self.pending_count[due])
            c.traffic.add(bytes_out=len(due) * (12 + 4 * c.dim))
            self.version[due] += self.pending_count[due]
            self.pending_count[due] = 0
        if self.audit:
            columns = [np.concatenate(parts) for parts in zip(*self.audit)]
            np.savez(Path(os.environ[AUDIT_ENV]) / f"audit-{c.me}.npz", batch=columns[0], key=columns[1],
                     held=columns[2], owner=columns[3], pending=columns[4])

    def close(self) -> None:
        self.cache.close()


def mirror_keys(placement: Placement, host: int, store_rate: float) -> np.ndarray:
    """Host's mirrors, sorted: its first candidates, store_rate of the rows it does not own (HET-GMP's
    store_rate), as many as the placement holds.  A placement file's rows it does not own are those it
    lists with another owner (`embps partition` keeps that many candidates for its own --store-rate); a
    placement without rows (usage_placement) lists every remote row the host uses as a candidate."""
    if not 0 <= host < placement.hosts:
        raise GatewayError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"the placement has {placement.hosts} hosts, not one for trainer {host}")
    candidates = placement.mirrors[host]
    not_owned = int(np.count_nonzero(placement.row_owner != host)) if len(placement.row_keys) else len(candidates)
    count = math.ceil(store_rate * not_owned)
    if count > len(candidates):
        log.warning("fewer mirror candidates than the store rate asks for (a placement made with a smaller "
                    "--store-rate?): mirroring all of them",
                    extra={"host": host, "store_rate": store_rate, "wanted": count, "candidates": len(candidates)})
    return np.sort(candidates[:count])


def usage_placement(job: JobConfig, shard_of, batches: int = USAGE_BATCHES) -> Placement:
    """Hash placement's mirrors, for a job without a placement file: rows stay where jump hash puts them
    (host h owns shard h's rows), and host h's mirror candidates are the keys of other shards its trainer
    uses in the job's first batches, most used first (ties by key)."""
    dataset = open_dataset(job.dataset, **job.dataset_options)
    uses: list[list[np.ndarray]] = [[] for _ in range(job.trainers)]
    local = job.local_batch
    for _, batch in zip(range(min(job.steps, batches)), dataset.batches(job.global_batch, "train")):
        for t in range(job.trainers):
            uses[t].append(np.unique(feature_keys(batch.sparse[t * local:(t + 1) * local])))
    mirrors = []
    for t, used in enumerate(uses):
        keys, counts = np.unique(np.concatenate(used), return_counts=True) if used else (np.empty(0, np.uint64), [])
        remote = np.asarray(shard_of(keys)) != t
        keys, counts = keys[remote], np.asarray(counts)[remote]
        mirrors.append(keys[np.lexsort((keys, -counts))].astype(np.uint64))
    empty = np.empty(0, np.uint64)
    return Placement(hosts=job.trainers, row_keys=empty, row_owner=np.empty(0, np.uint16),
                     sample_host=np.empty(0, np.uint16), mirrors=tuple(mirrors), dataset=dataset.info.name,
                     seed=job.seed)
