"""The memcached exchange of queue-pair endpoints (PetPS bootstrap, redone per connection).

A memcached server is the rendezvous; every key lives under `embps/<cluster>/<shard_id>/`:

    shard          the shard's record: generation, device, limits (JSON)
    clients        a counter; a client's id is the value its INCR returned
    client/<id>    the client's endpoint: gid/lid, qp_num, psn, response buffer MR (addr, rkey, length)
    qp/<id>        the shard's endpoint for that client: gid/lid, qp_num, psn, request-slot MR, max_sge

Each record is a small versioned JSON object (`EndpointInfo`).  A shard (re)start writes a new
generation; client records naming another generation are ignored, so stale records from an earlier
run never connect.  Both sides poll with a timeout and raise `ExchangeTimeout` naming the key and
the memcached server.  The address a shard advertises for all this is `RdmaAddress`.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import asdict, dataclass, field

from embps.common.addresses import split_host_port

_RECORD_VERSION = 1
_KEY_PREFIX = "embps"
_NAME_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_MAX_KEY_BYTES = 250   # memcached's limit


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
        return json.dumps({"v": _RECORD_VERSION, **asdict(self)}, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes | str, where: str = "record") -> EndpointInfo:
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as error:
            raise ExchangeError(f"{where}: not a JSON endpoint record ({error})") from None
        if not isinstance(doc, dict):
            raise ExchangeError(f"{where}: not a JSON endpoint record")
        version = doc.pop("v", None)
        if version != _RECORD_VERSION:
            raise ExchangeError(f"{where}: endpoint record version {version!r}, this side speaks {_RECORD_VERSION}")
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
                 io_timeout: float = 2.0, poll_interval: float = 0.002, max_poll_interval: float = 0.05):
        from pymemcache.client.base import Client

        self.memcached = memcached
        self.cluster = check_name("cluster", cluster)
        self.shard_id = check_name("shard id", shard_id)
        self.poll_interval, self.max_poll_interval = poll_interval, max_poll_interval
        self._client = Client(split_memcached(memcached), connect_timeout=connect_timeout, timeout=io_timeout,
                              no_delay=True, default_noreply=False)
        self._lock = threading.Lock()   # pymemcache clients are not thread-safe

    # keys
    def key(self, *parts) -> str:
        key = "/".join((_KEY_PREFIX, self.cluster, self.shard_id, *map(str, parts)))
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
        if not self._call(f"set {key}", self._client.set, key, value, noreply=False):
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
        self.set(self.shard_key, json.dumps({"v": _RECORD_VERSION, **record}, separators=(",", ":")).encode())
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
        self.set(self.qp_key(client_id), json.dumps({"v": _RECORD_VERSION, "error": message}).encode())

    def close_shard(self) -> None:
        self.delete(self.shard_key)

    # client side
    def wait_shard(self, timeout: float) -> dict:
        raw = self.poll(self.shard_key, timeout, f"shard {self.shard_id}'s RDMA record")
        try:
            doc = json.loads(raw)
        except ValueError as error:
            raise ExchangeError(f"{self.shard_key}: not JSON ({error})") from None
        if not isinstance(doc, dict) or doc.pop("v", None) != _RECORD_VERSION:
            raise ExchangeError(f"{self.shard_key}: record version is not {_RECORD_VERSION}")
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
        info = _decode_qp_record(self.poll(key, timeout, f"shard {self.shard_id}'s queue pair"), key)
        if generation and info.generation != generation:
            raise ExchangeError(f"{key}: shard answered for generation {info.generation!r}, expected {generation!r}")
        return info

    def forget_client(self, client_id: int) -> None:
        self.delete(self.client_key(client_id), self.qp_key(client_id))

    def close(self) -> None:
        with self._lock:
            self._client.close()


def _decode_qp_record(raw: bytes, where: str) -> EndpointInfo:
    """The shard's answer under qp/<id>: an endpoint, or {"v": 1, "error": "..."} when it refused."""
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and "error" in doc:
        raise ExchangeError(f"{where}: the shard refused the connection: {doc['error']}")
    return EndpointInfo.from_json(raw, where)
