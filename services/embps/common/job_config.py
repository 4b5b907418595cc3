"""A training job's configuration: one TOML file that the oracle cacher, every gateway and every
trainer read, so they agree on data, model, optimizer and addresses.

    [job]
    dataset = "synthetic"          # "synthetic", "criteo:<path>", "movielens-100k"
    model = "dlrm"
    mode = "sync"                  # "sync" (Bagpipe lookahead caching), "direct" (no cache) or "bounded"
                                   # (HET-GMP mirrors within staleness s, docs/architecture.md, "Bounded mode")
    trainers = 2
    placement = "job.placement"    # optional (relative to this file): rows' owner shards and samples' trainers
    ...
    [addresses]
    oracle = "127.0.0.1:50070"
    gateways = ["127.0.0.1:50071", "127.0.0.1:50072"]
    shards = ["127.0.0.1:50051", "127.0.0.1:50052"]
    hosts = ["host-0", "host-1"]   # optional: host h runs shard h, gateway h and trainer h

Without `hosts`, trainers (with their gateways) and shards are separate lists of any lengths.  With
hosts, each host runs one shard and one trainer with its gateway, so trainers == shards == hosts, and
a row owned by trainer h's own host (shard h) is local to it; placement stays jump hash by default.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embps.api import InitializerKind, InitializerSpec, OptimizerKind, OptimizerSpec, TableSpec

from .cluster_config import ClusterConfig
from .security import NO_SECURITY, Security

MODES = ("sync", "direct", "bounded")
EMB_OPTIMIZERS = ("sgd", "adagrad", "adam")   # the table optimizers a job trains with (bounded: sgd, adagrad)
DENSE_OPTIMIZERS = ("sgd", "adam", "adagrad")  # torch.optim's, for the dense parameters (embps.trainer.training)
MODELS = ("dlrm", "wide_deep", "dcn_v2", "deepfm", "fgcnn", "caser")   # what embps.models builds
FEATURE_SHIFT = 40   # shard key = (feature << 40) | id


def check_one_shard_per_trainer(trainers: int, shards: int, hint: str = "") -> None:
    """A placement's host h runs shard h and trainer h, so a job with one needs as many of each."""
    if trainers != shards:
        raise ValueError(f"with a placement, host h runs shard h and trainer h: {trainers} trainers need "
                         f"{trainers} shards, not {shards}{hint}")


@dataclass(frozen=True)
class Addresses:
    oracle: str = ""
    gateways: tuple[str, ...] = ()
    shards: tuple[str, ...] = ()
    trainers: str = ""     # host:port where trainer 0 hosts torch.distributed's rendezvous
    hosts: tuple[str, ...] = ()   # host h's name; it runs shards[h], gateways[h] and trainer h


