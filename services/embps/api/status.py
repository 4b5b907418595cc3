"""The one map of a failure: its reason (the native status name, e.g. "NONFINITE") <-> its exception
<-> its gRPC code."""

from __future__ import annotations

import grpc

from .errors import (BatchTooLarge, CapacityExhausted, InvalidArgument, NonFiniteValues, ProtocolError, SimulatedCrash,
                     StoreCorrupted, StoreError, StoreIOError, TableExists, TableNotFound)

_C = grpc.StatusCode
GRPC_CODES: dict[str, grpc.StatusCode] = {
    "INVALID_ARGUMENT": _C.INVALID_ARGUMENT,
    "NONFINITE": _C.INVALID_ARGUMENT,
    "PROTOCOL": _C.INVALID_ARGUMENT,
    "NOT_FOUND": _C.NOT_FOUND,
    "EXISTS": _C.ALREADY_EXISTS,
    "CAPACITY": _C.RESOURCE_EXHAUSTED,
    "TOO_LARGE": _C.RESOURCE_EXHAUSTED,
    "NOMEM": _C.RESOURCE_EXHAUSTED,
    "CORRUPT": _C.DATA_LOSS,
    "CRASHED": _C.UNAVAILABLE,
    "IO": _C.INTERNAL,
}
_ERRORS: dict[str, type[Exception]] = {
    cls.status: cls
    for cls in (InvalidArgument, TableNotFound, TableExists, CapacityExhausted, NonFiniteValues,
                StoreIOError, StoreCorrupted, SimulatedCrash, BatchTooLarge, ProtocolError)
}
_ERRORS["NOMEM"] = MemoryError
_CODES_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def error_for(reason: str, message: str) -> Exception:
    """The exception for a native status."""
    return _ERRORS.get(reason, StoreError)(message)


def reason_of(error: BaseException) -> str:
    """The native status name of an exception ("" for one that is not a store failure)."""
    if isinstance(error, StoreError):
        return error.status
    return "NOMEM" if isinstance(error, MemoryError) else ""


def grpc_code(reason: str) -> grpc.StatusCode:
    return GRPC_CODES.get(reason, _C.INTERNAL)


def grpc_code_for(error: BaseException) -> grpc.StatusCode:
    return grpc_code(reason_of(error))


def grpc_code_from_number(number: int) -> grpc.StatusCode:
    """The StatusCode of its number (as the RDMA path sends it); UNKNOWN for a number gRPC lacks."""
    return _CODES_BY_NUMBER.get(number, _C.UNKNOWN)
