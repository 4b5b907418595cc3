"""TableSpec <-> its protobuf message (embps.v1.TableSpec)."""

from embps.api import InitializerSpec, InvalidArgument, OptimizerSpec, TableSpec
from embps.v1 import ps_shard_pb2 as pb

_MISSING_TO_MESSAGE = {"initialize": pb.MISSING_KEYS_INITIALIZE, "report": pb.MISSING_KEYS_REPORT}
_MISSING_FROM_MESSAGE = {v: k for k, v in _MISSING_TO_MESSAGE.items()}


def spec_to_message(spec: TableSpec) -> pb.TableSpec:
    o, i = spec.optimizer, spec.initializer
    return pb.TableSpec(
        dim=spec.dim, capacity=spec.capacity,
        optimizer=pb.OptimizerSpec(kind=o.kind, lr=o.lr, eps=o.eps, beta1=o.beta1, beta2=o.beta2),
        initializer=pb.InitializerSpec(kind=i.kind, scale=i.scale, seed=i.seed),
        missing_keys=_MISSING_TO_MESSAGE[spec.missing_keys])


def spec_from_message(message: pb.TableSpec) -> TableSpec:
    """Fields are taken literally (0 is a valid lr); an absent optimizer or initializer takes the defaults."""
    optimizer = OptimizerSpec()
    if message.HasField("optimizer"):
        o = message.optimizer
        optimizer = OptimizerSpec(o.kind, o.lr, o.eps, o.beta1, o.beta2)
    initializer = InitializerSpec()
    if message.HasField("initializer"):
        i = message.initializer
        initializer = InitializerSpec(i.kind, i.scale, i.seed)
    if message.missing_keys not in _MISSING_FROM_MESSAGE:
        raise InvalidArgument(f"unknown missing_keys value {message.missing_keys}")
    return TableSpec(dim=message.dim, capacity=message.capacity, optimizer=optimizer, initializer=initializer,
                     missing_keys=_MISSING_FROM_MESSAGE[message.missing_keys])
