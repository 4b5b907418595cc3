"""Bagpipe's trainer API over embps: a Bagpipe trainer replaces `from BagPipe import init_cache` with
`from embps.compat.bagpipe import init_cache` and trains through the job's oracle cacher, its gateway
and the shards (docs/bagpipe.md has the whole mapping).

    bp = init_cache(emb_size=48, ln_emb=ln_emb, cache_size=5000000, device="cpu", worker_id=rank,
                    world_size=size, training_worker_id=rank_d, trainer_world_size=size_d,
                    emb_optim=optim.SGD, emb_optim_params={"lr": 0.01})
    example = bp.next_batch()          # {"dense_x": [B, 13], "sparse_vector": [features, B], "target": [B, 1]}
    ly = bp.get_emb(example["sparse_vector"])   # one [B, dim] tensor per feature, on the autograd tape
    loss.backward()                    # the embedding gradients go to the gateway from here

The job is found from the environment: EMBPS_JOB names its job file, or EMBPS_ORACLE the oracle's
host:port (its GetJob).  Trainer `training_worker_id` uses the job's gateway of that index.  The
arguments must agree with the job: a Bagpipe trainer and its oracle are configured twice, and here the
job (the oracle) decides, so a disagreement is an error that says which setting to change.

What differs from Bagpipe, on purpose:
  * the embedding gradients of the trainers are averaged, as DDP averages the dense ones (Bagpipe sums
    them), so two trainers train exactly as one process on the global batch;
  * init_cache seeds torch with the job's seed, so every trainer (and every run) builds the same
    initial dense parameters: a run repeats exactly;
  * after the backward of the job's last batch the cache writes every row back to the shards (Bagpipe's
    trainers leave them in their caches); the process waits for that at exit.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from embps.api import OptimizerSpec
from embps.client.trainer_sdk import Batch, GatewayCache
from embps.client.trainer_sdk import init_cache as gateway_cache
from embps.common.job_config import JobConfig
from embps.common.job_messages import job_from_message
from embps.common.security import Security
from embps.v1 import training_pb2 as pb
from embps.v1 import training_pb2_grpc as pb_grpc

from .bagpipe_optim import SPEC_OPTIONS, describe, optimizer_spec, same_optimizer
from .job_env import ENV_JOB, ENV_ORACLE


class BagpipeConfigError(ValueError):
    """init_cache's arguments do not fit the job; the message lists every disagreement."""


def find_job(timeout: float = 60.0) -> JobConfig:
    """The job this trainer belongs to: the file EMBPS_JOB names, else the oracle at EMBPS_ORACLE."""
    if path := os.environ.get(ENV_JOB):
        return JobConfig.load(path)
    if address := os.environ.get(ENV_ORACLE):
        channel = Security.from_table({}).channel(address)
        try:
            return job_from_message(pb_grpc.OracleCacherStub(channel).GetJob(pb.GetJobRequest(), timeout=timeout,
                                                                              wait_for_ready=True))
        finally:
            channel.close()
    raise BagpipeConfigError(f"init_cache: set {ENV_JOB} to the job's file or {ENV_ORACLE} to its oracle "
                             "cacher's host:port, so this trainer finds its gateway")


