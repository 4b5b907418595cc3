"""Shard configuration: a TOML file's [shard] table, then EMBPS_SHARD_<FIELD> environment overrides.

    [shard]
    id = "shard-0"
    data_dir = "data/shard-0"          # the store: one PM file per table
    listen = "127.0.0.1:50051"         # gRPC (control, and row traffic for any language)
    data_listen = "127.0.0.1:50061"    # native TCP data path; "" turns it off
    advertise_host = ""                # host clients reach the data path at; "" = their gRPC host
    metrics_listen = "127.0.0.1:9151"  # Prometheus /metrics; "" turns it off
    max_batch_keys = 65536
    max_message_bytes = 67108864
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from embps.common.addresses import split_host_port
from embps.common.cluster_config import DEFAULT_MAX_MESSAGE_BYTES
from embps.common.security import NO_SECURITY, Security

ENV_PREFIX = "EMBPS_SHARD_"


@dataclass(frozen=True)
class ShardConfig:
    data_dir: str
    id: str = "shard-0"
    listen: str = "127.0.0.1:50051"
    data_listen: str = "127.0.0.1:50061"
    advertise_host: str = ""
    metrics_listen: str = "127.0.0.1:9151"
    max_batch_keys: int = 65536
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    grpc_workers: int = 16
    # The native TCP data path's limits: a client beyond data_max_connections is refused; one whose
    # reply is not sent within data_send_timeout_seconds is cut (below 60 s: writers wait up to that
    # long for the rows a reply pins), as is a request not received within data_receive_timeout_seconds
    # and a connection idle for data_idle_timeout_seconds.
    data_max_connections: int = 256
    # Limits of the gRPC path (docs/operations.md): calls in flight, streams per connection, how long a
    # reply stream may wait for its client to read, tables per shard.
    grpc_max_concurrent_rpcs: int = 256
    grpc_max_streams_per_connection: int = 100
    stream_send_timeout_seconds: float = 30.0
    max_tables: int = 1024
    data_send_timeout_seconds: float = 30.0
    data_receive_timeout_seconds: float = 30.0
    data_idle_timeout_seconds: float = 300.0
    grace_seconds: float = 5.0
    persist: str = "cache_line"   # see embps.store.Store
    log_format: str = "json"      # or "text"
    log_level: str = "INFO"
    ready_file: str = ""          # once serving, the bound addresses are written here as JSON
    security: Security = NO_SECURITY   # the file's [security] table (see embps.common.security)
    # The RDMA data path (embps.rdma.server): "auto" uses a device when there is one.
    rdma: str = "auto"
    rdma_device: str = ""
    rdma_port: int = 1
    rdma_gid_index: int = -1
    rdma_memcached: str = ""      # host:port where queue pairs are exchanged, as PetPS does
    rdma_cluster: str = "default"

    def __post_init__(self):
        if self.max_batch_keys < 1 or self.max_message_bytes < 1024 or self.grpc_workers < 1:
            raise ValueError("max_batch_keys, max_message_bytes (>= 1024) and grpc_workers must be positive")
        if not 1 <= self.data_max_connections <= 65536:
            raise ValueError(f"data_max_connections must be in [1, 65536], got {self.data_max_connections}")
        for name in ("data_send_timeout_seconds", "data_receive_timeout_seconds", "data_idle_timeout_seconds"):
            if not 0.001 <= getattr(self, name) <= 86400:
                raise ValueError(f"{name} must be in [0.001, 86400], got {getattr(self, name)}")
        if min(self.grpc_max_concurrent_rpcs, self.grpc_max_streams_per_connection, self.max_tables) < 1 \
                or not self.stream_send_timeout_seconds > 0:
            raise ValueError("grpc_max_concurrent_rpcs, grpc_max_streams_per_connection, max_tables and "
                             "stream_send_timeout_seconds must be positive")
        for name in ("listen", "data_listen", "metrics_listen"):
            value = getattr(self, name)
            if value and not split_host_port(value)[0]:
                raise ValueError(f"{name} must be host:port, got {value!r}")

    @classmethod
    def load(cls, path: str | Path | None, environ: Mapping[str, str] | None = None) -> ShardConfig:
        doc = tomllib.loads(Path(path).read_text()) if path else {}
        values = dict(doc.get("shard", {}))
        environ = os.environ if environ is None else environ
        fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "security"}
        unknown = set(values) - set(fields)
        if unknown:
            raise ValueError(f"unknown [shard] settings: {sorted(unknown)}")
        for name, f in fields.items():
            raw = environ.get(ENV_PREFIX + name.upper())
            if raw is not None:
                values[name] = _parse(raw, str(f.type), ENV_PREFIX + name.upper())
        if "data_dir" not in values:
            raise ValueError("the shard needs a data_dir (config [shard] data_dir or EMBPS_SHARD_DATA_DIR)")
        return cls(**values, security=Security.from_table(doc.get("security", {}), environ))


def _parse(raw: str, type_name: str, variable: str):
    try:
        return {"int": int, "float": float}.get(type_name, str)(raw)
    except ValueError:
        raise ValueError(f"{variable}={raw!r} is not a valid {type_name}") from None

