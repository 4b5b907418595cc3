"""What every embps gRPC server has: a thread pool, deliberate message limits, the [security] settings,
standard health checking and server reflection; and run_service, how every server's process starts it,
serves until SIGTERM and stops."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .grpc_channels import channel_options
from .security import Security

log = logging.getLogger("embps.grpc_service")


class GrpcService:
    def __init__(self, address: str, security: Security, service_names: tuple[str, ...], max_workers: int,
                 max_message_bytes: int):
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
                                  options=channel_options(max_message_bytes),
                                  interceptors=security.server_interceptors())
        self.service_names = service_names
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(service_names + (health.SERVICE_NAME, reflection.SERVICE_NAME),
                                            self.server)
        self.port = security.add_port(self.server, address)

    def start(self) -> None:
        """Call once the services are added: health turns SERVING."""
        self.server.start()
        self._set_health(health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace_seconds: float) -> None:
        """Health turns NOT_SERVING, calls in flight get grace_seconds to finish."""
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.server.stop(grace_seconds).wait()

    def _set_health(self, status) -> None:
        for service in ("",) + self.service_names:
            self.health.set(service, status)


def run_service(service: GrpcService, grace_seconds: float, *, started: Callable[[], None] = lambda: None,
                stopping: Callable[[], None] = lambda: None, stopped: Callable[[], None] = lambda: None) -> int:
    """Starts service (its servicers added) and serves until SIGTERM or SIGINT, then stops it: `started` runs
    once it serves (announce it), `stopping` before calls in flight get grace_seconds (wake the ones that
    wait), `stopped` after they are done (release the rest).  Returns the process's exit code."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    service.start()
    try:
        started()
        stop.wait()
        log.info("stopping", extra={"reason": "signal"})
    finally:
        stopping()
        service.stop(grace_seconds)
        stopped()
    return 0
