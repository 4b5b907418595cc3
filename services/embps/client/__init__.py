"""Clients of the embps services: PSClient talks to the parameter shards."""

from embps.common.cluster_config import ClusterConfig

from .errors import ShardError
from .ps_client import PSClient
from .routing import JumpHashRouter, PlacementRouter, jump_hash, router_for

__all__ = ["ClusterConfig", "JumpHashRouter", "PSClient", "PlacementRouter", "ShardError", "jump_hash", "router_for"]
