"""The one exception PSClient raises for a failed shard call, whatever the data path."""

import grpc


class ShardError(Exception):
    """`code` is a grpc.StatusCode; `shard` the address that answered (or did not)."""

    def __init__(self, code: grpc.StatusCode, details: str, shard: str = ""):
        super().__init__(f"{code.name}: {details}" + (f" (shard {shard})" if shard else ""))
        self.code, self.details, self.shard = code, details, shard

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError, shard: str) -> "ShardError":
        return cls(error.code(), error.details() or "", shard)
