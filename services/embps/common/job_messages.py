"""JobConfig <-> its protobuf message (embps.v1.JobConfig), and the gateway mode <-> its enum."""

from __future__ import annotations

import dataclasses
from typing import Any

from embps.v1 import training_pb2 as pb

from .job_config import MODES, Addresses, JobConfig
from .security import Security
from .spec_messages import OPTIMIZER_KINDS, WireEnum

GATEWAY_MODES = WireEnum(pb.GatewayMode, "GATEWAY_MODE_", MODES, "gateway mode")
# Fields copied as they are; the others need a conversion each.
_PLAIN = ("dataset", "model", "trainers", "global_batch", "steps", "eval_batches", "dim", "emb_lr", "emb_eps",
          "emb_beta1", "emb_beta2", "dense_lr", "lookahead", "cleanup_proportion", "seed", "table", "timeout_seconds", "placement",
          "staleness", "store_rate")


def job_to_message(job: JobConfig) -> pb.JobConfig:
    a = job.addresses
    return pb.JobConfig(
        **{name: getattr(job, name) for name in _PLAIN},
        dataset_options={k: _option_to_message(k, v) for k, v in job.dataset_options.items()},
        mode=GATEWAY_MODES.to_message(job.mode),
        emb_optimizer=OPTIMIZER_KINDS.to_message(job.emb_optimizer),
        dense_optimizer=OPTIMIZER_KINDS.to_message(job.dense_optimizer),   # PyTorch's, by the same names
        addresses=pb.JobConfig.Addresses(oracle=a.oracle, gateways=a.gateways, shards=a.shards, trainers=a.trainers,
                                          hosts=a.hosts),
        security=pb.JobConfig.Security(**dataclasses.asdict(job.security)))


def job_from_message(message: pb.JobConfig) -> JobConfig:
    """As JobConfig.from_toml reads a file: the job's checks apply, and so do this process's
    EMBPS_SECURITY_* overrides of the security settings."""
    a = message.addresses
    security = {f.name: getattr(message.security, f.name) for f in dataclasses.fields(Security)}
    return JobConfig(
        **{name: getattr(message, name) for name in _PLAIN},
        dataset_options={k: _option_from_message(v) for k, v in message.dataset_options.items()},
        mode=GATEWAY_MODES.from_message(message.mode),
        emb_optimizer=OPTIMIZER_KINDS.from_message(message.emb_optimizer),
        dense_optimizer=OPTIMIZER_KINDS.from_message(message.dense_optimizer),
        addresses=Addresses(oracle=a.oracle, gateways=tuple(a.gateways), shards=tuple(a.shards), trainers=a.trainers,
                            hosts=tuple(a.hosts)),
        security=Security.from_table({k: v for k, v in security.items() if v}))


def _option_to_message(name: str, value) -> pb.JobConfig.OptionValue:
    # bool before int: True is an int too.
    for kind, field in ((bool, "bool_value"), (int, "int_value"), (float, "double_value"), (str, "string_value")):
        if isinstance(value, kind):
            fields: dict[str, Any] = {field: value}
            return pb.JobConfig.OptionValue(**fields)
    if isinstance(value, (list, tuple)):
        items = [_option_to_message(name, item) for item in value]
        return pb.JobConfig.OptionValue(list_value=pb.JobConfig.OptionList(values=items))
    raise ValueError(f"dataset option {name!r} is a {type(value).__name__}; options are bools, ints, floats, "
                     "strings or lists of them")


def _option_from_message(message: pb.JobConfig.OptionValue):
    field = message.WhichOneof("value")
    if field is None:
        raise ValueError("a dataset option without a value")
    if field == "list_value":
        return [_option_from_message(item) for item in message.list_value.values]
    return getattr(message, field)
