"""embps's types, importable without the native core, torch or generated code: table specs and
their enums, the exceptions, and keys as numpy arrays.  `embps.api.wire` reads keys and rows off
the wire; `embps.api.status` maps failures to gRPC codes and reasons."""

from .errors import (BatchTooLarge, CapacityExhausted, InvalidArgument, NonFiniteValues, ProtocolError, SimulatedCrash,
                     StoreCorrupted, StoreError, StoreIOError, TableExists, TableNotFound)
from .specs import InitializerKind, InitializerSpec, MissingKeys, OptimizerKind, OptimizerSpec, TableSpec, state_floats
from .wire import as_keys

__all__ = [
    "BatchTooLarge", "CapacityExhausted", "InitializerKind", "InitializerSpec", "InvalidArgument", "MissingKeys",
    "NonFiniteValues", "OptimizerKind", "OptimizerSpec", "ProtocolError", "SimulatedCrash", "StoreCorrupted",
    "StoreError", "StoreIOError", "TableExists", "TableNotFound", "TableSpec", "as_keys", "state_floats",
]
