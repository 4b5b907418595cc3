"""gRPC calls as a careless or hostile client makes them: raw bytes to any RPC of any service, and
the google.rpc.ErrorInfo an embps server attaches to a failed call."""

import grpc
from google.protobuf.descriptor import Descriptor, MethodDescriptor
from google.rpc import error_details_pb2
from grpc_status import rpc_status

# Field 536870911 with wire type 7: no protobuf message parses these bytes.
GARBAGE = b"\xff\xff\xff\xff"


def malformed_requests(message: Descriptor) -> dict[str, bytes]:
    """Undecodable encodings of message, by what is wrong with them."""
    cases = {"garbage": GARBAGE, "truncated_varint": b"\x08\x80", "length_beyond_end": b"\x12\x7fab"}
    if message.fields:   # upb keeps a field 0 of a message without fields as an unknown field
        cases["field_zero"] = b"\x00\x01"
    strings = [field for field in message.fields if field.type == field.TYPE_STRING and field.number < 16]
    if strings:   # a string field (tag: number, wire type 2) that holds invalid UTF-8
        cases["bad_utf8"] = bytes([strings[0].number << 3 | 2]) + b"\x02\xff\xfe"
    return cases


def raw_call(channel: grpc.Channel, method: MethodDescriptor, payloads: list[bytes], timeout: float = 20):
    """Sends payloads as they are (the first alone unless the method takes a stream); returns the reply's
    bytes (a list for a stream), or raises the call's grpc.RpcError."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    kind = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
            (True, False): channel.stream_unary, (True, True): channel.stream_stream}
    call = kind[method.client_streaming, method.server_streaming](path, request_serializer=None,
                                                                   response_deserializer=None)
    reply = call(iter(payloads) if method.client_streaming else payloads[0], timeout=timeout)
    return list(reply) if method.server_streaming else reply


def error_info(error: grpc.RpcError):
    """(domain, reason) of the google.rpc.ErrorInfo in the call's trailing metadata, "" if it has none."""
    status = rpc_status.from_call(error)
    if status is None:
        return ""
    assert status.code == error.code().value[0] and status.message == error.details()
    infos = [d for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
    assert len(infos) == 1, status
    info = error_details_pb2.ErrorInfo()
    infos[0].Unpack(info)
    return info.domain, info.reason
