"""What the shard and client sides of the RDMA data path share: device discovery with automatic
fallback, the PetPS-style memcached exchange of queue-pair endpoints, and the request/reply format.

Discovery.  `rdma_devices()` lists the verbs devices pyverbs sees ([] when pyverbs is missing, the
list is empty or listing fails); `choose_data_path()` decides whether a process uses RDMA, logs the
fallback once ("no RDMA device (reason); using the TCP/gRPC path") and keeps the reason for Stats
and metrics.

Exchange (PetPS bootstrap, §3 of the PetPS notes, redone per connection).  A memcached server is the
rendezvous; every key lives under `embps/<cluster>/<shard_id>/`:

    shard          the shard's record: generation, device, limits (JSON)
    clients        a counter; a client's id is the value its INCR returned
    client/<id>    the client's endpoint: gid/lid, qp_num, psn, response buffer MR (addr, rkey, length)
    qp/<id>        the shard's endpoint for that client: gid/lid, qp_num, psn, request-slot MR, max_sge

Each record is a small versioned JSON object (`EndpointInfo`).  A shard (re)start writes a new
generation; client records naming another generation are ignored, so stale records from an earlier
run never connect.  Both sides poll with a timeout and raise `ExchangeTimeout` naming the key and
the memcached server.

Requests travel over the RC queue pair itself (no gRPC round trip on the data path): the client
RDMA-WRITEs a request (table, keys, where to put the rows) into its request slot in the shard's
registered request buffer, with immediate data = batch id.  The shard answers by RDMA-WRITEing the
rows straight from the PM pool into the client's response slot (NIC gathering); the last work
request is WRITE_WITH_IMM carrying the batch id, so the client's receive completion means every
byte has landed (the IB ordering rule, unlike PetPS's sentinel word).  Errors come back the same way
with the top bit of the immediate set and an error record in the response slot.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import socket
import struct
import threading
import time
from dataclasses import asdict, dataclass, field

from .addresses import split_host_port

log = logging.getLogger("embps.rdma")

FORMAT_VERSION = 1
KEY_PREFIX = "embps"
_NAME_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_MAX_KEY_BYTES = 250   # memcached's limit


# ---- discovery and fallback ------------------------------------------------------------------

@dataclass(frozen=True)
class RdmaProbe:
    """What device listing found: the device names, or why there are none."""

    devices: tuple[str, ...]
    reason: str = ""    # empty when devices were found


def probe_rdma() -> RdmaProbe:
    """Lists verbs devices with pyverbs; never raises."""
    try:
        from pyverbs.device import get_device_list
    except ImportError as error:
        return RdmaProbe((), f"pyverbs not importable: {error}")
    try:
        devices = get_device_list()
    except Exception as error:   # PyverbsRDMAError "Failed to get devices list" when none is present
        return RdmaProbe((), f"device listing failed: {error}")
    names = tuple(d.name.decode() if isinstance(d.name, bytes) else str(d.name) for d in devices)
    if not names:
        return RdmaProbe((), "no RDMA device found")
    return RdmaProbe(names)


def rdma_devices() -> list[str]:
    """Names of the RDMA devices on this machine ([] when pyverbs is missing, none exists or listing fails)."""
    return list(probe_rdma().devices)


class RdmaUnavailable(RuntimeError):
    """RDMA was required (rdma = "on") but cannot be used here."""


@dataclass(frozen=True)
class DataPathChoice:
    kind: str              # "rdma" or "fallback" (the TCP/gRPC paths)
    device: str | None
    reason: str            # why RDMA is not used; "" when it is

    @property
    def rdma(self) -> bool:
        return self.kind == "rdma"


RDMA_MODES = ("auto", "on", "off")
_logged: set[tuple[str, str]] = set()
_logged_lock = threading.Lock()
_last_choice: dict[str, DataPathChoice] = {}


def choose_data_path(mode: str = "auto", device: str = "", memcached: str = "", *, role: str = "shard",
                     probe: RdmaProbe | None = None) -> DataPathChoice:
    """Whether this process serves (role "shard") or uses (role "client") the RDMA path.

    mode "auto" uses RDMA when a device (the named one, or the first) exists and memcached is set,
    "on" raises RdmaUnavailable when it cannot, "off" never uses it.  The fallback is logged once
    per process, role and reason; `last_choice(role)` gives it back for Stats and metrics."""
    if mode not in RDMA_MODES:
        raise ValueError(f"rdma mode must be one of {RDMA_MODES}, got {mode!r}")
    what = "no RDMA device"
    if mode == "off":
        choice, what = DataPathChoice("fallback", None, 'disabled by configuration (rdma = "off")'), "RDMA data path off"
    else:
        probe = probe if probe is not None else probe_rdma()
        if not probe.devices:
            choice = DataPathChoice("fallback", None, probe.reason or "no RDMA device found")
        elif device and device not in probe.devices:
            choice = DataPathChoice("fallback", None,
                                    f"device {device!r} not found (present: {', '.join(probe.devices)})")
        elif not memcached:
            choice, what = (DataPathChoice("fallback", None, "no memcached address for the queue-pair exchange"),
                            "RDMA data path unavailable")
        elif importlib.util.find_spec("pymemcache") is None:
            choice, what = (DataPathChoice("fallback", None, "pymemcache is not installed: pip install 'embps[rdma]'"),
                            "RDMA data path unavailable")
        else:
            choice = DataPathChoice("rdma", device or probe.devices[0], "")
    _last_choice[role] = choice
    if not choice.rdma:
        if mode == "on":
            raise RdmaUnavailable(f"RDMA required but unavailable: {choice.reason}")
        with _logged_lock:
            fresh = (role, choice.reason) not in _logged
            _logged.add((role, choice.reason))
        if fresh:
            log.info(f"{what} ({choice.reason}); using the TCP/gRPC path",
                     extra={"role": role, "rdma_reason": choice.reason})
    return choice


def last_choice(role: str = "shard") -> DataPathChoice | None:
    return _last_choice.get(role)


# ---- the address a shard advertises (DataPath kind "rdma") ------------------------------------

@dataclass(frozen=True)
class RdmaAddress:
    memcached_host: str
    memcached_port: int
    cluster: str
    shard_id: str

    @property
    def memcached(self) -> str:
        host = f"[{self.memcached_host}]" if ":" in self.memcached_host else self.memcached_host
        return f"{host}:{self.memcached_port}"

    def __str__(self) -> str:
        return f"memcached://{self.memcached}/{self.cluster}/{self.shard_id}"


def parse_rdma_address(address: str) -> RdmaAddress:
    """`memcached://host:port/<cluster>/<shard_id>`, the address in a shard's DataPath(kind="rdma")."""
    match = re.fullmatch(r"memcached://(\[[^\]]+\]|[^:/\[\]]+):(\d+)/([^/]+)/([^/]+)", address or "")
    if not match:
        raise ValueError(f"RDMA data path address must be memcached://host:port/<cluster>/<shard_id>, "
                         f"got {address!r}")
    host, port, cluster, shard_id = match.groups()
    check_name("cluster", cluster)
    check_name("shard id", shard_id)
    return RdmaAddress(host.strip("[]"), int(port), cluster, shard_id)