@dataclass(frozen=True)
class JobConfig:
    dataset: str = "synthetic"
    dataset_options: dict = field(default_factory=dict)
    model: str = "dlrm"
    mode: str = "sync"
    trainers: int = 2
    global_batch: int = 1024
    steps: int = 200
    eval_batches: int = 8
    dim: int = 32
    emb_optimizer: str = "adagrad"     # "sgd", "adagrad" or "adam": the shards' and the caches' optimizer
    emb_lr: float = 0.05
    emb_eps: float = 1e-8              # adagrad's and adam's epsilon
    emb_beta1: float = 0.9             # adam's betas (torch's defaults); a row's step count is its own
    emb_beta2: float = 0.999
    dense_optimizer: str = "adam"
    dense_lr: float = 1e-3
    lookahead: int = 64                # L: batches the oracle plans ahead
    cleanup_proportion: float = 0.25   # p: evictions every C = max(1, p * L) batches
    seed: int = 0
    table: str = "emb"                 # the shards' table holding every feature's rows
    timeout_seconds: float = 120.0     # how long any wait on another process may take
    staleness: int = 0                 # bounded: s, how many contributions a mirror may lag or lead its owner
    store_rate: float = 0.01           # bounded: the fraction of each host's mirror candidates it mirrors
    addresses: Addresses = Addresses()
    security: Security = NO_SECURITY   # [security]: every server and client of the job (and the shards)
    placement: str = ""                # a placement file: host h's shard owns its rows, trainer h its samples

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.emb_optimizer not in EMB_OPTIMIZERS:
            raise ValueError(f"emb_optimizer must be one of {EMB_OPTIMIZERS}, got {self.emb_optimizer!r}")
        if self.model not in MODELS:   # else only a trainer, once started, would find out
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        if self.dense_optimizer not in DENSE_OPTIMIZERS:   # likewise
            raise ValueError(f"dense_optimizer must be one of {DENSE_OPTIMIZERS}, got {self.dense_optimizer!r}")
        if not (0 <= self.emb_beta1 < 1 and 0 <= self.emb_beta2 < 1):
            raise ValueError(f"emb_beta1 and emb_beta2 must be in [0, 1), got {self.emb_beta1} and {self.emb_beta2}")
        if self.trainers < 1 or self.global_batch % self.trainers:
            raise ValueError(f"global_batch ({self.global_batch}) must split evenly over {self.trainers} trainers")
        if self.lookahead < 1 or self.steps < 1:
            raise ValueError("lookahead and steps must be positive")
        if not isinstance(self.placement, str):
            raise ValueError(f"placement must be a file's path, got {self.placement!r}")
        if self.placement and self.addresses.shards:
            check_one_shard_per_trainer(self.trainers, len(self.addresses.shards))
        if not 0 <= self.staleness < 2**32:
            raise ValueError(f"staleness must be in [0, 2^32), got {self.staleness}")
        if not 0.0 <= self.store_rate <= 1.0:
            raise ValueError(f"store_rate must be in [0, 1], got {self.store_rate}")
        self._check_hosts()

    def _check_hosts(self) -> None:
        hosts, a = self.addresses.hosts, self.addresses
        if not hosts:
            return
        if len(set(hosts)) != len(hosts) or not all(hosts):
            raise ValueError(f"every host needs its own non-empty name, got {list(hosts)}")
        for what, count in (("trainers", self.trainers), ("shards", len(a.shards) or len(hosts)),
                            ("gateways", len(a.gateways) or len(hosts))):
            if count != len(hosts):
                raise ValueError(f"each host runs one shard and one trainer with its gateway: {len(hosts)} "
                                 f"hosts need {len(hosts)} {what}, got {count}")

    def local_shard(self, trainer: int) -> int | None:
        """The shard on trainer's own host (shard h on host h), or None when the job has no hosts."""
        return trainer if self.addresses.hosts else None

    @property
    def cleanup_every(self) -> int:
        return max(1, int(self.cleanup_proportion * self.lookahead))

    @property
    def local_batch(self) -> int:
        return self.global_batch // self.trainers

    def table_spec(self, n_rows: int) -> TableSpec:
        """The shards' table: one row per (feature, id); rows start as DLRM does, uniform in
        ±sqrt(1/rows), here from (seed, key) so every process agrees."""
        optimizer = OptimizerSpec(OptimizerKind(self.emb_optimizer), lr=self.emb_lr, eps=self.emb_eps,
                                  beta1=self.emb_beta1, beta2=self.emb_beta2)
        return TableSpec(dim=self.dim, capacity=max(n_rows, 1024), optimizer=optimizer,
                         initializer=InitializerSpec(InitializerKind.UNIFORM, scale=0.05, seed=self.seed))

    def cluster_config(self) -> ClusterConfig:
        return ClusterConfig.from_addresses(self.addresses.shards, deadline_seconds=self.timeout_seconds,
                                            security=self.security, placement=self.placement,
                                            hosts=self.addresses.hosts)

    # ---- files ----------------------------------------------------------------------------

    def to_toml(self) -> str:
        values = dataclasses.asdict(self)
        addresses = values.pop("addresses")
        options = values.pop("dataset_options")
        values.pop("security")
        if not values["placement"]:
            values.pop("placement")   # hash placement, the default
        lines = ["[job]"] + [f"{k} = {json.dumps(v)}" for k, v in values.items()]
        lines += ["", "[job.dataset_options]"] + [f"{k} = {json.dumps(v)}" for k, v in options.items()]
        lines += ["", "[addresses]"] + [f"{k} = {json.dumps(list(v) if isinstance(v, tuple) else v)}"
                                        for k, v in addresses.items()]
        lines += ["", "[security]"] + [f"{k} = {json.dumps(v)}" for k, v in self.security.to_table().items()]
        return "\n".join(lines) + "\n"

    @classmethod
    def from_toml(cls, text: str) -> JobConfig:
        doc = tomllib.loads(text)
        job = dict(doc.get("job", {}))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(job) - known
        if unknown:
            raise ValueError(f"unknown [job] settings: {sorted(unknown)}")
        addresses = doc.get("addresses", {})
        job["security"] = Security.from_table(doc.get("security", {}))
        job["addresses"] = Addresses(oracle=addresses.get("oracle", ""),
                                     gateways=tuple(addresses.get("gateways", ())),
                                     shards=tuple(addresses.get("shards", ())),
                                     trainers=addresses.get("trainers", ""),
                                     hosts=tuple(addresses.get("hosts", ())))
        return cls(**job)

    @classmethod
    def load(cls, path: str | Path) -> JobConfig:
        job = cls.from_toml(Path(path).read_text())
        if job.placement:   # relative to the job's file; an absolute path stays as it is
            job = dataclasses.replace(job, placement=str(Path(path).resolve().parent / job.placement))
        return job

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_toml())


def feature_keys(sparse: np.ndarray) -> np.ndarray:
    """Shard keys of a [samples, features] id matrix: feature i's id x is key (i << 40) | x."""
    features = np.arange(sparse.shape[1], dtype=np.uint64) << np.uint64(FEATURE_SHIFT)
    return sparse.astype(np.uint64) | features
