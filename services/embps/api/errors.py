"""The exceptions of embps: one per native status, named by `status` (the reason servers send)."""


class StoreError(Exception):
    """A failed store or shard call; `status` is the native status name (e.g. "CAPACITY")."""

    status = "UNKNOWN"


class InvalidArgument(StoreError, ValueError):
    status = "INVALID_ARGUMENT"


class TableNotFound(StoreError, KeyError):
    status = "NOT_FOUND"

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class TableExists(StoreError):
    status = "EXISTS"


class CapacityExhausted(StoreError):
    status = "CAPACITY"


class NonFiniteValues(InvalidArgument):
    status = "NONFINITE"


class StoreIOError(StoreError, OSError):
    status = "IO"


class StoreCorrupted(StoreError):
    status = "CORRUPT"


class BatchTooLarge(StoreError):
    """A request above a server's limits (batch keys or bytes)."""

    status = "TOO_LARGE"


class ProtocolError(StoreError):
    """Malformed bytes: a native data-path request, or a gRPC request that is not its protobuf message."""

    status = "PROTOCOL"


class SimulatedCrash(StoreError):
    """The crash simulator's power failure happened; the store must be reopened."""

    status = "CRASHED"
