"""What a table is: its dimension, capacity, optimizer and initializer."""

from dataclasses import dataclass, field
from typing import Literal

OptimizerKind = Literal["sgd", "adagrad", "rowwise_adagrad", "adam"]
InitializerKind = Literal["zeros", "uniform", "normal"]
MissingKeys = Literal["initialize", "report"]


@dataclass(frozen=True)
class OptimizerSpec:
    kind: OptimizerKind = "adagrad"
    lr: float = 0.01
    eps: float = 1e-10
    beta1: float = 0.9
    beta2: float = 0.999


@dataclass(frozen=True)
class InitializerSpec:
    """Rows of missing keys depend only on (seed, key): every shard initialises a key alike."""

    kind: InitializerKind = "uniform"
    scale: float = 0.01
    seed: int = 0


@dataclass(frozen=True)
class TableSpec:
    dim: int
    capacity: int
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    initializer: InitializerSpec = field(default_factory=InitializerSpec)
    # What a lookup returns for a key never written: its initial row, or a zero row.
    missing_keys: MissingKeys = "initialize"
