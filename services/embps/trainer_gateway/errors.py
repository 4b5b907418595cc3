"""Failures a gateway reports to its trainer: each carries the gRPC status the trainer will see."""

import grpc


class GatewayError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
