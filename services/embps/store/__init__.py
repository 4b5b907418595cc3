"""The persistent embedding store (PetHash on PM), shared by the PS shard and the trainer gateway."""

from .errors import (BatchTooLarge, CapacityExhausted, InvalidArgument, NonFiniteValues, ProtocolError, SimulatedCrash,
                     StoreCorrupted, StoreError, StoreIOError, TableExists, TableNotFound)
from .optim import apply_optimizer, initial_rows
from .spec import InitializerSpec, OptimizerSpec, TableSpec
from .store import CrashSimulation, GatherList, Store, Table, TableStats, as_keys, state_floats

__all__ = [
    "BatchTooLarge", "CapacityExhausted", "CrashSimulation", "GatherList", "InitializerSpec", "InvalidArgument", "NonFiniteValues",
    "OptimizerSpec", "ProtocolError", "SimulatedCrash", "Store", "StoreCorrupted", "StoreError", "StoreIOError", "Table",
    "TableExists", "TableNotFound", "TableSpec", "TableStats", "apply_optimizer", "as_keys", "initial_rows",
    "state_floats",
]
