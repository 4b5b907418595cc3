"""Clients of the embps services: PSClient talks to the parameter shards."""

from embps.common.cluster_config import ClusterConfig

from .errors import ShardError
from .ps_client import PSClient
from .routing import JumpHashRouter, jump_hash

__all__ = ["ClusterConfig", "JumpHashRouter", "PSClient", "ShardError", "jump_hash"]
