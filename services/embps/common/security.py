"""TLS, mutual TLS and a shared token for every embps gRPC server and client.

One `[security]` table, the same in a shard's config, a cluster config and a job file (off by
default, for local runs):

    [security]
    tls_cert = "/etc/embps/server.pem"   # this process's certificate chain (servers; clients for mTLS)
    tls_key = "/etc/embps/server.key"
    tls_ca = "/etc/embps/ca.pem"         # CA that signed the peers' certificates
    tls_client_auth = true               # servers: require client certificates (mutual TLS)
    tls_server_name = ""                 # clients: name to verify instead of the address's host
    auth_token_file = "/etc/embps/token" # a shared secret, sent as "authorization: Bearer <token>"

EMBPS_SECURITY_<FIELD> environment variables override the table.  Health checks need no token, so
probes work.  The native TCP data path has neither TLS nor tokens: a shard with security on does not
offer it.
"""

from __future__ import annotations

import dataclasses
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

ENV_PREFIX = "EMBPS_SECURITY_"
_OPEN_METHODS = ("/grpc.health.v1.Health/",)


@dataclass(frozen=True)
class Security:
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    tls_client_auth: bool = False
    tls_server_name: str = ""
    auth_token_file: str = ""

    @classmethod
    def from_table(cls, table: dict, environ: Mapping[str, str] | None = None) -> Security:
        environ = os.environ if environ is None else environ
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(table) - fields
        if unknown:
            raise ValueError(f"unknown [security] settings: {sorted(unknown)}")
        values = dict(table)
        for name in fields:
            raw = environ.get(ENV_PREFIX + name.upper())
            if raw is not None:
                values[name] = raw.lower() in ("1", "true", "yes") if name == "tls_client_auth" else raw
        security = cls(**values)
        if bool(security.tls_cert) != bool(security.tls_key):
            raise ValueError("[security] tls_cert and tls_key go together")
        if security.tls_client_auth and not security.tls_ca:
            raise ValueError("[security] tls_client_auth needs tls_ca to verify client certificates")
        return security

    def to_table(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v}

    @property
    def enabled(self) -> bool:
        return bool(self.tls_cert or self.tls_ca or self.auth_token_file)

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert or self.tls_ca)

    def token(self) -> str:
        return Path(self.auth_token_file).read_text().strip() if self.auth_token_file else ""

    # ---- servers ---------------------------------------------------------------------------

    def server_interceptors(self) -> list:
        return [_TokenCheck(self.token())] if self.auth_token_file else []

    def add_port(self, server: grpc.Server, address: str) -> int:
        if not self.tls_cert:
            return server.add_insecure_port(address)
        credentials = grpc.ssl_server_credentials(
            [(Path(self.tls_key).read_bytes(), Path(self.tls_cert).read_bytes())],
            root_certificates=Path(self.tls_ca).read_bytes() if self.tls_ca else None,
            require_client_auth=self.tls_client_auth)
        return server.add_secure_port(address, credentials)

    # ---- clients ---------------------------------------------------------------------------

    def channel(self, address: str, options: list | None = None) -> grpc.Channel:
        options = list(options or [])
        if self.tls:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=Path(self.tls_ca).read_bytes() if self.tls_ca else None,
                private_key=Path(self.tls_key).read_bytes() if self.tls_key else None,
                certificate_chain=Path(self.tls_cert).read_bytes() if self.tls_cert else None)
            if self.tls_server_name:
                options.append(("grpc.ssl_target_name_override", self.tls_server_name))
            channel = grpc.secure_channel(address, credentials, options=options)
        else:
            channel = grpc.insecure_channel(address, options=options)
        if self.auth_token_file:
            channel = grpc.intercept_channel(channel, _TokenHeader(self.token()))
        return channel


class _TokenHeader(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                  grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    def __init__(self, token: str):
        self.header = ("authorization", f"Bearer {token}")

    def _with_token(self, details):
        return details._replace(metadata=list(details.metadata or []) + [self.header])

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._with_token(details), requests)


class _TokenCheck(grpc.ServerInterceptor):
    """Rejects calls without the shared token (health checks excepted) with UNAUTHENTICATED."""

    def __init__(self, token: str):
        self.expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or details.method.startswith(_OPEN_METHODS):
            return handler
        sent = dict(details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(sent.encode(), self.expected):
            return handler
        return _refusing(handler)


def _refusing(handler):
    def refuse(request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong authorization token")

    kind = ("unary_unary" if not handler.request_streaming and not handler.response_streaming else
            "unary_stream" if not handler.request_streaming else
            "stream_unary" if not handler.response_streaming else "stream_stream")
    make = getattr(grpc, f"{kind}_rpc_method_handler")
    return make(refuse, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


NO_SECURITY = Security()
