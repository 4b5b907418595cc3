"""TableSpec <-> its protobuf message (embps.v1.TableSpec), and the API's closed sets of names <->
their proto enums."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from embps.api import (InitializerKind, InitializerSpec, InvalidArgument, MissingKeys, OptimizerKind, OptimizerSpec,
                       TableSpec)
from embps.v1 import ps_shard_pb2 as pb


class WireEnum:
    """The Python names of a closed set ("sgd", ...) and the enum values that carry them
    (OPTIMIZER_KIND_SGD, ...).  Fails at import if the two sets differ."""

    def __init__(self, enum, prefix: str, names: Iterable[str], what: str):
        self.what = what
        self.values = {name: enum.Value(prefix + name.upper()) for name in names}
        self.names = {value: name for name, value in self.values.items()}
        unnamed = [enum.Name(value) for value in sorted(set(enum.values()) - set(self.names) - {0})]
        if unnamed:
            raise ImportError(f"{enum.DESCRIPTOR.full_name} values {unnamed} have no Python name")

    def to_message(self, name: str) -> Any:   # the proto enum's value type, which the stubs name per enum
        if name not in self.values:
            raise InvalidArgument(f"unknown {self.what} {name!r}; one of {sorted(self.values)}")
        return self.values[name]

    def from_message(self, value: int, default: str | None = None) -> str:
        """The name of a received value.  UNSPECIFIED (0) is `default` where there is one, else refused,
        as is a value this side does not know."""
        if value == 0 and default is not None:
            return default
        if value == 0:
            raise InvalidArgument(f"{self.what} is unspecified; one of {sorted(self.values)}")
        if value not in self.names:
            raise InvalidArgument(f"unknown {self.what} {value}; one of {sorted(self.values)}")
        return self.names[value]


OPTIMIZER_KINDS = WireEnum(pb.OptimizerKind, "OPTIMIZER_KIND_", [member.value for member in OptimizerKind], "optimizer")
INITIALIZER_KINDS = WireEnum(pb.InitializerKind, "INITIALIZER_KIND_", [member.value for member in InitializerKind], "initializer")
MISSING_KEYS = WireEnum(pb.MissingKeys, "MISSING_KEYS_", [member.value for member in MissingKeys], "missing_keys")
DATA_PATH_KINDS = WireEnum(pb.DataPathKind, "DATA_PATH_KIND_", ("grpc", "tcp", "rdma"), "data path")


def spec_to_message(spec: TableSpec) -> pb.TableSpec:
    o, i = spec.optimizer, spec.initializer
    return pb.TableSpec(
        dim=spec.dim, capacity=spec.capacity,
        optimizer=pb.OptimizerSpec(kind=OPTIMIZER_KINDS.to_message(o.kind), lr=o.lr, eps=o.eps, beta1=o.beta1,
                                   beta2=o.beta2),
        initializer=pb.InitializerSpec(kind=INITIALIZER_KINDS.to_message(i.kind), scale=i.scale, seed=i.seed),
        missing_keys=MISSING_KEYS.to_message(spec.missing_keys))


def spec_from_message(message: pb.TableSpec) -> TableSpec:
    """Fields are taken literally (0 is a valid lr).  An absent optimizer or initializer takes the
    defaults; a present one names its kind.  missing_keys UNSPECIFIED is the default, "initialize"."""
    optimizer = OptimizerSpec()
    if message.HasField("optimizer"):
        o = message.optimizer
        optimizer = OptimizerSpec(OptimizerKind(OPTIMIZER_KINDS.from_message(o.kind)), o.lr, o.eps, o.beta1, o.beta2)
    initializer = InitializerSpec()
    if message.HasField("initializer"):
        i = message.initializer
        initializer = InitializerSpec(InitializerKind(INITIALIZER_KINDS.from_message(i.kind)), i.scale, i.seed)
    return TableSpec(dim=message.dim, capacity=message.capacity, optimizer=optimizer, initializer=initializer,
                     missing_keys=MissingKeys(MISSING_KEYS.from_message(message.missing_keys,
                                                                        default=TableSpec.missing_keys)))
