"""One data-parallel trainer (`embps trainer`).

Dense parameters are trained with PyTorch DDP (gloo) across the trainers; embeddings come from this
trainer's gateway and their gradients go back to it (embps.client.trainer_sdk).  Rank 0 writes the
loss curve, the held-out AUC / log-loss (on ranking queries also hit rate@10 / NDCG@10) and the dense
parameters to DIR.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from embps.client import PSClient
from embps.client.trainer_sdk import RemoteEmbeddings, init_cache
from embps.common import structured_log
from embps.common.job_config import JobConfig, feature_keys
from embps.common.job_messages import GATEWAY_MODES
from embps.models import build_model, check_model_fits
from embps.models.metrics import auc, evaluate, logloss, ranking_metrics
from embps.datasets import open_dataset

log = logging.getLogger("embps.trainer")
RANKING_K = 10   # hit rate@10 and NDCG@10, as Caser reports them
# DDP allreduces a bucket as soon as backward has made its gradients.  Its default first bucket (1 MiB) holds
# the whole of these models' dense parameters (DLRM: 0.57 MB), so the allreduce waited for the end of
# backward; buckets of 128 KB let the top MLP's go on the wire while the rest of backward runs.
DDP_BUCKET_MB = 0.125
DENSE_OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad}


def evaluate_on_shards(job: JobConfig, model, dataset) -> dict:
    """Held-out metrics with the rows as the shards hold them after training: AUC and log-loss over
    job.eval_batches batches; on a data set of ranking queries, over every query, with hit rate@10 and
    NDCG@10 of the held-out item among its candidates."""
    info = dataset.info
    with PSClient(job.cluster_config()) as ps:
        def scores(dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
            keys, inverse = np.unique(feature_keys(sparse), return_inverse=True)
            rows = torch.from_numpy(ps.lookup(job.table, keys))
            embs = rows[torch.from_numpy(inverse.reshape(sparse.shape).astype(np.int64))]
            with torch.no_grad():
                return model(torch.from_numpy(dense), embs).numpy()

        if not info.eval_candidates:
            batches = ((b.dense, b.sparse, b.labels)
                       for _, b in zip(range(job.eval_batches), dataset.batches(job.global_batch, "eval")))
            return evaluate(lambda dense, sparse: sigmoid(scores(dense, sparse)), batches)
        queries = next(dataset.batches(info.n_eval, "eval"))
        chunk = info.eval_candidates * max(1, job.global_batch // info.eval_candidates)
        logits = np.concatenate([scores(queries.dense[i:i + chunk], queries.sparse[i:i + chunk])
                                 for i in range(0, len(queries), chunk)])
        return {"auc": auc(queries.labels, logits), "logloss": logloss(queries.labels, sigmoid(logits)),
                **ranking_metrics(logits.reshape(-1, info.eval_candidates), k=RANKING_K)}


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return torch.sigmoid(torch.from_numpy(logits)).numpy()


def train(job: JobConfig, rank: int, out: Path) -> dict:
    dataset = open_dataset(job.dataset, **job.dataset_options)
    info = dataset.info
    check_model_fits(job.model, info)
    model = build_model(job.model, info.n_dense, len(info.table_sizes), job.dim, seed=job.seed)
    ddp = DistributedDataParallel(model, broadcast_buffers=False,   # the models' buffers are constants
                                  bucket_cap_mb=DDP_BUCKET_MB)
    optimizer = DENSE_OPTIMIZERS[job.dense_optimizer](ddp.parameters(), lr=job.dense_lr)
    cache = init_cache(job.addresses.gateways[rank], grad_scale=job.local_batch / job.global_batch,
                       timeout=job.timeout_seconds, security=job.security)
    embeddings = RemoteEmbeddings(cache)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    progress = open(out / "progress.jsonl", "a") if rank == 0 else None
    losses, step_seconds, batch_aucs = [], [], []
    started = time.perf_counter()
    while (batch := cache.next_batch()) is not None:
        logits = ddp(batch.dense, embeddings(batch))
        loss = loss_fn(logits, batch.labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        global_loss = loss.detach().clone()
        dist.all_reduce(global_loss)   # the mean over the global batch: slices are equal
        losses.append(global_loss.item() / job.trainers)
        if rank == 0:   # AUC of this trainer's slice, before the step learns from it: a held-out view
            batch_aucs.append(auc(batch.labels.numpy(), logits.detach().numpy()))
        step_seconds.append(time.perf_counter() - started)
        if progress:
            progress.write(json.dumps({"step": batch.number + 1, "loss": losses[-1]}) + "\n")
            progress.flush()
    stats = cache.finish()
    cache.close()
    all_stats = [None] * job.trainers
    gateway = {**{f.name: v for f, v in stats.ListFields()}, "mode": GATEWAY_MODES.from_message(stats.mode)}
    dist.all_gather_object(all_stats, gateway)
    result: dict[str, object] = {"losses": losses, "batch_aucs": batch_aucs, "step_end_seconds": step_seconds,
                                 "gateways": all_stats}
    if rank == 0:
        result["eval"] = evaluate_on_shards(job, model, dataset)
        torch.save(model.state_dict(), out / "dense.pt")
        (out / "metrics.json").write_text(json.dumps(result))
    return result


def main(job_file: str, rank: int, out: str) -> None:
    job = JobConfig.load(job_file)
    structured_log.configure("INFO")
    torch.set_num_threads(1)   # one core per trainer: the gateways and shards need the others
    dist.init_process_group("gloo", init_method=f"tcp://{job.addresses.trainers}", rank=rank,
                            world_size=job.trainers, timeout=datetime.timedelta(seconds=job.timeout_seconds))
    Path(out).mkdir(parents=True, exist_ok=True)
    train(job, rank, Path(out))
    # Every rank leaves together: a gloo group torn down while a peer still holds its connections
    # aborts the process ("terminate called without an active exception").  On an error the process
    # exits without this, and the launcher stops the job.
    dist.barrier()
    dist.destroy_process_group()