def _disagreements(job: JobConfig, lookahead_value: int, emb_size: int, ln_emb: Sequence[int], cache_size: int,
                   cleanup_batch_proportion: float, emb_optim, emb_optim_params, worker_id: int,
                   world_size: int | None, training_worker_id: int, trainer_world_size: int | None) -> list[str]:
    found = []
    if lookahead_value != job.lookahead:
        found.append(f"lookahead_value={lookahead_value}, but the job plans {job.lookahead} batches ahead "
                     f"(the oracle's --lookahead-value / embps train --lookahead)")
    if cleanup_batch_proportion != job.cleanup_proportion:
        found.append(f"cleanup_batch_proportion={cleanup_batch_proportion}, but the job's is {job.cleanup_proportion}")
    if emb_size != job.dim:
        found.append(f"emb_size={emb_size}, but the job's table has dim {job.dim} (embps train --dim)")
    if not ln_emb or any(int(n) < 1 for n in ln_emb):
        found.append(f"ln_emb={list(ln_emb)!r}: one positive table size per feature is needed")
    if cache_size < 1:
        found.append(f"cache_size={cache_size}: the cache's row budget must be positive")
    trainers = job.trainers if trainer_world_size is None else trainer_world_size
    if trainers != job.trainers:
        found.append(f"trainer_world_size={trainer_world_size}, but the job has {job.trainers} trainers "
                     "(the oracle's --world-size-trainers / embps train --trainers)")
    if not 0 <= training_worker_id < job.trainers:
        found.append(f"training_worker_id={training_worker_id} is not one of the job's trainers "
                     f"0..{job.trainers - 1}")
    if world_size is not None and (world_size < job.trainers + 2 or not 0 <= worker_id < world_size):
        found.append(f"world_size={world_size}, worker_id={worker_id}: Bagpipe's world is an oracle, at least one "
                     f"embedding server and the {job.trainers} trainers, and worker_id one of its ranks")
    if emb_optim is not None:
        wanted, table = optimizer_spec(emb_optim, emb_optim_params), job.table_spec(0).optimizer
        if not same_optimizer(wanted, table):
            found.append(f"emb_optim asks for {describe(wanted)}, but the job's table trains with {describe(table)} "
                         f"({_job_optimizer_flags(wanted)})")
    return found


def _job_optimizer_flags(spec: OptimizerSpec) -> str:
    """How to start a job whose table trains with spec."""
    flags = {"lr": f"--emb-lr {spec.lr:g}", "eps": f"--emb-eps {spec.eps:g}",
             "betas": f"--emb-betas {spec.beta1:g} {spec.beta2:g}"}
    return " ".join([f"embps train --emb-optimizer {spec.kind.value}", *(flags[o] for o in SPEC_OPTIONS[spec.kind])])


def _device(device: str) -> torch.device:
    try:
        chosen = torch.device(device)
    except RuntimeError as error:
        raise BagpipeConfigError(f"device={device!r}: {error}") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise BagpipeConfigError(f"device={device!r}: this PyTorch has no CUDA device; pass device='cpu'")
    return chosen


