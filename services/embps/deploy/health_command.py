"""`embps health HOST:PORT [--service NAME] [--timeout S]`: asks a server's gRPC health service
(grpc.health.v1) and exits 0 iff it answers SERVING; otherwise prints why and exits 1.  It is the
health check of every service in docker-compose.yml.  EMBPS_SECURITY_* variables (the ones the
service in the same container reads) make the probe use TLS; health checks need no token."""

from __future__ import annotations

import os
import sys

from embps.common.health import health_status
from embps.common.security import Security

COMMAND = "health"
HELP = "exit 0 iff the gRPC health service at HOST:PORT says SERVING (the containers' health check)"


def add_arguments(parser) -> None:
    parser.add_argument("address", metavar="HOST:PORT")
    parser.add_argument("--service", default="", help='service name to ask about (default: "", the server)')
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default: %(default)s)")


def check(address: str, service: str = "", timeout: float = 3.0) -> str:
    """The status name the server reports (SERVING, NOT_SERVING, ...), or the gRPC error's code name."""
    with Security.from_table({}, os.environ).channel(address) as channel:
        return health_status(channel, service, timeout)


def run(args) -> int:
    status = check(args.address, args.service, args.timeout)
    if status == "SERVING":
        return 0
    print(f"{args.address} service {args.service!r}: {status}", file=sys.stderr)
    return 1
