"""`embps trainer-gateway --job FILE --trainer I`: serves trainer I its batches and rows and takes its
gradients.

sync (Bagpipe): a prefetcher reads each batch's missing rows, with optimizer state, from the shards up
to L batches ahead, as the oracle's plans say; gradients are summed with the peers and applied to the
cache (rows the next batch uses before the trainer's push is acknowledged, the rest just after); every
C batches the rows whose lease ended go back to the shards, each gateway writing its share.  Rows no
other batch in the window uses are streamed: read for their batch only (by the gateways whose
trainers use them), and their summed gradients applied by the shards.
direct (the baseline): every batch's rows are read from the shards, and the summed gradients are
applied by the shards, each gateway sending its share.
"""

from __future__ import annotations

import functools
import logging
import queue
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from embps.api import StoreError, wire
from embps.api.status import abort, grpc_code_for, reason_of
from embps.client import PSClient, ShardError
from embps.common import structured_log
from embps.common.grpc_channels import channel_options
from embps.common.grpc_service import GrpcService, wait_for_stop_signal
from embps.common.job_config import JobConfig, feature_keys
from embps.common.spec_messages import spec_from_message
from embps.v1 import training_pb2 as pb
from embps.v1 import training_pb2_grpc as pb_grpc

from .errors import GatewayError
from .peer_exchange import FINAL_ROUND, MAX_MESSAGE_BYTES, PeerExchange, sum_contributions
from .row_cache import RowCache

COMMAND = "trainer-gateway"
HELP = "cache rows for one trainer and sum its gradients with the other gateways"
SERVICE_NAMES = (pb.DESCRIPTOR.services_by_name["TrainerGateway"].full_name,
                 pb.DESCRIPTOR.services_by_name["GatewayPeer"].full_name)
log = logging.getLogger("embps.trainer_gateway")


def add_arguments(parser) -> None:
    parser.add_argument("--job", required=True, help="the job's TOML file")
    parser.add_argument("--trainer", type=int, required=True, help="which trainer this gateway serves")
    parser.add_argument("--cache-dir", default="", help="where the cache's table lives (default: /dev/shm)")


def _reported(method):
    """Turns gateway, shard and planning failures into gRPC statuses with their message (and reason).
    Anything else is a bug that may have left the gateway half-way through a step: it is logged, and
    fails the gateway, so that every later call, and so the job, stops with it."""
    @functools.wraps(method)
    def handler(self, request, context):
        try:
            return method(self, request, context)
        except GatewayError as error:
            context.abort(error.code, str(error))
        except ShardError as error:
            abort(context, error.code, f"parameter shard: {error}", error.reason)
        except StoreError as error:   # malformed bytes in the request
            abort(context, grpc_code_for(error), str(error), reason_of(error))
        except Exception as error:
            log.exception("internal error", extra={"method": method.__name__, "trainer": self.me})
            self._fail(GatewayError(grpc.StatusCode.INTERNAL, f"{method.__name__} failed: {error!r}"))
            context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method.__name__}; see the gateway's log")
    return handler


class Traffic:
    """Payload bytes to and from the shards, and rows fetched versus rows used."""

    def __init__(self):
        self.lock = threading.Lock()
        self.bytes_in = self.bytes_out = self.rows_fetched = self.rows_used = 0

    def add(self, bytes_in=0, bytes_out=0, rows_fetched=0, rows_used=0):
        with self.lock:
            self.bytes_in += bytes_in
            self.bytes_out += bytes_out
            self.rows_fetched += rows_fetched
            self.rows_used += rows_used


