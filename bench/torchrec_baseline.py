"""TorchRec baseline: the same embps.models architecture trained with TorchRec on CPU, timed per iteration.

The embedding tables live in TorchRec modules, one table per feature ("t{i}" / "f{i}"), sum pooling over
exactly one id per sample and feature (so a pooled bag is a plain row lookup), fed KeyedJaggedTensors
built from the same (dense, sparse, labels) numpy batches that embps.models.LocalTrainer takes. The
embedding optimizer is fused into the backward pass by fbgemm's CPU TBE kernels (EXACT_SGD or
EXACT_ADAGRAD), the dense optimizer is a plain torch optimizer over the embps model's parameters.
Two ways to build it (`mode`):

  fused  torchrec.modules.fused_embedding_modules.FusedEmbeddingBagCollection: an EmbeddingBagCollection
         backed by fbgemm's SplitTableBatchedEmbeddingBagsCodegen with the optimizer fused in (default).
  dmp    the full distributed stack on one rank: an EmbeddingBagCollection on the meta device,
         apply_optimizer_in_backward(SGD | Adagrad) on its weights, an EmbeddingShardingPlanner plan
         constrained to table_wise sharding with the FUSED compute kernel, DistributedModelParallel over a
         single-process gloo group (an in-memory HashStore: no sockets). The dense part is wrapped in DDP
         by DMP, as in a real job.

Both train the same thing as LocalTrainer (BCE-with-logits mean over the global batch, summed gradients of
repeated ids, torch's SGD / Adagrad formulas); tests/models/test_models_torchrec.py checks the fused mode
against LocalTrainer step for step.

Timing: an iteration is KJT construction from the numpy batch + forward + backward (with the fused
embedding update) + dense optimizer step; LocalTrainer's iteration is its step() on the same numpy batch.
The first `warmup` batches are untimed; the result is the mean over the rest. The __main__ runs every
contender `--reps` times, alternating, and prints the best and the median round: on a shared 2-core machine
other processes' load is the biggest error. With torch's default 2 threads that load can slow every
contender down many times over (an OpenMP thread waiting for a core it does not get); --threads 1 gives
the steadiest figures there.

Needs (beyond the venv's torch 2.13.0):
    pip install torch==2.13.0 fbgemm-gpu-cpu==1.8.0
    pip install --no-deps torchrec==1.8.0
    pip install torch==2.13.0 tensordict==0.15.3 pyre-extensions==0.0.32
(torchrec's own requirements name fbgemm-gpu, the CUDA build, and torchmetrics, which is why it goes in
with --no-deps; torchmetrics and tqdm are not needed for anything here.)

    python bench/torchrec_baseline.py [--model dlrm] [--tables 26] [--rows 10000] [--dim 32] [--batch 1024]
"""

import argparse
import functools
import logging
import time
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embps.models import MODELS, LocalTrainer, build_model

MODES = ("fused", "dmp")


def _quiet_import_torchrec():
    # fbgemm_gpu warns at import about every SSD / deprecated module it cannot load; none is used here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torchrec  # noqa: F401
        from torchrec.modules import fused_embedding_modules  # noqa: F401


def make_kjt(sparse: np.ndarray):
    """KeyedJaggedTensor with keys f0..f{n-1}, each sample holding exactly one id per feature.
    KJT values are feature-major: all of f0's ids for the batch, then f1's, ..."""
    from torchrec import KeyedJaggedTensor

    sparse = np.asarray(sparse, dtype=np.int64)
    batch, n_tables = sparse.shape
    return KeyedJaggedTensor.from_lengths_sync(
        keys=[f"f{i}" for i in range(n_tables)],
        values=torch.from_numpy(np.ascontiguousarray(sparse.T).reshape(-1)),
        lengths=torch.ones(batch * n_tables, dtype=torch.int64),
    )


class _TorchRecModel(nn.Module):
    """An EmbeddingBagCollection-like module in front of an embps model: ids -> rows -> model."""

    def __init__(self, ebc: nn.Module, dense_model: nn.Module, n_tables: int, dim: int):
        super().__init__()
        self.ebc = ebc
        self.dense_model = dense_model
        self.n_tables, self.dim = n_tables, dim

    def forward(self, dense: torch.Tensor, kjt) -> torch.Tensor:
        pooled = self.ebc(kjt).values()  # [B, n_tables * dim], keys in table order
        return self.dense_model(dense, pooled.view(-1, self.n_tables, self.dim))


def _dense_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr)
    raise ValueError(f"dense_optimizer must be sgd, adam or adagrad, got {name!r}")