def split_memcached(address: str) -> tuple[str, int]:
    host, port = split_host_port(address)
    if not host:
        raise ValueError(f"memcached address must be host:port, got {address!r}")
    return host, port


def check_name(what: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ValueError(f"{what} must be 1-64 characters of [A-Za-z0-9._:-] (it becomes part of memcached "
                         f"keys), got {value!r}")
    return value


# ---- endpoint records ----------------------------------------------------------------------------

class ExchangeError(RuntimeError):
    """The memcached exchange failed: server unreachable, malformed or mismatched record."""


class ExchangeTimeout(ExchangeError, TimeoutError):
    """The peer's record did not appear in time."""


_U16, _U24, _U32, _U64 = (1 << 16) - 1, (1 << 24) - 1, (1 << 32) - 1, (1 << 64) - 1


@dataclass(frozen=True)
class EndpointInfo:
    """One side of an RC connection, as published in memcached.

    gid: the port GID ("xxxx:xxxx:...:xxxx"; zeros on InfiniBand without routing), lid: the port LID
    (0 on RoCE), qp_num/psn: the queue pair and its starting packet sequence number, mr_*: the memory
    region the *peer* writes into (client: its response buffer; shard: the request slots), max_sge:
    scatter-gather entries per work request the sender uses, mtu: the port's active MTU in bytes.
    `extra` carries side-specific settings (slots, slot sizes, max keys)."""

    gid: str
    lid: int
    qp_num: int
    psn: int
    mr_addr: int
    mr_rkey: int
    mr_length: int
    max_sge: int
    mtu: int = 1024
    port: int = 1
    gid_index: int = 0
    link_layer: str = "ethernet"   # or "infiniband"
    generation: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        for name, limit in (("lid", _U16), ("qp_num", _U24), ("psn", _U24), ("mr_addr", _U64), ("mr_rkey", _U32),
                            ("mr_length", _U64), ("max_sge", _U16), ("port", 255), ("gid_index", _U16)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
                raise ExchangeError(f"endpoint field {name} must be an integer in [0, {limit}], got {value!r}")
        if self.mtu not in (256, 512, 1024, 2048, 4096):
            raise ExchangeError(f"endpoint mtu must be 256..4096 bytes, got {self.mtu!r}")
        if not re.fullmatch(r"([0-9a-fA-F]{4}:){7}[0-9a-fA-F]{4}", self.gid or ""):
            raise ExchangeError(f"endpoint gid must be 8 groups of 4 hex digits, got {self.gid!r}")
        if self.link_layer not in ("ethernet", "infiniband"):
            raise ExchangeError(f"endpoint link_layer must be ethernet or infiniband, got {self.link_layer!r}")
        if self.max_sge < 1:
            raise ExchangeError("endpoint max_sge must be at least 1")

    def to_json(self) -> bytes:
        return json.dumps({"v": FORMAT_VERSION, **asdict(self)}, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes | str, where: str = "record") -> EndpointInfo:
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as error:
            raise ExchangeError(f"{where}: not a JSON endpoint record ({error})") from None
        if not isinstance(doc, dict):
            raise ExchangeError(f"{where}: not a JSON endpoint record")
        version = doc.pop("v", None)
        if version != FORMAT_VERSION:
            raise ExchangeError(f"{where}: endpoint record version {version!r}, this side speaks {FORMAT_VERSION}")
        names = set(cls.__dataclass_fields__)
        unknown = set(doc) - names
        if unknown:
            raise ExchangeError(f"{where}: unknown endpoint fields {sorted(unknown)}")
        try:
            return cls(**doc)
        except TypeError as error:
            raise ExchangeError(f"{where}: {error}") from None


# ---- the memcached exchange ------------------------------------------------------------------------

class RdmaExchange:
    """Publishes and polls endpoint records for one shard in one cluster (pymemcache, text protocol)."""

    def __init__(self, memcached: str, cluster: str, shard_id: str, *, connect_timeout: float = 2.0,
                 io_timeout: float = 2.0, poll_interval: float = 0.002, max_poll_interval: float = 0.05,
                 record_ttl_seconds: int = 0):
        from pymemcache.client.base import Client

        self.memcached = memcached
        self.cluster = check_name("cluster", cluster)
        self.shard_id = check_name("shard id", shard_id)
        self.poll_interval, self.max_poll_interval = poll_interval, max_poll_interval
        self.record_ttl = int(record_ttl_seconds)
        self._client = Client(split_memcached(memcached), connect_timeout=connect_timeout, timeout=io_timeout,
                              no_delay=True, default_noreply=False)
        self._lock = threading.Lock()   # pymemcache clients are not thread-safe

    # keys
    def key(self, *parts) -> str:
        key = "/".join((KEY_PREFIX, self.cluster, self.shard_id, *map(str, parts)))
        if len(key) > _MAX_KEY_BYTES:
            raise ValueError(f"memcached key too long ({len(key)} > {_MAX_KEY_BYTES}): {key!r}")
        return key

    @property
    def shard_key(self) -> str:
        return self.key("shard")

    @property
    def counter_key(self) -> str:
        return self.key("clients")

    def client_key(self, client_id: int) -> str:
        return self.key("client", int(client_id))

    def qp_key(self, client_id: int) -> str:
        return self.key("qp", int(client_id))

    # raw operations, with clear errors
    def _call(self, what: str, op, *args, **kwargs):
        from pymemcache.exceptions import MemcacheError
        with self._lock:
            try:
                return op(*args, **kwargs)
            except (OSError, MemcacheError) as error:
                self._client.close()   # reconnects on the next call
                raise ExchangeError(f"memcached at {self.memcached}: {what} failed: "
                                    f"{type(error).__name__}: {error}") from None

    def set(self, key: str, value: bytes) -> None:
        if not self._call(f"set {key}", self._client.set, key, value, expire=self.record_ttl, noreply=False):
            raise ExchangeError(f"memcached at {self.memcached}: set {key} was not stored")

    def get(self, key: str) -> bytes | None:
        return self._call(f"get {key}", self._client.get, key)

    def delete(self, *keys: str) -> None:
        for key in keys:
            self._call(f"delete {key}", self._client.delete, key, noreply=False)

    def poll(self, key: str, timeout: float, what: str) -> bytes:
        """Waits for key to exist; ExchangeTimeout after timeout seconds."""
        deadline = time.monotonic() + timeout
        sleep = self.poll_interval
        while True:
            value = self.get(key)
            if value is not None:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ExchangeTimeout(f"timed out after {timeout:g}s waiting for {what} at memcached "
                                      f"{self.memcached} key {key!r}")
            time.sleep(min(sleep, remaining))
            sleep = min(sleep * 2, self.max_poll_interval)

    # shard side
    def open_shard(self, record: dict) -> int:
        """Publishes the shard record (must hold a "generation") and makes sure the client counter
        exists; returns the counter's value: clients numbered above it are this run's."""
        if not record.get("generation"):
            raise ValueError("the shard record needs a generation")
        self._call(f"add {self.counter_key}", self._client.add, self.counter_key, b"0", noreply=False)
        base = int(self.get(self.counter_key) or 0)
        self.set(self.shard_key, json.dumps({"v": FORMAT_VERSION, **record}, separators=(",", ":")).encode())
        return base

    def client_count(self) -> int:
        value = self.get(self.counter_key)
        return int(value) if value is not None else 0

    def wait_client(self, client_id: int, timeout: float, generation: str = "") -> EndpointInfo:
        key = self.client_key(client_id)
        info = EndpointInfo.from_json(self.poll(key, timeout, f"client {client_id}'s endpoint"), key)
        if generation and info.generation != generation:
            raise ExchangeError(f"{key}: client {client_id} joined shard generation {info.generation!r}, "
                                f"this shard runs {generation!r}")
        return info

    def publish_qp(self, client_id: int, info: EndpointInfo) -> None:
        self.set(self.qp_key(client_id), info.to_json())

    def publish_refusal(self, client_id: int, message: str) -> None:
        """Tells a waiting client why the shard will not connect it (it raises ExchangeError)."""
        self.set(self.qp_key(client_id), json.dumps({"v": FORMAT_VERSION, "error": message}).encode())

    def close_shard(self) -> None:
        self.delete(self.shard_key)

    # client side
    def wait_shard(self, timeout: float) -> dict:
        raw = self.poll(self.shard_key, timeout, f"shard {self.shard_id}'s RDMA record")
        try:
            doc = json.loads(raw)
        except ValueError as error:
            raise ExchangeError(f"{self.shard_key}: not JSON ({error})") from None
        if not isinstance(doc, dict) or doc.pop("v", None) != FORMAT_VERSION:
            raise ExchangeError(f"{self.shard_key}: record version is not {FORMAT_VERSION}")
        return doc

    def register_client(self) -> int:
        """A new client id: INCR on the shard's counter (which the shard creates when it starts)."""
        value = self._call(f"incr {self.counter_key}", self._client.incr, self.counter_key, 1, noreply=False)
        if value is None:
            raise ExchangeError(f"memcached at {self.memcached}: no client counter {self.counter_key!r}: "
                                f"shard {self.shard_id} has not opened its RDMA path")
        return int(value)

    def publish_client(self, client_id: int, info: EndpointInfo) -> None:
        self.set(self.client_key(client_id), info.to_json())

    def wait_qp(self, client_id: int, timeout: float, generation: str = "") -> EndpointInfo:
        key = self.qp_key(client_id)
        info = decode_qp_record(self.poll(key, timeout, f"shard {self.shard_id}'s queue pair"), key)
        if generation and info.generation != generation:
            raise ExchangeError(f"{key}: shard answered for generation {info.generation!r}, expected {generation!r}")
        return info

    def forget_client(self, client_id: int) -> None:
        self.delete(self.client_key(client_id), self.qp_key(client_id))

    def close(self) -> None:
        with self._lock:
            self._client.close()


# ---- requests and replies on the queue pair ---------------------------------------------------------

REQUEST_MAGIC, ERROR_MAGIC = b"EPRQ", b"EPER"
# magic, version, flags, batch id, keys, floats per row expected, response address, its capacity, name length
REQUEST_HEADER = struct.Struct("<4sHHIIIQQH2x")   # 40 bytes: keys stay 8-byte aligned
ERROR_HEADER = struct.Struct("<4sHHI")        # magic, version, status code, message length
FLAG_WITH_STATE = 1
IMM_ERROR = 1 << 31
BATCH_ID_MASK = IMM_ERROR - 1

# Status codes (the numbers of grpc.StatusCode, so clients map them 1:1).
OK, INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, FAILED_PRECONDITION, INTERNAL, UNAVAILABLE = 0, 3, 5, 8, 9, 13, 14
STATUS_NAMES = {OK: "OK", INVALID_ARGUMENT: "INVALID_ARGUMENT", NOT_FOUND: "NOT_FOUND",
                RESOURCE_EXHAUSTED: "RESOURCE_EXHAUSTED", FAILED_PRECONDITION: "FAILED_PRECONDITION",
                INTERNAL: "INTERNAL", UNAVAILABLE: "UNAVAILABLE"}


class ProtocolViolation(ValueError):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class LookupRequest:
    batch_id: int
    table: str
    keys: object          # numpy uint64 vector
    width: int            # floats per row the client expects (dim, + state floats when with_state)
    with_state: bool
    remote_addr: int
    remote_capacity: int

    def reply_bytes(self) -> int:
        return reply_bytes(len(self.keys), self.width)


def reply_bytes(n: int, width: int) -> int:
    """Rows (n x width float32) followed by one found byte per key."""
    return n * (width * 4 + 1)


def request_bytes(n: int, table: str) -> int:
    return REQUEST_HEADER.size + _pad8(len(table.encode())) + 8 * n


def _pad8(n: int) -> int:
    return (n + 7) & ~7


def encode_request(buf, batch_id: int, table: str, keys, width: int, with_state: bool, remote_addr: int,
                   remote_capacity: int) -> int:
    """Writes a lookup request into buf (a writable buffer); returns its length."""
    import numpy as np
    name = table.encode()
    if not 0 < len(name) < 1 << 16:
        raise ValueError("table name must be 1..65535 bytes")
    keys = np.ascontiguousarray(keys, dtype=np.uint64)
    total = request_bytes(len(keys), table)
    view = memoryview(buf).cast("B")
    if total > len(view):
        raise ValueError(f"request of {len(keys)} keys needs {total} bytes, the slot holds {len(view)}")
    REQUEST_HEADER.pack_into(view, 0, REQUEST_MAGIC, FORMAT_VERSION, FLAG_WITH_STATE if with_state else 0,
                             batch_id & BATCH_ID_MASK, len(keys), width, remote_addr, remote_capacity, len(name))
    off = REQUEST_HEADER.size
    view[off:off + len(name)] = name
    off += _pad8(len(name))
    view[off:off + 8 * len(keys)] = keys.view(np.uint8)
    return total


def decode_request(buf, length: int | None = None) -> LookupRequest:
    """Parses a request; ProtocolViolation(INVALID_ARGUMENT) when malformed.  Keys are copied."""
    import numpy as np
    view = memoryview(buf).cast("B")
    if length is not None:
        view = view[:length]
    if len(view) < REQUEST_HEADER.size:
        raise ProtocolViolation(INVALID_ARGUMENT, f"request of {len(view)} bytes is shorter than its header")
    magic, version, flags, batch_id, n, width, raddr, rcap, name_len = REQUEST_HEADER.unpack_from(view, 0)
    if magic != REQUEST_MAGIC or version != FORMAT_VERSION:
        raise ProtocolViolation(INVALID_ARGUMENT, f"bad request magic {magic!r} or version {version}")
    off = REQUEST_HEADER.size
    end = off + _pad8(name_len) + 8 * n
    if name_len == 0 or end > len(view):
        raise ProtocolViolation(INVALID_ARGUMENT, f"request claims {n} keys and a {name_len}-byte name, "
                                f"which do not fit its {len(view)} bytes")
    try:
        table = bytes(view[off:off + name_len]).decode()
    except UnicodeDecodeError:
        raise ProtocolViolation(INVALID_ARGUMENT, "table name is not UTF-8") from None
    off += _pad8(name_len)
    keys = np.frombuffer(view, np.uint64, n, off).copy()
    return LookupRequest(batch_id, table, keys, width, bool(flags & FLAG_WITH_STATE), raddr, rcap)


def encode_error(code: int, message: str, capacity: int) -> bytes:
    """An error record, truncated to capacity bytes (at least the header is kept when it fits)."""
    text = message.encode(errors="replace")[:max(0, capacity - ERROR_HEADER.size)]
    return ERROR_HEADER.pack(ERROR_MAGIC, FORMAT_VERSION, code, len(text)) + text


def decode_error(buf) -> tuple[int, str]:
    view = memoryview(buf).cast("B")
    if len(view) < ERROR_HEADER.size:
        return INTERNAL, "error reply truncated (response slot too small for its header)"
    magic, version, code, length = ERROR_HEADER.unpack_from(view, 0)
    if magic != ERROR_MAGIC or version != FORMAT_VERSION:
        return INTERNAL, f"malformed error reply (magic {magic!r}, version {version})"
    text = bytes(view[ERROR_HEADER.size:ERROR_HEADER.size + length]).decode(errors="replace")
    return code, text


def imm_to_wire(value: int) -> int:
    """Immediate data travel in network byte order; pyverbs passes the raw 32-bit field."""
    return socket.htonl(value & _U32)


def imm_from_wire(value: int) -> int:
    return socket.ntohl(value & _U32)


def decode_qp_record(raw: bytes, where: str) -> EndpointInfo:
    """The shard's answer under qp/<id>: an endpoint, or {"v": 1, "error": "..."} when it refused."""
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and "error" in doc:
        raise ExchangeError(f"{where}: the shard refused the connection: {doc['error']}")
    return EndpointInfo.from_json(raw, where)


# ---- verbs glue both sides use (needs pyverbs and a device; nothing here runs without one) ----------

MTU_BYTES = (256, 512, 1024, 2048, 4096)   # ibv_mtu enum values 1..5


def mtu_enum(nbytes: int) -> int:
    return MTU_BYTES.index(nbytes) + 1


class VerbsDevice:
    """An opened device port: context, protection domain, port attributes and the GID used for routing."""

    def __init__(self, name: str, port: int = 1, gid_index: int = -1):
        import pyverbs.enums as e
        from pyverbs.device import Context
        from pyverbs.pd import PD

        self.name, self.port = name, port
        self.ctx = Context(name=name)
        try:
            self.attr = self.ctx.query_device()
            port_attr = self.ctx.query_port(port)
            if port_attr.state != e.IBV_PORT_ACTIVE:
                raise RdmaUnavailable(f"port {port} of {name} is not active (state {port_attr.state})")
            self.link_layer = "ethernet" if port_attr.link_layer == e.IBV_LINK_LAYER_ETHERNET else "infiniband"
            self.lid = int(port_attr.lid)
            self.mtu = MTU_BYTES[int(port_attr.active_mtu) - 1]
            self.max_msg_bytes = int(port_attr.max_msg_sz)
            self.gid_index = gid_index if gid_index >= 0 else self._pick_gid_index(port_attr.gid_tbl_len)
            self.gid = str(self.ctx.query_gid(port, self.gid_index).gid)
            self.pd = PD(self.ctx)
        except BaseException:
            self.ctx.close()
            raise

    def _pick_gid_index(self, table_len: int) -> int:
        """InfiniBand: 0.  RoCE: a RoCE v2 GID holding an IPv4 address, else any RoCE v2 GID, else the first."""
        import pyverbs.enums as e
        if self.link_layer == "infiniband":
            return 0
        v2_types = {e.IBV_GID_TYPE_ROCE_V2, e.IBV_GID_TYPE_SYSFS_ROCE_V2}
        first = v2 = None
        for index in range(table_len):
            try:
                gid = str(self.ctx.query_gid(self.port, index).gid)
            except Exception:
                continue
            if gid.replace(":", "").strip("0") == "":
                continue
            first = index if first is None else first
            try:
                is_v2 = self.ctx.query_gid_type(self.port, index) in v2_types
            except Exception:
                is_v2 = False
            if is_v2 and gid.startswith("0000:0000:0000:0000:0000:ffff:"):
                return index
            if is_v2 and v2 is None:
                v2 = index
        if v2 is not None:
            return v2
        if first is not None:
            return first
        raise RdmaUnavailable(f"port {self.port} of {self.name} has no usable GID")

    def endpoint(self, qp_num: int, psn: int, mr_addr: int, mr_rkey: int, mr_length: int, max_sge: int,
                 generation: str, extra: dict) -> EndpointInfo:
        return EndpointInfo(gid=self.gid, lid=self.lid, qp_num=qp_num, psn=psn, mr_addr=mr_addr, mr_rkey=mr_rkey,
                            mr_length=mr_length, max_sge=max_sge, mtu=self.mtu, port=self.port,
                            gid_index=self.gid_index, link_layer=self.link_layer, generation=generation, extra=extra)

    def close(self) -> None:
        self.pd.close()
        self.ctx.close()


class RegisteredBuffer:
    """Page-aligned anonymous memory registered as one MR; `array` is its numpy uint8 view."""

    def __init__(self, device: VerbsDevice, nbytes: int, access: int):
        import mmap

        import numpy as np
        from pyverbs.mr import MR

        self.nbytes = max(int(nbytes), 64)
        self._mmap = mmap.mmap(-1, self.nbytes)
        self.array = np.frombuffer(self._mmap, np.uint8)
        self.addr = int(self.array.ctypes.data)
        self.mr = MR(device.pd, self.nbytes, access, address=self.addr)

    @property
    def lkey(self) -> int:
        return int(self.mr.lkey)

    @property
    def rkey(self) -> int:
        return int(self.mr.rkey)

    def close(self) -> None:
        self.mr.close()   # the mapping goes with the last reference to `array`


def create_rc_qp(device: VerbsDevice, cq, max_send_wr: int, max_recv_wr: int, max_send_sge: int):
    """An RC queue pair in INIT (remote writes allowed), and the scatter-gather entries per send WR it
    accepts: asks for max_send_sge and halves on refusal (the device's max_sge is not always valid for
    every opcode)."""
    import pyverbs.enums as e
    from pyverbs.pyverbs_error import PyverbsRDMAError
    from pyverbs.qp import QP, QPAttr, QPCap, QPInitAttr

    attr = QPAttr(port_num=device.port)
    attr.qp_access_flags = e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE
    sge = max(1, int(max_send_sge))
    while True:
        cap = QPCap(max_send_wr=max_send_wr, max_recv_wr=max_recv_wr, max_send_sge=sge, max_recv_sge=1)
        init = QPInitAttr(qp_type=e.IBV_QPT_RC, scq=cq, rcq=cq, cap=cap)
        try:
            qp = QP(device.pd, init, attr)
            break
        except PyverbsRDMAError:
            if sge == 1:
                raise
            sge //= 2
    try:   # the device may grant more than asked; never use more than asked
        _, granted = qp.query(e.IBV_QP_CAP)
        sge = min(sge, int(granted.max_send_sge)) or sge
    except Exception:
        pass
    return qp, sge


def connect_rc_qp(qp, device: VerbsDevice, local_psn: int, remote: EndpointInfo) -> None:
    """INIT -> RTR -> RTS towards the remote endpoint (ibv_rc_pingpong's timers, infinite RNR retry)."""
    from pyverbs.addr import GID, AHAttr, GlobalRoute
    from pyverbs.qp import QPAttr

    attr = QPAttr(port_num=device.port)
    attr.path_mtu = mtu_enum(min(device.mtu, remote.mtu))
    attr.dest_qp_num = remote.qp_num
    attr.rq_psn = remote.psn
    attr.sq_psn = local_psn
    attr.max_dest_rd_atomic = 1
    attr.max_rd_atomic = 1
    attr.min_rnr_timer = 12
    attr.timeout = 14
    attr.retry_cnt = 7
    attr.rnr_retry = 7
    if device.link_layer == "ethernet" or remote.lid == 0:
        route = GlobalRoute(dgid=GID(remote.gid), sgid_index=device.gid_index)
        attr.ah_attr = AHAttr(port_num=device.port, is_global=1, gr=route, dlid=remote.lid)
    else:
        attr.ah_attr = AHAttr(port_num=device.port, is_global=0, dlid=remote.lid)
    qp.to_rts(attr)


def set_qp_error(qp) -> None:
    """Moves a QP to ERROR: the NIC stops, and every outstanding WR completes with a flush error."""
    import pyverbs.enums as e
    from pyverbs.qp import QPAttr
    qp.modify(QPAttr(qp_state=e.IBV_QPS_ERR), e.IBV_QP_STATE)


def post_recvs(qp, count: int, wr_id: int, sink_addr: int, sink_lkey: int) -> None:
    """Receive WRs for WRITE_WITH_IMM (no payload lands in them; pyverbs insists on one SGE)."""
    from pyverbs.wr import SGE, RecvWR
    for _ in range(count):
        qp.post_recv(RecvWR(wr_id=wr_id, num_sge=1, sg=[SGE(sink_addr, 16, sink_lkey)]), None)
