"""grpc.reflection.v1, which newer tools ask for first.  grpcio-reflection ships only v1alpha, whose
messages are v1's under another package name (the same on the wire): v1 is served by the v1alpha
servicer, and its file, made from v1alpha's, is in the default pool so that reflection describes it."""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, text_format
from google.protobuf.descriptor import FileDescriptor
from grpc_reflection.v1alpha import reflection_pb2

SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
V1ALPHA_SERVICE = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]   # what serves SERVICE_NAME
_FILE_NAME = "grpc/reflection/v1/reflection.proto"


def _v1_file() -> FileDescriptor:
    pool = descriptor_pool.Default()
    try:
        return pool.FindFileByName(_FILE_NAME)
    except KeyError:
        pass
    v1alpha = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(v1alpha)
    v1 = text_format.Parse(text_format.MessageToString(v1alpha).replace("grpc.reflection.v1alpha",
                                                                        "grpc.reflection.v1"),
                           descriptor_pb2.FileDescriptorProto())
    v1.name = _FILE_NAME
    v1.ClearField("options")   # v1alpha's are its code generators' (and "deprecated")
    return pool.AddSerializedFile(v1.SerializeToString())


FILE = _v1_file()
