"""One mapping from native store statuses to gRPC status codes, for servers and clients alike."""

import grpc

from embps.store.errors import StoreError

GRPC_CODE_BY_STATUS: dict[str, grpc.StatusCode] = {
    "INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
    "NONFINITE": grpc.StatusCode.INVALID_ARGUMENT,
    "PROTOCOL": grpc.StatusCode.INVALID_ARGUMENT,
    "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "EXISTS": grpc.StatusCode.ALREADY_EXISTS,
    "CAPACITY": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "TOO_LARGE": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "NOMEM": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "CORRUPT": grpc.StatusCode.DATA_LOSS,
    "CRASHED": grpc.StatusCode.UNAVAILABLE,
    "IO": grpc.StatusCode.INTERNAL,
}


def grpc_code_for(error: Exception) -> grpc.StatusCode:
    if isinstance(error, StoreError):
        return GRPC_CODE_BY_STATUS.get(error.status, grpc.StatusCode.INTERNAL)
    if isinstance(error, MemoryError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    return grpc.StatusCode.INTERNAL
