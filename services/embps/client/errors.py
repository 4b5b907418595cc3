"""The one exception PSClient raises for a failed shard call, whatever the data path."""

import grpc

from embps.api.status import reason_of_rpc_error


class ShardError(Exception):
    """`code` is a grpc.StatusCode; `reason` the native status name the shard gave (e.g. "NONFINITE" or
    "PROTOCOL", both INVALID_ARGUMENT; "" when it gave none); `shard` the address that answered (or did not)."""

    def __init__(self, code: grpc.StatusCode, details: str, shard: str = "", reason: str = ""):
        super().__init__(f"{code.name}{f' ({reason})' if reason else ''}: {details}"
                         + (f" (shard {shard})" if shard else ""))
        self.code, self.details, self.shard, self.reason = code, details, shard, reason

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError, shard: str) -> "ShardError":
        return cls(error.code(), error.details() or "", shard, reason_of_rpc_error(error))
