"""`embps oracle-cacher --job FILE`: reads the training stream, plans it (LookaheadPlanner) and streams
every trainer gateway its plans and feature slices.

With a placement (the job's `placement`), trainer h trains the samples the placement gives host h
(dealing); a global batch is the union of the trainers' batches, and is planned as one.

One planner thread feeds a bounded queue per trainer: it plans at most `queue_batches` ahead of the
slowest subscriber (back-pressure; memory stays bounded, nothing is preloaded).  Trainers join at the
start only: all `trainers` gateways subscribe once; a second subscription for a trainer is refused.
"""

from __future__ import annotations

import logging
import queue
import threading

import grpc
import numpy as np

from embps.api.status import abort
from embps.client import PSClient
from embps.common import structured_log
from embps.common.grpc_channels import TRAINING_MAX_MESSAGE_BYTES
from embps.common.grpc_service import GrpcService, ServerLimits, run_service
from embps.common.job_config import JobConfig
from embps.common.job_messages import job_to_message
from embps.compat.bagpipe_flags import add_oracle_flags, apply_oracle_flags
from embps.v1 import training_pb2 as pb
from embps.v1 import training_pb2_grpc as pb_grpc

from embps.datasets import open_dataset
from embps.placement.placement_file import load_placement

from .cache_budget import CacheBudgetExceeded, check_cache_budget
from .dealing import dealt_batches
from .lookahead_planner import LookaheadPlanner

COMMAND = "oracle-cacher"
HELP = "plan caching over the training stream and feed the trainer gateways"
SERVICE = pb.DESCRIPTOR.services_by_name["OracleCacher"]
GRACE_SECONDS = 2.0
log = logging.getLogger("embps.oracle_cacher")


def add_arguments(parser) -> None:
    parser.add_argument("--job", required=True, help="the job's TOML file")
    parser.add_argument("--queue-batches", type=int, default=0,
                        help="plans buffered per trainer (default: the lookahead)")
    add_oracle_flags(parser)


def slice_message(batch, trainer: int, local: int) -> pb.FeatureSlice:
    part = slice(trainer * local, (trainer + 1) * local)
    return pb.FeatureSlice(samples=local, dense=np.ascontiguousarray(batch.dense[part], np.float32).tobytes(),
                           sparse=np.ascontiguousarray(batch.sparse[part], np.int64).tobytes(),
                           labels=np.ascontiguousarray(batch.labels[part], np.float32).tobytes())