class Gateway(pb_grpc.TrainerGatewayServicer, pb_grpc.GatewayPeerServicer):
    def __init__(self, job: JobConfig, trainer: int, cache_dir: Path):
        self.job, self.me = job, trainer
        self.ps = PSClient(job.cluster_config())
        info = self.ps.describe_table(job.table)
        self.spec = spec_from_message(info.spec)
        self.dim, self.state_floats = self.spec.dim, info.state_floats
        self.peers = PeerExchange(trainer, job.addresses.gateways, job.timeout_seconds,
                                  initial_round=0 if job.mode == "sync" else -1, security=job.security)
        self.traffic = Traffic()
        self.cond = threading.Condition()
        self.plans: dict[int, pb.BatchPlan] = {}
        self.local: dict[int, tuple[np.ndarray, np.ndarray]] = {}   # batch -> this trainer's keys, inverse
        self.plans_end: int | None = None          # number of batches, once the stream has ended
        self.failure: GatewayError | None = None   # from a background thread: every call reports it
        self.next_batch = 0                         # the batch NextBatch serves next
        self.pushed = -1                            # last batch whose gradients were pushed
        self.wait_seconds = 0.0
        self.steps = 0
        self.cache: RowCache | None = None         # sync mode: made when the first plan tells the batch shape
        self.cache_dir = cache_dir
        if job.mode == "sync":
            self.prefetched = -1                    # last batch whose rows are in the cache
            self.streamed: dict[int, tuple[np.ndarray, np.ndarray]] = {}   # batch -> (keys, rows) read for it
            self.later_applied = -1                 # last batch whose deferred gradients are applied
            self.later: queue.Queue = queue.Queue()
            self._start(self._prefetch_all, "prefetcher")
            self._start(self._apply_later, "later-applier")
        self._start(self._read_plans, "plan-reader")

    def _make_cache(self, plan: pb.BatchPlan) -> RowCache:
        """Sized for the distinct rows of about L + 2C + 2 batches (see LookaheadPlanner), at most the table."""
        features = len(plan.features.sparse) // 8 // max(plan.features.samples, 1)
        window = self.job.lookahead + 2 * self.job.cleanup_every + 2
        capacity = min(window * self.job.global_batch * features, self.spec.capacity) + 4096
        directory = Path(tempfile.mkdtemp(prefix=f"embps-gateway-{self.me}-", dir=self.cache_dir))   # one per process
        return RowCache(directory, self.spec, capacity)

    # ---- background work ------------------------------------------------------------------

    def _start(self, target, name: str) -> None:
        def guarded():
            try:
                target()
            except GatewayError as error:
                self._fail(error)
            except ShardError as error:
                self._fail(GatewayError(error.code, f"parameter shard: {error}"))
            except Exception as error:   # a bug: report it rather than hang the job
                log.exception("background failure", extra={"thread": name})
                self._fail(GatewayError(grpc.StatusCode.INTERNAL, f"{name} failed: {error!r}"))
        threading.Thread(target=guarded, name=name, daemon=True).start()

    def _fail(self, error: GatewayError) -> None:
        log.error("gateway failed", extra={"trainer": self.me, "error": str(error)})
        with self.cond:
            self.failure = error
            self.cond.notify_all()

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + self.job.timeout_seconds
        with self.cond:
            while not ready():
                if self.failure:
                    raise self.failure
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise GatewayError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                       f"gateway {self.me} waited {self.job.timeout_seconds:.0f} s for {what}")
                self.cond.wait(min(remaining, 1.0))
            if self.failure:
                raise self.failure

    def _read_plans(self) -> None:
        oracle = pb_grpc.OracleCacherStub(self.job.security.channel(self.job.addresses.oracle,
                                                                    channel_options(MAX_MESSAGE_BYTES)))
        count = 0
        try:
            for plan in oracle.StreamPlans(pb.SubscribeRequest(trainer=self.me)):
                # Back-pressure: keep at most L + C plans beyond what the trainer has reached.
                self._wait(lambda: plan.batch <= self.next_batch + self.job.lookahead + self.job.cleanup_every,
                           "the trainer to catch up")
                local = self._local_keys(plan)   # here, off the trainer's critical path
                with self.cond:
                    self.plans[plan.batch] = plan
                    self.local[plan.batch] = local
                    self.cond.notify_all()
                count += 1
        except grpc.RpcError as error:
            raise GatewayError(grpc.StatusCode.UNAVAILABLE,
                               f"oracle cacher at {self.job.addresses.oracle}: {error.code().name}: "
                               f"{error.details()}") from None
        with self.cond:
            self.plans_end = count
            self.cond.notify_all()

    def _prefetch_all(self) -> None:
        b = 0
        while True:
            self._wait(lambda: b in self.plans or self.plans_end is not None, f"the plan of batch {b}")
            if b not in self.plans:
                return
            # Stay within the window: rows for batches more than L ahead would overfill the cache.
            self._wait(lambda: b <= self.next_batch + self.job.lookahead, "the trainer to advance")
            plan = self.plans[b]
            if self.cache is None:
                self.cache = self._make_cache(plan)
            stream = wire.keys_from_bytes(plan.stream)
            keys = np.setdiff1d(wire.keys_from_bytes(plan.prefetch), stream, assume_unique=True)
            mine = np.intersect1d(stream, self.local[b][0], assume_unique=True)
            self.peers.wait_round(plan.fetch_after_round)
            if len(keys):
                rows, state, _ = self.ps.lookup(self.job.table, keys, with_state=True)
                self.cache.insert(keys, rows, state)
                self.traffic.add(bytes_in=rows.nbytes + state.nbytes + len(keys), bytes_out=keys.nbytes,
                                 rows_fetched=len(keys))
            streamed = self.ps.lookup(self.job.table, mine) if len(mine) else np.empty((0, self.dim), np.float32)
            self.traffic.add(bytes_in=streamed.nbytes + len(mine), bytes_out=mine.nbytes, rows_fetched=len(mine))
            with self.cond:
                self.streamed[b] = (mine, streamed)
                self.prefetched = b
                self.cond.notify_all()
            b += 1

    def _apply_later(self) -> None:
        while True:
            batch, keys, grads = self.later.get()
            if batch is None:
                return
            if len(keys):
                self.cache.apply(keys, grads)
            with self.cond:
                self.later_applied = batch
                self.cond.notify_all()

    # ---- TrainerGateway ---------------------------------------------------------------------

    @_reported
    def NextBatch(self, request, context):
        b = self.next_batch
        if self.pushed != b - 1:
            raise GatewayError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"push the gradients of batch {b - 1} before asking for batch {b}")
        started = time.monotonic()
        self._wait(lambda: b in self.plans or (self.plans_end is not None and b >= self.plans_end),
                   f"the plan of batch {b}")
        if b not in self.plans:
            return pb.TrainingBatch(batch=b, done=True)
        plan = self.plans[b]
        keys, inverse = self.local[b]
        if self.job.mode == "sync":
            rows = self._cached_rows(b, plan, keys)
        else:
            self.peers.wait_round(b - 1)   # every gateway's updates of the previous batch are on the shards
            rows = self.ps.lookup(self.job.table, keys)
            self.traffic.add(bytes_in=rows.nbytes + len(keys), bytes_out=keys.nbytes, rows_fetched=len(keys),
                             rows_used=len(keys))
        self.wait_seconds += time.monotonic() - started
        with self.cond:
            del self.local[b]   # the prefetcher is past b: rows are in hand
            self.next_batch = b + 1
            self.cond.notify_all()
        return pb.TrainingBatch(batch=b, features=plan.features, keys=keys.tobytes(), rows=rows.tobytes(),
                                inverse=inverse.astype(np.int32).tobytes())

    @staticmethod
    def _local_keys(plan: pb.BatchPlan) -> tuple[np.ndarray, np.ndarray]:
        """This trainer's distinct keys in the batch (sorted) and each sample's index into them."""
        sparse = np.frombuffer(plan.features.sparse, np.int64).reshape(plan.features.samples, -1)
        return np.unique(feature_keys(sparse), return_inverse=True)

    def _cached_rows(self, b: int, plan: pb.BatchPlan, keys: np.ndarray) -> np.ndarray:
        evict = wire.keys_from_bytes(plan.evict)
        is_round = b and b % self.job.cleanup_every == 0
        # Rows of this batch may have deferred updates from batch b-2; an eviction needs all of b-1's.
        self._wait(lambda: self.later_applied >= b - (1 if is_round else 2), "deferred gradient updates")
        if is_round:
            if len(evict):
                rows, state = self.cache.take(evict)
                mine = np.arange(len(evict)) % self.peers.n == self.me
                self.ps.assign(self.job.table, evict[mine], rows[mine], state[mine])
                self.traffic.add(bytes_out=int(mine.sum()) * (8 + 4 * (self.dim + self.state_floats)))
            self.peers.round_done(b)   # its evictions, and the streamed updates before b, are on the shards
        self._wait(lambda: self.prefetched >= b, f"the prefetch of batch {b}")
        self.traffic.add(rows_used=len(plan.keys) // 8)
        with self.cond:
            stream_keys, stream_rows = self.streamed.pop(b)
        rows = np.empty((len(keys), self.dim), np.float32)
        streamed = np.isin(keys, stream_keys, assume_unique=True)
        rows[streamed] = stream_rows   # both sorted
        rows[~streamed] = self.cache.rows(keys[~streamed])
        return rows

    @_reported
    def PushGradients(self, request, context):
        b = request.batch
        if b != self.next_batch - 1 or self.pushed == b:
            raise GatewayError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"gradients for batch {b}, but the trainer holds batch {self.next_batch - 1}")
        keys = wire.keys_from_bytes(request.keys)
        grads = wire.matrix_from_bytes(request.grads, len(keys), self.dim, "grads")
        if not np.isfinite(grads).all():
            raise GatewayError(grpc.StatusCode.INVALID_ARGUMENT, f"gradients of batch {b} contain NaN or Inf")
        plan = self.plans[b]
        self.peers.contribute(b, keys, grads)
        batch_keys = wire.keys_from_bytes(plan.keys)
        summed = sum_contributions(batch_keys, self.peers.gather(b), self.dim)
        if self.job.mode == "sync":
            streamed = np.isin(batch_keys, wire.keys_from_bytes(plan.stream), assume_unique=True)
            self._update_shards(batch_keys[streamed], summed[streamed])
            now = np.isin(batch_keys, wire.keys_from_bytes(plan.sync_now), assume_unique=True) & ~streamed
            self.cache.apply(batch_keys[now], summed[now])
            later = ~now & ~streamed
            self.later.put((b, batch_keys[later], summed[later]))
        else:
            self._update_shards(batch_keys, summed)
            self.peers.round_done(b)
        with self.cond:
            self.pushed = b
            self.steps += 1
            self.plans.pop(b - 1, None)
        return pb.PushAck()

    @_reported
    def Finish(self, request, context):
        if self.job.mode == "sync":
            self.later.put((None, None, None))
            self._wait(lambda: self.later_applied >= self.pushed, "deferred gradient updates")
            if self.cache is not None:
                self._write_back_all()
        self.peers.round_done(FINAL_ROUND)
        self.peers.wait_round(FINAL_ROUND)
        log.info("gateway finished", extra={"trainer": self.me, "steps": self.steps})
        return self.Stats(request, context)

    def _update_shards(self, keys: np.ndarray, summed: np.ndarray) -> None:
        """The shards apply the summed gradients, each gateway sending its share (every gateway has the
        same keys in the same order)."""
        mine = np.arange(len(keys)) % self.peers.n == self.me
        if mine.any():
            self.ps.update(self.job.table, keys[mine], summed[mine])
            self.traffic.add(bytes_out=int(mine.sum()) * (8 + 4 * self.dim))

    def _write_back_all(self) -> None:
        keys, rows, state = self.cache.everything()
        order = np.argsort(keys)   # the replicas agree on the order of sorted keys
        mine = order[np.arange(len(keys)) % self.peers.n == self.me]
        for start in range(0, len(mine), 32768):
            part = mine[start:start + 32768]
            self.ps.assign(self.job.table, keys[part], rows[part], state[part])
        self.traffic.add(bytes_out=len(mine) * (8 + 4 * (self.dim + self.state_floats)))

    def Stats(self, request, context):
        t = self.traffic
        return pb.GatewayStats(steps=self.steps, rows_used=t.rows_used, rows_fetched=t.rows_fetched,
                               ps_bytes_in=t.bytes_in, ps_bytes_out=t.bytes_out, mode=self.job.mode,
                               wait_seconds=self.wait_seconds)

    # ---- GatewayPeer -----------------------------------------------------------------------

    @_reported
    def Contribute(self, request, context):
        keys = wire.keys_from_bytes(request.keys)
        self.peers.receive(request.batch, request.trainer, keys,
                           wire.matrix_from_bytes(request.grads, len(keys), self.dim, "grads"))
        return pb.PeerAck()

    @_reported
    def NotifyRound(self, request, context):
        self.peers.receive_round(request.trainer, request.round)
        return pb.PeerAck()

    def shutdown(self) -> None:
        """Wakes every waiting call with an error, so the process can stop now rather than at a timeout."""
        with self.cond:
            self.failure = GatewayError(grpc.StatusCode.UNAVAILABLE, f"gateway {self.me} is stopping")
            self.cond.notify_all()
        self.peers.shutdown()

    def close(self) -> None:
        self.peers.close()
        self.ps.close()
        if self.cache is not None:
            self.cache.close()


def serve(job: JobConfig, trainer: int, cache_dir: Path) -> tuple[GrpcService, Gateway]:
    service = GrpcService(job.addresses.gateways[trainer], job.security, SERVICE_NAMES, 8 + 2 * job.trainers,
                          MAX_MESSAGE_BYTES)
    gateway = Gateway(job, trainer, cache_dir)
    pb_grpc.add_TrainerGatewayServicer_to_server(gateway, service.server)
    pb_grpc.add_GatewayPeerServicer_to_server(gateway, service.server)
    service.start()
    return service, gateway


def run(args) -> int:
    job = JobConfig.load(args.job)
    structured_log.configure("INFO")
    cache_dir = Path(args.cache_dir or ("/dev/shm" if Path("/dev/shm").is_dir() else tempfile.gettempdir()))
    service, gateway = serve(job, args.trainer, cache_dir)
    log.info("gateway serving", extra={"trainer": args.trainer, "mode": job.mode,
                                       "address": job.addresses.gateways[args.trainer]})
    wait_for_stop_signal()
    gateway.shutdown()
    service.stop(2)
    gateway.close()
    return 0
