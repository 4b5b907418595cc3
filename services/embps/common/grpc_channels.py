"""gRPC options every embps server and client sets: message-size limits chosen deliberately (a batch
of 65,536 rows of dim 128 is 32 MiB) rather than gRPC's 4 MiB default."""

# The training path's limit (oracle, gateways, peers, trainer SDK): a global batch's plan, features,
# rows or peer gradients travel in one message.
TRAINING_MAX_MESSAGE_BYTES = 256 << 20


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]
