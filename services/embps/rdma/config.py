"""The settings of the RDMA path: the shard's (`RdmaPathConfig`) and the client's (`RdmaClientConfig`)."""

from __future__ import annotations

from dataclasses import dataclass

from .discovery import RDMA_MODES
from .exchange import check_name, split_memcached


@dataclass(frozen=True)
class RdmaPathConfig:
    """The shard side (built from ShardConfig's rdma_* fields)."""

    mode: str = "auto"             # "auto": use a device when there is one; "on": fail without; "off"
    device: str = ""               # verbs device name; "" = the first
    port: int = 1
    gid_index: int = -1            # -1: RoCE v2 IPv4 GID when on Ethernet, 0 on InfiniBand
    memcached: str = ""            # host:port of the exchange; clients must reach the same address
    cluster: str = "default"
    slots: int = 8                 # requests in flight per client
    max_keys: int = 8192           # keys per request (clients split bigger batches)
    max_sge: int = 30              # asked per WR; capped by the device's max_sge and what the QP grants
    scratch_slot_bytes: int = 256 << 10   # initial scratch per slot; grows (re-registered) on demand
    max_clients: int = 64
    handshake_timeout_seconds: float = 10.0
    completion_timeout_seconds: float = 10.0
    accept_interval_seconds: float = 0.05
    client_check_interval_seconds: float = 1.0   # a client that closed removed its record: drop its QP

    def __post_init__(self):
        if self.mode not in RDMA_MODES:
            raise ValueError(f"rdma mode must be auto, on or off, got {self.mode!r}")
        if self.memcached:
            split_memcached(self.memcached)
        check_name("rdma cluster", self.cluster)
        if min(self.slots, self.max_keys, self.max_sge, self.max_clients, self.port) < 1:
            raise ValueError("rdma slots, max_keys, max_sge, max_clients and port must be positive")


@dataclass(frozen=True)
class RdmaClientConfig:
    """The client side: the [rdma] table of the cluster config (ClusterConfig.extra["rdma"])."""

    mode: str = "auto"          # auto | on | off
    device: str = ""
    port: int = 1
    gid_index: int = -1
    slots: int = 4              # requests in flight (at most what the shard allows)
    slot_bytes: int = 4 << 20   # response bytes per request
    connect_timeout_seconds: float = 10.0

    @classmethod
    def from_cluster(cls, config) -> RdmaClientConfig:
        table = dict(getattr(config, "extra", {}).get("rdma", {}))
        unknown = set(table) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown [rdma] settings: {sorted(unknown)}")
        return cls(**table)