class BagCache:
    """What init_cache returns: the batches and their embeddings of one trainer of the job."""

    def __init__(self, cache: GatewayCache, job: JobConfig, ln_emb: Sequence[int], device: torch.device):
        self._cache, self.job, self.device = cache, job, device
        self.ln_emb = np.asarray(ln_emb, np.int64)
        self._batch: Batch | None = None
        self._sparse_vector: torch.Tensor | None = None
        self.batches_taken = 0
        self._finisher = ThreadPoolExecutor(1, thread_name_prefix="bagpipe-finish")
        self._finished: Future | None = None
        self._closed = False
        atexit.register(self.close)

    def next_batch(self) -> dict[str, torch.Tensor]:
        """This trainer's slice of the next global batch: dense_x [B, n_dense], sparse_vector
        [features, B] (ids, Bagpipe's layout) and target [B, 1], on the device."""
        if self.batches_taken == self.job.steps:
            raise RuntimeError(f"next_batch: the job's stream is over; it has {self.job.steps} batches "
                               "(embps train --steps)")
        batch = self._cache.next_batch()
        if batch is None:
            raise RuntimeError(f"next_batch: the stream ended after {self.batches_taken} batches")
        self._check_ids(batch.sparse)
        self._batch, self.batches_taken = batch, self.batches_taken + 1
        if self.batches_taken == self.job.steps:   # the SDK's hook pushes the gradients first, then this one
            batch.rows.register_hook(self._finish_after_push)
        self._sparse_vector = torch.from_numpy(np.ascontiguousarray(batch.sparse.T)).to(self.device)
        return {"dense_x": batch.dense.to(self.device), "sparse_vector": self._sparse_vector,
                "target": batch.labels.reshape(-1, 1).to(self.device)}

    def get_emb(self, ls_i) -> list[torch.Tensor]:
        """The embeddings of ls_i ([features, samples] ids of the current batch; its sparse_vector or
        part of it): one [samples, dim] tensor per feature, on the device and on the autograd tape."""
        if self._batch is None:
            raise RuntimeError("get_emb: no current batch (call next_batch first)")
        if ls_i is self._sparse_vector:
            embs = self._cache.get_emb(self._batch)
        else:
            ids = torch.as_tensor(ls_i).cpu().numpy()
            if ids.ndim != 2 or len(ids) != len(self.ln_emb):
                raise ValueError(f"get_emb: ls_i must be [{len(self.ln_emb)} features, samples] ids, "
                                 f"got shape {ids.shape}")
            embs = self._cache.get_emb(np.ascontiguousarray(ids.T))
        return [e.to(self.device) for e in embs.unbind(1)]

    def _check_ids(self, sparse: np.ndarray) -> None:
        if sparse.shape[1] != len(self.ln_emb):
            raise BagpipeConfigError(f"ln_emb has {len(self.ln_emb)} tables, but the job's batches have "
                                     f"{sparse.shape[1]} features")
        over = np.flatnonzero(sparse.max(axis=0, initial=0) >= self.ln_emb)
        if len(over):
            i = int(over[0])
            raise BagpipeConfigError(f"feature {i} has id {int(sparse[:, i].max())}, beyond ln_emb[{i}]="
                                     f"{self.ln_emb[i]}: the job's tables must fit in ln_emb")

    def _finish_after_push(self, grad: torch.Tensor) -> None:
        # Finish waits for the push the SDK's hook has just started, then writes every row back.
        self._finished = self._finisher.submit(self._cache.finish)

    def close(self) -> None:
        """Waits for the write-back that follows the job's last batch, then closes; at exit, on its own."""
        if self._closed:
            return
        self._closed = True
        if self._finished is not None:
            try:
                self._finished.result()
            except Exception as error:   # at exit there is no caller to raise to
                print(f"embps.compat.bagpipe: writing the cache back failed: {error}", file=sys.stderr)
        self._finisher.shutdown(wait=True)
        self._cache.close()


def init_cache(*, lookahead_value: int = 200, emb_size: int = 1, ln_emb: Sequence[int] = (), cache_size: int = 25000,
               cleanup_batch_proportion: float = 0.25, emb_optim: type | None = None,
               emb_optim_params: Mapping | None = None, device: str = "cuda:0", worker_id: int = 0,
               world_size: int | None = None, training_worker_id: int = 0,
               trainer_world_size: int | None = None) -> BagCache:
    """Bagpipe's init_cache, with its arguments and their meaning (docs/bagpipe.md):
    lookahead_value, cleanup_batch_proportion, emb_size, the trainer counts and emb_optim /
    emb_optim_params (None: the job's own) must be the job's; ln_emb bounds each feature's ids;
    cache_size is the row budget, which the oracle enforces (its --cache-size); device receives the
    batches and embeddings; training_worker_id picks the gateway."""
    job = find_job()
    problems = _disagreements(job, lookahead_value, emb_size, ln_emb, cache_size, cleanup_batch_proportion,
                              emb_optim, emb_optim_params, worker_id, world_size, training_worker_id,
                              trainer_world_size)
    if problems:
        raise BagpipeConfigError("init_cache does not fit the job:\n  " + "\n  ".join(problems))
    chosen = _device(device)
    torch.manual_seed(job.seed)
    cache = gateway_cache(job.addresses.gateways[training_worker_id], grad_scale=job.local_batch / job.global_batch,
                          timeout=job.timeout_seconds, security=job.security)
    return BagCache(cache, job, ln_emb, chosen)
