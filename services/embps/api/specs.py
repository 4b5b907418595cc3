"""What a table is: its dimension, capacity, optimizer and initializer (frozen dataclasses and enums)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TypeVar

from .errors import InvalidArgument


class OptimizerKind(enum.StrEnum):
    SGD = "sgd"
    ADAGRAD = "adagrad"
    ROWWISE_ADAGRAD = "rowwise_adagrad"
    ADAM = "adam"


class InitializerKind(enum.StrEnum):
    ZEROS = "zeros"
    UNIFORM = "uniform"
    NORMAL = "normal"


class MissingKeys(enum.StrEnum):
    """What a lookup returns for a key never written."""

    INITIALIZE = "initialize"   # its initial row
    REPORT = "report"           # a zero row (and found = False)


_Kind = TypeVar("_Kind", OptimizerKind, InitializerKind, MissingKeys)


def _member(kind: type[_Kind], value: str, what: str) -> _Kind:
    """value as a member of kind: the lowercase names people write ("adagrad") are members too."""
    try:
        return kind(value)
    except ValueError:
        raise InvalidArgument(f"unknown {what} {value!r}; one of {sorted(m.value for m in kind)}") from None


@dataclass(frozen=True)
class OptimizerSpec:
    kind: OptimizerKind = OptimizerKind.ADAGRAD
    lr: float = 0.01
    eps: float = 1e-10
    beta1: float = 0.9
    beta2: float = 0.999

    def __post_init__(self):
        object.__setattr__(self, "kind", _member(OptimizerKind, self.kind, "optimizer"))


@dataclass(frozen=True)
class InitializerSpec:
    """Rows of missing keys depend only on (seed, key): every shard initialises a key alike."""

    kind: InitializerKind = InitializerKind.UNIFORM
    scale: float = 0.01
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "kind", _member(InitializerKind, self.kind, "initializer"))


@dataclass(frozen=True)
class TableSpec:
    dim: int
    capacity: int
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    initializer: InitializerSpec = field(default_factory=InitializerSpec)
    missing_keys: MissingKeys = MissingKeys.INITIALIZE

    def __post_init__(self):
        object.__setattr__(self, "missing_keys", _member(MissingKeys, self.missing_keys, "missing_keys"))


def state_floats(optimizer: OptimizerKind | str, dim: int) -> int:
    """Floats of optimizer state a table keeps beside each row (embps.store checks the C core agrees)."""
    kind = _member(OptimizerKind, optimizer, "optimizer")
    if kind is OptimizerKind.ADAGRAD:
        return dim
    if kind is OptimizerKind.ROWWISE_ADAGRAD:
        return 1
    if kind is OptimizerKind.ADAM:
        return 2 * dim + 1   # m, v, and the row's step count
    return 0
