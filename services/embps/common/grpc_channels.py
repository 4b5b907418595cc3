"""gRPC options every embps server and client sets: message-size limits chosen deliberately (a batch
of 65,536 rows of dim 128 is 32 MiB) rather than gRPC's 4 MiB default."""


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]
