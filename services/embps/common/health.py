"""The gRPC health probe (grpc.health.v1) every embps process uses: a server's status by name, and a
wait until it says SERVING."""

from __future__ import annotations

import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .security import NO_SECURITY, Security


def health_status(channel: grpc.Channel, service: str = "", timeout: float = 3.0,
                  wait_for_ready: bool = False) -> str:
    """The status the server reports (SERVING, NOT_SERVING, ...), or the gRPC error's code name."""
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                         timeout=timeout, wait_for_ready=wait_for_ready)
    except grpc.RpcError as error:
        return error.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def wait_serving(address: str, timeout: float, security: Security = NO_SECURITY) -> None:
    """Blocks until the server at address says SERVING; TimeoutError (with its last answer) after timeout."""
    deadline = time.monotonic() + timeout
    with security.channel(address) as channel:
        while (status := health_status(channel, timeout=1.0, wait_for_ready=True)) != "SERVING":
            if time.monotonic() > deadline:
                raise TimeoutError(f"{address} did not become SERVING within {timeout:.0f} s (last answer: {status})")
            time.sleep(0.02)
