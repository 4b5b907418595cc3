"""`host:port` addresses, parsed in one place (IPv6 hosts may be bracketed: `[::1]:50051`)."""


def split_host_port(address: str) -> tuple[str, int]:
    """The host (brackets removed; "" when the address is `:port`) and the port of `address`."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"address must be host:port, got {address!r}")
    return host.strip("[]"), int(port)
