"""The persistent embedding store (PetHash on PM), shared by the PS shard and the trainer gateway.
Its specs and exceptions are in embps.api."""

from .optim import apply_optimizer, initial_rows
from .store import CrashSimulation, GatherList, Store, Table, TableStats

__all__ = ["CrashSimulation", "GatherList", "Store", "Table", "TableStats", "apply_optimizer", "initial_rows"]
