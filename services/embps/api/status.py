"""The one map of a failure: its reason (the native status name, e.g. "NONFINITE") <-> its exception
<-> its gRPC code; and the google.rpc.ErrorInfo that carries the reason over gRPC, so that a client
in any language can tell NONFINITE from PROTOCOL though both are INVALID_ARGUMENT."""

from __future__ import annotations

from typing import NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from .errors import (BatchTooLarge, CapacityExhausted, InvalidArgument, NonFiniteValues, ProtocolError, SimulatedCrash,
                     StoreCorrupted, StoreError, StoreIOError, TableExists, TableNotFound)

ERROR_DOMAIN = "embps.dev"   # ErrorInfo.domain: the reasons below are ours
# A status's message travels in the trailers twice (grpc-message, percent-encoded, and in
# grpc-status-details-bin): kept this short, it stays far below gRPC's metadata limits (8 KiB).
MAX_STATUS_MESSAGE_BYTES = 1024

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


def shorten(text: str, limit: int = MAX_STATUS_MESSAGE_BYTES) -> str:
    """text, cut with an ellipsis to at most limit bytes of UTF-8: what a message may echo of its input."""
    encoded = text.encode(errors="backslashreplace")
    if len(encoded) <= limit:
        return text
    return encoded[:limit - 3].decode(errors="ignore") + "\u2026"


def abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str, reason: str = "") -> NoReturn:
    """Ends a call with code and message (shortened), and the reason, if any, as ErrorInfo in the status
    details."""
    message = shorten(message)
    if not reason:
        context.abort(code, message)
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN))
    context.abort_with_status(rpc_status.to_status(
        status_pb2.Status(code=code.value[0], message=message, details=[detail])))
    raise AssertionError("unreachable: abort_with_status raises")


def reason_of_rpc_error(error: grpc.RpcError) -> str:
    """The reason an embps server attached to a failed call ("" when it gave none)."""
    if not isinstance(error, grpc.Call):
        return ""
    try:
        status = rpc_status.from_call(error)
    except ValueError:   # details that contradict the call's code or message: not ours
        return ""
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and info.domain == ERROR_DOMAIN:
            return info.reason
    return ""
