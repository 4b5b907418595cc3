"""TableSpec <-> embps.v1.TableSpec: every name of a closed set travels as its enum value and back,
UNSPECIFIED is the default where the proto says so and refused elsewhere, unknown values are refused."""

import pytest

from embps.common.spec_messages import (DATA_PATH_KINDS, INITIALIZER_KINDS, MISSING_KEYS, OPTIMIZER_KINDS, WireEnum,
                                        spec_from_message, spec_to_message)
from embps.api import (InitializerKind, InitializerSpec, InvalidArgument, MissingKeys, OptimizerKind, OptimizerSpec,
                       TableSpec)
from embps.v1 import ps_shard_pb2 as pb


@pytest.mark.parametrize("optimizer", sorted(member.value for member in OptimizerKind))
@pytest.mark.parametrize("initializer", sorted(member.value for member in InitializerKind))
@pytest.mark.parametrize("missing_keys", sorted(member.value for member in MissingKeys))
def test_every_spec_round_trips(optimizer, initializer, missing_keys):
    spec = TableSpec(dim=7, capacity=123, optimizer=OptimizerSpec(optimizer, lr=0.0, eps=0.5, beta1=0.25, beta2=0.75),
                     initializer=InitializerSpec(initializer, scale=2.0, seed=2**63), missing_keys=missing_keys)
    message = spec_to_message(spec)
    assert pb.OptimizerKind.Name(message.optimizer.kind) == f"OPTIMIZER_KIND_{optimizer.upper()}"
    assert pb.InitializerKind.Name(message.initializer.kind) == f"INITIALIZER_KIND_{initializer.upper()}"
    assert pb.MissingKeys.Name(message.missing_keys) == f"MISSING_KEYS_{missing_keys.upper()}"
    assert spec_from_message(pb.TableSpec.FromString(message.SerializeToString())) == spec


def test_every_enum_value_has_a_name():
    for names, enum in ((OPTIMIZER_KINDS, pb.OptimizerKind), (INITIALIZER_KINDS, pb.InitializerKind),
                        (MISSING_KEYS, pb.MissingKeys), (DATA_PATH_KINDS, pb.DataPathKind)):
        assert sorted(names.names) == sorted(set(enum.values()) - {0})
    with pytest.raises(ImportError, match="MISSING_KEYS_REPORT"):
        WireEnum(pb.MissingKeys, "MISSING_KEYS_", ["initialize"], "missing_keys")
    assert DATA_PATH_KINDS.from_message(pb.DATA_PATH_KIND_TCP) == "tcp"


def test_unspecified_missing_keys_and_absent_messages_are_the_defaults():
    assert spec_from_message(pb.TableSpec(dim=4, capacity=10)) == TableSpec(dim=4, capacity=10)


@pytest.mark.parametrize("field, value, message", [
    ("optimizer", pb.OptimizerSpec(lr=0.1), "optimizer is unspecified"),
    ("optimizer", pb.OptimizerSpec(kind=42), "unknown optimizer 42"),
    ("initializer", pb.InitializerSpec(scale=0.1), "initializer is unspecified"),
    ("initializer", pb.InitializerSpec(kind=9), "unknown initializer 9"),
    ("missing_keys", 3, "unknown missing_keys 3"),
])
def test_unspecified_kinds_and_unknown_values_are_refused(field, value, message):
    spec = pb.TableSpec(dim=4, capacity=10)
    if field == "missing_keys":
        spec.missing_keys = value
    else:
        getattr(spec, field).CopyFrom(value)
    with pytest.raises(InvalidArgument, match=message):
        spec_from_message(spec)


def test_unknown_names_are_refused_before_they_reach_the_wire():
    with pytest.raises(InvalidArgument, match=r"unknown optimizer 'lion'; one of \['adagrad', 'adam'"):
        spec_to_message(TableSpec(dim=4, capacity=10, optimizer=OptimizerSpec("lion")))
    with pytest.raises(InvalidArgument, match="unknown missing_keys 'ignore'"):
        spec_to_message(TableSpec(dim=4, capacity=10, missing_keys="ignore"))