class OracleCacher(pb_grpc.OracleCacherServicer):
    def __init__(self, job: JobConfig, queue_batches: int = 0):
        self.job = job
        self.dataset = open_dataset(job.dataset, **job.dataset_options)
        # A placement made for another number of hosts or another dataset is refused here, at the start.
        self.train_batches = self._train_batches()
        # The job's table: one row per (feature, id).  A deployment starts from here; an existing table
        # with another spec is an error, not something to train over.
        with PSClient(job.cluster_config()) as ps:
            ps.create_table(job.table, job.table_spec(sum(self.dataset.info.table_sizes)), if_not_exists=True)
        depth = queue_batches or max(2, job.lookahead)
        self.queues: list[queue.Queue] = [queue.Queue(maxsize=depth) for _ in range(job.trainers)]
        self.subscribed: set[int] = set()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.failure = ""
        self.planner = threading.Thread(target=self._plan_all, name="planner", daemon=True)
        self.planner.start()

    def _plan_all(self) -> None:
        job = self.job
        planner = LookaheadPlanner(self.dataset.info.table_sizes, job.lookahead, job.cleanup_every)
        data = self.train_batches
        window: list = []   # the batches whose plans are not yet out: the planner reads L ahead

        def sparse_stream():
            for _, batch in zip(range(job.steps), data):
                window.append(batch)
                yield batch.sparse

        try:
            for plan in planner.plan(sparse_stream()):
                batch = window.pop(0)
                common = dict(batch=plan.batch, keys=plan.keys.tobytes(), sync_now=plan.sync_now.tobytes(),
                              prefetch=plan.prefetch.tobytes(), stream=plan.stream.tobytes(),
                              evict=plan.evict.tobytes(),
                              fetch_after_round=plan.fetch_after_round)
                for trainer, q in enumerate(self.queues):
                    # A dict, not a BatchPlan: wrapping a built message would copy it again.
                    message = dict(features=slice_message(batch, trainer, job.local_batch), **common)
                    self._put(q, pb.StreamPlansResponse(plan=message))
            for q in self.queues:
                self._put(q, None)   # end of stream
            log.info("planning finished", extra={"batches": job.steps})
        except Exception as error:
            log.exception("planning failed")
            self.failure = f"planning failed: {error!r}"
            for q in self.queues:
                q.put(None)

    def _train_batches(self):
        job = self.job
        if not job.placement:
            return self.dataset.batches(job.global_batch, "train")
        placement = load_placement(job.placement, hosts=job.trainers, dataset=self.dataset.info.name)
        return dealt_batches(self.dataset, placement, job.local_batch)

    def _put(self, q: queue.Queue, item) -> None:
        """Blocks while the trainer's queue is full: the slowest trainer paces the planner."""
        while True:
            try:
                return q.put(item, timeout=1.0)
            except queue.Full:
                if self.stopping.is_set():
                    raise RuntimeError("the oracle is stopping") from None

    def GetJob(self, request, context):
        return job_to_message(self.job)

    def StreamPlans(self, request, context):
        trainer = request.trainer
        if trainer >= self.job.trainers:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                  f"trainer {trainer} is not in this job (trainers 0..{self.job.trainers - 1})")
        with self.lock:
            if trainer in self.subscribed:
                abort(context, grpc.StatusCode.ALREADY_EXISTS,
                      f"trainer {trainer} already subscribed; trainers join once, at the start")
            self.subscribed.add(trainer)
        log.info("trainer subscribed", extra={"trainer": trainer})
        q = self.queues[trainer]
        while context.is_active():
            try:
                plan = q.get(timeout=1.0)
            except queue.Empty:
                continue
            if plan is None:
                if self.failure:
                    abort(context, grpc.StatusCode.INTERNAL, self.failure)
                return
            yield plan


def make_service(job: JobConfig, queue_batches: int = 0) -> tuple[GrpcService, OracleCacher]:
    """The oracle's gRPC service, not yet started."""
    # A gateway takes its next plan once its trainer has caught up, which it waits for timeout_seconds at most.
    limits = ServerLimits(workers=job.trainers + 4, max_message_bytes=TRAINING_MAX_MESSAGE_BYTES,
                          stream_send_timeout_seconds=job.timeout_seconds)
    service = GrpcService(job.addresses.oracle, job.security, limits)
    oracle = OracleCacher(job, queue_batches)
    service.add(oracle, SERVICE)
    return service, oracle


def job_of(args) -> JobConfig:
    """The job file's job with Bagpipe's flags applied.  What they change is written back to the file, the
    job's one description: the oracle starts first (it creates the table the gateways open), so every
    process that reads the file after it agrees with it."""
    job = JobConfig.load(args.job)
    try:
        effective = apply_oracle_flags(job, args)
    except (OSError, ValueError) as error:   # a bad table file, or settings a job cannot have
        raise SystemExit(f"embps oracle-cacher: {error}") from None
    if effective != job:
        effective.save(args.job)
        log.info("job file updated from Bagpipe's flags", extra={"job": args.job})
    if args.cache_size:
        try:
            peak = check_cache_budget(effective, open_dataset(effective.dataset, **effective.dataset_options),
                                      args.cache_size)
        except CacheBudgetExceeded as error:
            raise SystemExit(f"embps oracle-cacher: {error}") from None
        log.info("the window fits the cache", extra={"peak_rows": peak, "cache_size": args.cache_size})
    return effective


def run(args) -> int:
    structured_log.configure("INFO")
    job = job_of(args)
    service, oracle = make_service(job, args.queue_batches)
    serving = {"address": job.addresses.oracle, "steps": job.steps, "lookahead": job.lookahead,
               "cleanup_every": job.cleanup_every}
    return run_service(service, GRACE_SECONDS, started=lambda: log.info("oracle serving", extra=serving),
                       stopping=oracle.stopping.set)
