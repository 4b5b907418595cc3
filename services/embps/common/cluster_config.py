"""The cluster config: the one source of shard addresses for clients, tools and deployment.

    [cluster]
    deadline_seconds = 30      # per client call, retries included
    data_path = "auto"         # "auto" (the best path each shard offers), "grpc", "tcp" or "rdma"
    max_message_bytes = 67108864
    placement = "hetgmp.placement"   # optional: route by this placement file (relative to this file);
                                     # host h's shard is the h-th [[shards]]; default: jump hash

    [[shards]]
    address = "10.0.0.1:50051"
    [[shards]]
    address = "10.0.0.2:50051"

The order of [[shards]] is the routing order: changing it moves keys (see `embps reshard`).

Hosts (optional, all shards or none): `host = "host-0"` in a [[shards]] entry names the host it runs
on.  Each host runs one shard and, in a training job, one trainer with its gateway: host h is shard h
(so a placement's owner host is the shard a key is routed to).
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from .security import NO_SECURITY, Security

DATA_PATHS = ("auto", "grpc", "tcp", "rdma")
# Fields that come from the file's other tables ([[shards]], [security]) or from none, not from [cluster].
_NOT_CLUSTER_SETTINGS = {"shards", "hosts", "security", "extra"}
DEFAULT_MAX_MESSAGE_BYTES = 64 << 20


@dataclass(frozen=True)
class ClusterConfig:
    shards: tuple[str, ...]
    deadline_seconds: float = 30.0
    data_path: str = "auto"
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    security: Security = NO_SECURITY
    placement: str = ""        # a placement file's path; "" routes every key by jump hash
    hosts: tuple[str, ...] = ()   # () or the name of the host of every shard, in shard order
    extra: dict = field(default_factory=dict, compare=False, repr=False)   # sections other tools own

    def __post_init__(self):
        if not self.shards:
            raise ValueError("a cluster needs at least one shard")
        if self.data_path not in DATA_PATHS:
            raise ValueError(f"data_path must be one of {DATA_PATHS}, got {self.data_path!r}")
        if not self.deadline_seconds > 0:
            raise ValueError("deadline_seconds must be positive")
        if not isinstance(self.placement, str):
            raise ValueError(f"placement must be a file's path, got {self.placement!r}")
        if self.hosts and (len(self.hosts) != len(self.shards) or len(set(self.hosts)) != len(self.hosts)
                           or not all(self.hosts)):
            raise ValueError(f"each host runs one shard: give every shard its own host name or none "
                             f"({len(self.shards)} shards, hosts {list(self.hosts)})")

    @classmethod
    def from_addresses(cls, addresses, **settings) -> ClusterConfig:
        return cls(shards=tuple(addresses), **settings)

    @classmethod
    def load(cls, path: str | Path) -> ClusterConfig:
        doc = tomllib.loads(Path(path).read_text())
        entries = doc.get("shards", [])
        try:
            shards = tuple(entry["address"] for entry in entries)
        except (KeyError, TypeError):
            raise ValueError(f"{path}: every [[shards]] entry needs an address") from None
        named = [entry["host"] for entry in entries if "host" in entry]
        if named and len(named) != len(entries):
            raise ValueError(f"{path}: give every [[shards]] entry a host, or none")
        extra = {k: v for k, v in doc.items() if k not in ("cluster", "shards", "security")}
        settings = dict(doc.get("cluster", {}))
        unknown = set(settings) - ({f.name for f in fields(cls)} - _NOT_CLUSTER_SETTINGS)
        if unknown:   # a misspelt setting would otherwise be a TypeError naming a constructor
            raise ValueError(f"{path}: unknown [cluster] settings: {sorted(unknown)}")
        if isinstance(settings.get("placement"), str) and settings["placement"]:
            settings["placement"] = str(Path(path).resolve().parent / settings["placement"])
        return cls(shards=shards, extra=extra, security=Security.from_table(doc.get("security", {})),
                   hosts=tuple(named), **settings)

    def to_toml(self) -> str:
        lines = ["[cluster]", f"deadline_seconds = {self.deadline_seconds}", f'data_path = "{self.data_path}"',
                 f"max_message_bytes = {self.max_message_bytes}"]
        lines += [f"placement = {json.dumps(self.placement)}"] if self.placement else []
        lines += [""]
        for i, address in enumerate(self.shards):
            lines += ["[[shards]]", f'address = "{address}"'] + ([f'host = "{self.hosts[i]}"'] if self.hosts else []) + [""]
        if self.security.enabled:
            lines += ["[security]"] + [f"{k} = {json.dumps(v)}" for k, v in self.security.to_table().items()] + [""]
        return "\n".join(lines)
