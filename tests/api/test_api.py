"""embps.api: specs that normalise the names people write to enums, the one status map, and a
package that imports without the native core, torch or the generated gRPC code."""

import subprocess
import sys

import grpc
import pytest

from embps.api import (BatchTooLarge, InitializerKind, InitializerSpec, InvalidArgument, MissingKeys, NonFiniteValues,
                       OptimizerKind, OptimizerSpec, ProtocolError, StoreError, TableSpec, state_floats)
from embps.api.status import GRPC_CODES, error_for, grpc_code, grpc_code_for, grpc_code_from_number, reason_of


def test_lowercase_names_become_enum_members():
    spec = TableSpec(dim=8, capacity=10, optimizer=OptimizerSpec("rowwise_adagrad"),
                     initializer=InitializerSpec("normal"), missing_keys="report")
    assert spec.optimizer.kind is OptimizerKind.ROWWISE_ADAGRAD and spec.optimizer.kind == "rowwise_adagrad"
    assert spec.initializer.kind is InitializerKind.NORMAL
    assert spec.missing_keys is MissingKeys.REPORT
    assert spec == TableSpec(8, 10, OptimizerSpec(OptimizerKind.ROWWISE_ADAGRAD), InitializerSpec(InitializerKind.NORMAL),
                             MissingKeys.REPORT)
    assert TableSpec(8, 10).optimizer.kind is OptimizerKind.ADAGRAD


@pytest.mark.parametrize("make, message", [
    (lambda: OptimizerSpec("lion"), "unknown optimizer 'lion'; one of ['adagrad', 'adam', 'rowwise_adagrad', 'sgd']"),
    (lambda: InitializerSpec("ones"), "unknown initializer 'ones'; one of ['normal', 'uniform', 'zeros']"),
    (lambda: TableSpec(4, 4, missing_keys="ignore"), "unknown missing_keys 'ignore'; one of ['initialize', 'report']"),
    (lambda: state_floats("Adam", 4), "unknown optimizer 'Adam'"),
])
def test_unknown_names_are_invalid_arguments(make, message):
    with pytest.raises(InvalidArgument) as info:
        make()
    assert message in str(info.value)


def test_state_floats_per_optimizer():
    assert [state_floats(kind, 16) for kind in ("sgd", "adagrad", "rowwise_adagrad", "adam")] == [0, 16, 1, 33]


def test_one_map_from_reason_to_exception_to_grpc_code():
    for reason, code in GRPC_CODES.items():
        error = error_for(reason, "message")
        assert reason_of(error) == reason and grpc_code_for(error) == code and str(error) == "message"
    assert isinstance(error_for("NONFINITE", ""), NonFiniteValues) and isinstance(error_for("NOMEM", ""), MemoryError)
    assert (grpc_code("PROTOCOL"), grpc_code("NONFINITE")) == (grpc.StatusCode.INVALID_ARGUMENT,) * 2
    assert isinstance(error_for("PROTOCOL", ""), ProtocolError) and isinstance(error_for("TOO_LARGE", ""), BatchTooLarge)
    assert type(error_for("SOMETHING_NEW", "")) is StoreError and grpc_code("SOMETHING_NEW") == grpc.StatusCode.INTERNAL
    assert reason_of(ValueError()) == "" and grpc_code_for(ValueError()) == grpc.StatusCode.INTERNAL
    assert grpc_code_from_number(8) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert grpc_code_from_number(99) == grpc.StatusCode.UNKNOWN


def test_imports_without_native_core_torch_or_generated_code():
    code = """
import sys
sys.modules["embps.store._native"] = None
sys.modules["torch"] = None
import embps.api, embps.api.status, embps.api.wire
print(sorted(m for m in sys.modules if m.startswith(("embps.store", "embps.v1", "torch")) and sys.modules[m]))
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
