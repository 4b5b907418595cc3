"""The reference of test_bagpipe_example.py: trainer_simple.py's model, data and steps, trained by two
trainers written on embps's own trainer SDK (embps.client.trainer_sdk).  Started by
`embps train --external-trainers`, it finds the job through EMBPS_JOB; each trainer writes its losses
to OUT/losses-<rank>.json.  Usage: python sdk_trainer.py OUT"""

import json
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from embps.client.trainer_sdk import init_cache
from embps.common.job_config import JobConfig


def simple_model(n_features: int, dim: int) -> tuple[nn.Module, nn.Module]:
    """trainer_simple.py's bottom and top MLPs, their layers made in its order (so, from the same seed,
    with its parameters)."""
    bot1, bot2 = nn.Linear(13, 64), nn.Linear(64, dim)
    top1, top2 = nn.Linear((n_features + 1) * dim, 256), nn.Linear(256, 1)
    return nn.Sequential(bot1, bot2, nn.ReLU()), nn.Sequential(top1, top2, nn.Sigmoid())


def train(rank: int, out: str) -> None:
    job = JobConfig.load(os.environ["EMBPS_JOB"])
    torch.manual_seed(job.seed)   # as embps.compat.bagpipe.init_cache does
    cache = init_cache(job.addresses.gateways[rank], grad_scale=job.local_batch / job.global_batch,
                       timeout=job.timeout_seconds)
    bot, top = simple_model(26, job.dim)
    dist.init_process_group("gloo", init_method=f"tcp://{job.addresses.trainers}", world_size=job.trainers, rank=rank)
    top, bot = DDP(top), DDP(bot)
    optimizer = torch.optim.SGD([{"params": top.parameters(), "lr": 0.01}, {"params": bot.parameters(), "lr": 0.01}])
    loss_fn = nn.BCELoss(reduction="mean")
    losses = []
    while (batch := cache.next_batch()) is not None:
        ly = list(cache.get_emb(batch).unbind(1))
        loss = loss_fn(top(torch.cat([bot(batch.dense)] + ly, dim=1)), batch.labels.reshape(-1, 1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    cache.finish()
    cache.close()
    with open(os.path.join(out, f"losses-{rank}.json"), "w") as f:
        json.dump(losses, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.set_start_method("spawn")
    trainers = [mp.Process(target=train, args=(rank, sys.argv[1])) for rank in range(2)]
    for trainer in trainers:
        trainer.start()
    for trainer in trainers:
        trainer.join()
    sys.exit(max(trainer.exitcode for trainer in trainers))