def _emb_optimizer(name: str, lr: float, eps: float) -> tuple[type[torch.optim.Optimizer], dict]:
    if name == "sgd":
        return torch.optim.SGD, {"lr": lr}
    if name == "adagrad":
        return torch.optim.Adagrad, {"lr": lr, "eps": eps}
    raise ValueError(f"emb_optimizer must be sgd or adagrad, got {name!r}")


class TorchRecTrainer:
    """model + tables trained with TorchRec; step() mirrors LocalTrainer.step()."""

    def __init__(self, model_name: str, n_dense: int, table_sizes: Sequence[int], dim: int,
                 emb_optimizer: str, lr: float, emb_eps: float = 1e-8, dense_optimizer: str = "adam",
                 dense_lr: float = 1e-3, seed: int = 0, tables: list[np.ndarray] | None = None,
                 mode: str = "fused"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        _quiet_import_torchrec()
        from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, PoolingType

        self.mode = mode
        self.n_tables = len(table_sizes)
        configs = [EmbeddingBagConfig(name=f"t{i}", embedding_dim=dim, num_embeddings=int(rows),
                                      feature_names=[f"f{i}"], pooling=PoolingType.SUM)
                   for i, rows in enumerate(table_sizes)]
        opt_cls, opt_kwargs = _emb_optimizer(emb_optimizer, lr, emb_eps)
        self.dense_model = build_model(model_name, n_dense, self.n_tables, dim, seed=seed)
        self._own_group = False

        if mode == "fused":
            from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection

            ebc = FusedEmbeddingBagCollection(configs, optimizer_type=opt_cls, optimizer_kwargs=opt_kwargs,
                                              device=torch.device("cpu"))
            self._weights = [ebc.embedding_bags[f"t{i}"].weight for i in range(self.n_tables)]
            if tables is not None:
                with torch.no_grad():
                    for w, t in zip(self._weights, tables, strict=True):
                        w.copy_(torch.from_numpy(np.asarray(t, dtype=np.float32)))
            self.module: nn.Module = _TorchRecModel(ebc, self.dense_model, self.n_tables, dim)
        else:
            if tables is not None:
                raise ValueError("mode='dmp' initialises its own tables; initial tables need mode='fused'")
            with warnings.catch_warnings():  # deprecation notices from torch.jit, torchrec and DDP
                warnings.simplefilter("ignore")
                self.module = self._build_dmp(configs, opt_cls, opt_kwargs, EmbeddingBagCollection, dim)
            self._weights = None
        self.dense_opt = _dense_optimizer(dense_optimizer, self.dense_model.parameters(), dense_lr)

    def _build_dmp(self, configs, opt_cls, opt_kwargs, ebc_cls, dim) -> nn.Module:
        import torch.distributed as dist
        from torchrec.distributed import DistributedModelParallel
        from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
        from torchrec.distributed.sharding_plan import get_default_sharders
        from torchrec.distributed.types import ShardingEnv
        from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

        if not dist.is_initialized():
            dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
            self._own_group = True
        ebc = ebc_cls(tables=configs, device=torch.device("meta"))
        module = _TorchRecModel(ebc, self.dense_model, self.n_tables, dim)
        apply_optimizer_in_backward(opt_cls, ebc.parameters(), opt_kwargs)
        constraints = {c.name: ParameterConstraints(sharding_types=["table_wise"], compute_kernels=["fused"])
                       for c in configs}
        planner = EmbeddingShardingPlanner(topology=Topology(world_size=1, compute_device="cpu"),
                                           constraints=constraints)
        plan = planner.plan(module, get_default_sharders())
        return DistributedModelParallel(module, device=torch.device("cpu"), plan=plan,
                                        env=ShardingEnv.from_process_group(dist.GroupMember.WORLD))

    def close(self) -> None:
        if self._own_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._own_group = False

    def step(self, dense: np.ndarray, sparse: np.ndarray, labels: np.ndarray) -> float:
        self.dense_opt.zero_grad(set_to_none=True)
        logits = self.module(torch.as_tensor(np.asarray(dense, dtype=np.float32)), make_kjt(sparse))
        loss = F.binary_cross_entropy_with_logits(
            logits, torch.as_tensor(np.asarray(labels, dtype=np.float32)).reshape(logits.shape))
        loss.backward()  # fbgemm updates the embedding rows inside this call
        self.dense_opt.step()
        return loss.item()

    def table(self, i: int) -> np.ndarray:
        if self._weights is None:
            raise NotImplementedError("table() is available in mode='fused' only")
        return self._weights[i].detach().numpy().copy()


def _mean_seconds(step, batches, warmup: int) -> float:
    batches = list(batches)
    if len(batches) <= warmup:
        raise ValueError(f"need more than warmup={warmup} batches, got {len(batches)}")
    for dense, sparse, labels in batches[:warmup]:
        step(dense, sparse, labels)
    timed = batches[warmup:]
    start = time.perf_counter()
    for dense, sparse, labels in timed:
        step(dense, sparse, labels)
    return (time.perf_counter() - start) / len(timed)


def torchrec_iteration_seconds(model_name: str, n_dense: int, table_sizes: Sequence[int], dim: int,
                               batches, emb_optimizer: str, lr: float, warmup: int = 3, *,
                               emb_eps: float = 1e-8, dense_optimizer: str = "adam", dense_lr: float = 1e-3,
                               seed: int = 0, mode: str = "fused") -> float:
    """Mean seconds per training iteration of `model_name` with TorchRec-held tables over `batches`
    ((dense [B, n_dense] float32, sparse [B, n_tables] int64, labels [B]) each), after `warmup` untimed ones."""
    trainer = TorchRecTrainer(model_name, n_dense, table_sizes, dim, emb_optimizer, lr, emb_eps=emb_eps,
                              dense_optimizer=dense_optimizer, dense_lr=dense_lr, seed=seed, mode=mode)
    try:
        return _mean_seconds(trainer.step, batches, warmup)
    finally:
        trainer.close()


def local_iteration_seconds(model_name: str, n_dense: int, table_sizes: Sequence[int], dim: int,
                            batches, emb_optimizer: str, lr: float, warmup: int = 3, *,
                            emb_eps: float = 1e-8, dense_optimizer: str = "adam", dense_lr: float = 1e-3,
                            seed: int = 0) -> float:
    """The same measurement for embps.models.LocalTrainer (nn.Embedding(sparse=True) + torch optimizers)."""
    rng = np.random.default_rng(seed)
    tables = [rng.uniform(-0.05, 0.05, size=(int(rows), dim)).astype(np.float32) for rows in table_sizes]
    trainer = LocalTrainer(build_model(model_name, n_dense, len(table_sizes), dim, seed=seed), tables,
                           emb_optimizer, lr, emb_eps, dense_optimizer=dense_optimizer, dense_lr=dense_lr)
    return _mean_seconds(trainer.step, batches, warmup)


def synthetic_batches(n_batches: int, batch: int, n_dense: int, table_sizes: Sequence[int], seed: int = 0):
    """Uniformly random ids, standard-normal dense features, random 0/1 labels."""
    rng = np.random.default_rng(seed)
    sizes = np.asarray(table_sizes, dtype=np.int64)
    return [(rng.standard_normal((batch, n_dense), dtype=np.float32),
             rng.integers(0, sizes, size=(batch, len(sizes)), dtype=np.int64),
             rng.integers(0, 2, size=batch).astype(np.float32))
            for _ in range(n_batches)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=MODELS, default="dlrm")
    ap.add_argument("--tables", type=int, default=26)
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--dense", type=int, default=13)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--iters", type=int, default=20, help="timed iterations (after --warmup)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--emb-optimizer", choices=("sgd", "adagrad"), default="adagrad")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--modes", default="fused,dmp", help="TorchRec modes to time, comma-separated")
    ap.add_argument("--reps", type=int, default=3, help="rounds over all contenders")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = ap.parse_args()
    for noisy in ("torchrec", "torch.fx"):  # the planner's plan table and storage notes, an fx notice
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    sizes = [args.rows] * args.tables
    batches = synthetic_batches(args.warmup + args.iters, args.batch, args.dense, sizes)
    common = dict(model_name=args.model, n_dense=args.dense, table_sizes=sizes, dim=args.dim, batches=batches,
                  emb_optimizer=args.emb_optimizer, lr=args.lr, warmup=args.warmup)
    print(f"{args.model}: {args.tables} tables x {args.rows} rows x dim {args.dim}, batch {args.batch}, "
          f"{args.emb_optimizer} embeddings / adam dense, {args.iters} timed iterations after {args.warmup}, "
          f"{torch.get_num_threads()} threads")
    contenders = {"LocalTrainer (nn.Embedding sparse)": local_iteration_seconds}
    for mode in [m for m in args.modes.split(",") if m]:
        contenders[f"TorchRec {mode}"] = functools.partial(torchrec_iteration_seconds, mode=mode)
    # Contenders alternate within each round, so that load from other processes hits them alike; the best
    # round is the least disturbed one.
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.reps):
        for name, fn in contenders.items():
            samples[name].append(fn(**common))
    base = min(samples["LocalTrainer (nn.Embedding sparse)"])
    print(f"  {'':38s} {'best':>9s} {'median':>9s}  ms/iteration over {args.reps} rounds")
    for name, secs in samples.items():
        print(f"  {name:38s} {min(secs) * 1e3:9.2f} {float(np.median(secs)) * 1e3:9.2f}"
              f"   best {base / min(secs):5.2f}x LocalTrainer's speed")


if __name__ == "__main__":
    main()
