"""What every embps gRPC server has: a thread pool and deliberate limits (ServerLimits), the [security]
settings, requests that are not their protobuf message refused as INVALID_ARGUMENT (grpcio would
answer INTERNAL), stream sends bounded by a deadline, standard health checking and server reflection
(v1 and v1alpha); and run_service, how every server's process starts it, serves until SIGTERM and stops."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from embps.api import ProtocolError
from embps.api.status import abort

from . import reflection_v1
from .grpc_channels import channel_options
from .security import Security

log = logging.getLogger("embps.grpc_service")


@dataclass(frozen=True)
class ServerLimits:
    """What one server takes on.  0 leaves a limit to gRPC (none, or its default)."""

    workers: int                               # handler threads
    max_message_bytes: int                     # every request and reply
    max_concurrent_rpcs: int = 0               # calls in flight; beyond it a call gets RESOURCE_EXHAUSTED
    max_streams_per_connection: int = 0        # HTTP/2 streams one connection may have open; more wait
    stream_send_timeout_seconds: float = 0.0   # a reply stream whose client takes no message this long is cut


class GrpcService:
    def __init__(self, address: str, security: Security, limits: ServerLimits):
        options = channel_options(limits.max_message_bytes)
        if limits.max_streams_per_connection:
            options.append(("grpc.max_concurrent_streams", limits.max_streams_per_connection))
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=limits.workers, thread_name_prefix="grpc"),
                                  options=options, interceptors=security.server_interceptors(),
                                  maximum_concurrent_rpcs=limits.max_concurrent_rpcs or None)
        self.service_names: list[str] = []
        seconds = limits.stream_send_timeout_seconds
        self._send_deadlines = SendDeadlines(seconds) if seconds else None
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = security.add_port(self.server, address)

    def add(self, servicer, service: ServiceDescriptor) -> None:
        """Serves service's methods by servicer's (before start)."""
        self.service_names.append(service.full_name)
        self._add(servicer, service, service.full_name)

    def _add(self, servicer, service: ServiceDescriptor, name: str) -> None:
        handlers = {method.name: _method_handler(getattr(servicer, method.name), method, self._send_deadlines)
                    for method in service.methods}
        self.server.add_registered_method_handlers(name, handlers)

    def start(self) -> None:
        """Call once the services are added: health turns SERVING."""
        reflecting = reflection.ReflectionServicer(
            (*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME, reflection_v1.SERVICE_NAME))
        self._add(reflecting, reflection_v1.V1ALPHA_SERVICE, reflection.SERVICE_NAME)
        self._add(reflecting, reflection_v1.V1ALPHA_SERVICE, reflection_v1.SERVICE_NAME)
        self.server.start()
        self._set_health(health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace_seconds: float) -> None:
        """Health turns NOT_SERVING, calls in flight get grace_seconds to finish."""
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.server.stop(grace_seconds).wait()
        if self._send_deadlines:
            self._send_deadlines.stop()

    def _set_health(self, status) -> None:
        for service in ("", *self.service_names):
            self.health.set(service, status)


class _Undecodable:
    """What the deserializer hands on for bytes that are not the request message."""

    def __init__(self, message: str):
        self.message = message


def _decoder(method: MethodDescriptor) -> Callable[[bytes], object]:
    message_class = message_factory.GetMessageClass(method.input_type)

    def decode(data: bytes):
        try:
            return message_class.FromString(data)
        except DecodeError as error:
            return _Undecodable(f"malformed request: the bytes are not a valid {method.input_type.full_name} "
                                f"({error})")
    return decode


def _decoded(requests: Iterator) -> Iterator:
    """A request stream whose undecodable message raises ProtocolError, which the handler reports as any
    failure (ps_shard.call_outcome and the gateway's handlers turn it into INVALID_ARGUMENT)."""
    for request in requests:
        if isinstance(request, _Undecodable):
            raise ProtocolError(request.message)
        yield request


def _method_handler(behavior, method: MethodDescriptor, send_deadlines: SendDeadlines | None) -> grpc.RpcMethodHandler:
    """behavior as the generated code registers it, but an undecodable request is refused (a single
    request here, a streamed one by the handler) and every reply stream's sends have a deadline."""
    path = f"/{method.containing_service.full_name}/{method.name}"

    def handle(request, context):
        if method.client_streaming:
            request = _decoded(request)
        elif isinstance(request, _Undecodable):
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, request.message, ProtocolError.status)
        replies = behavior(request, context)
        if method.server_streaming and send_deadlines:
            return send_deadlines.bound(replies, context, path)
        return replies

    make = {(False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler}
    return make[method.client_streaming, method.server_streaming](
        handle, request_deserializer=_decoder(method),
        response_serializer=message_factory.GetMessageClass(method.output_type).SerializeToString)


class SendDeadlines:
    """Cuts a reply stream whose client has not taken its last message within timeout_seconds (it is
    not reading): the call is cancelled, so its handler is closed and releases what it holds (a shard's
    Export, its table).  One thread watches every stream of a server; all wait the same time, so the
    oldest send is the first due."""

    def __init__(self, timeout_seconds: float):
        self.timeout_seconds = timeout_seconds
        self._sends: dict[int, tuple[float, grpc.ServicerContext, str]] = {}   # in the order they are due
        self._next_token = 0
        self._changed = threading.Condition()
        self._stopped = False
        threading.Thread(target=self._watch, name="send-deadlines", daemon=True).start()

    def bound(self, replies: Iterator, context: grpc.ServicerContext, method: str) -> Iterator:
        try:
            for reply in replies:
                token = self._sending(context, method)
                try:
                    yield reply   # grpcio asks for the next reply once the client has taken this one
                finally:
                    self._sent(token)
        finally:
            close = getattr(replies, "close", None)
            if close:
                close()

    def _sending(self, context: grpc.ServicerContext, method: str) -> int:
        with self._changed:
            token = self._next_token
            self._next_token += 1
            self._sends[token] = (time.monotonic() + self.timeout_seconds, context, method)
            if len(self._sends) == 1:
                self._changed.notify()
            return token

    def _sent(self, token: int) -> None:
        with self._changed:
            self._sends.pop(token, None)   # gone if it was cut

    def _watch(self) -> None:
        with self._changed:
            while not self._stopped:
                if not self._sends:
                    self._changed.wait()
                    continue
                token, (due, context, method) = next(iter(self._sends.items()))
                left = due - time.monotonic()
                if left > 0:
                    self._changed.wait(left)
                    continue
                del self._sends[token]
                log.warning("reply stream cut: its client took no message", extra={
                    "method": method, "peer": context.peer(), "timeout_seconds": self.timeout_seconds})
                context.cancel()

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify()


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
