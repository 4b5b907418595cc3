"""Fuzzing one real shard on both paths, group by group: every ParameterShard RPC with random and broken
protobuf and with its fields at their limits; the native TCP frame parser with random, cut and lying
frames; concurrent table lifecycle churn; stalled readers; an idle connection flood; a restart.  After
each group the shard is alive, healthy, and every table holds exactly what a reference model of the
test's acknowledged writes says (keys, rows and state, bit for bit, by Export).

Bad input may get any clean status (INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, ...) or, on TCP,
an error reply or a closed connection; INTERNAL, UNKNOWN, a hang, a crash, a server path in a message
or a changed table is a finding.  A group collects its findings and reports them all.  Seeded: set
EMBPS_FUZZ_SEED to replay another run; the seed is in every report."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Callable

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError
from helpers import protobuf_fuzz
from helpers.data_wire import exchange, split_replies, split_requests, tcp_address
from helpers.shard_model import ShardModel, Unmodelled, compare

from embps.api import InitializerSpec, OptimizerSpec, TableSpec
from embps.api.status import grpc_code
from embps.client import ShardError
from embps.client.tcp_data_path import TcpDataPath
from embps.common.health import health_status
from embps.common.local_cluster import LocalShard
from embps.common.spec_messages import spec_to_message
from embps.store._native import lib
from embps.store.data_server import WIRE_REQUEST
from embps.v1 import ps_shard_pb2 as pb
from embps.v1 import ps_shard_pb2_grpc as pb_grpc

SEED = int(os.environ.get("EMBPS_FUZZ_SEED", "20240610"))
C = grpc.StatusCode
MAX_KEYS, MAX_MESSAGE, SEND_TIMEOUT = 1024, 1 << 20, 8.0
SETTINGS = dict(max_batch_keys=MAX_KEYS, max_message_bytes=MAX_MESSAGE, data_send_timeout_seconds=SEND_TIMEOUT,
                data_receive_timeout_seconds=3.0, data_idle_timeout_seconds=3.0, data_max_connections=64)
CALL_TIMEOUT = 10.0      # any one call; far beyond what a healthy shard needs
OTHERS_TIMEOUT = 5.0     # calls that a stalled client must not delay at all
CLEAN = frozenset({C.OK, C.INVALID_ARGUMENT, C.NOT_FOUND, C.ALREADY_EXISTS, C.RESOURCE_EXHAUSTED,
                   C.FAILED_PRECONDITION, C.OUT_OF_RANGE})
NO_ANSWER = frozenset({C.UNAVAILABLE, C.DEADLINE_EXCEEDED, C.CANCELLED})
BAD_TCP_REASONS = frozenset({"IO", "CORRUPT", "CRASHED", "UNKNOWN"})
SERVICE = pb.DESCRIPTOR.services_by_name["ParameterShard"]
WRITES = {"CreateTable", "DropTable", "Update", "Assign", "Delete", "Import"}
LOOKUP, UPDATE, REFRESH = lib.EMBPS_WIRE_OP_LOOKUP, lib.EMBPS_WIRE_OP_UPDATE, lib.EMBPS_WIRE_OP_REFRESH


def spec(kind="sgd", dim=8, capacity=4096, lr=1.0, init="zeros", missing="initialize") -> pb.TableSpec:
    return spec_to_message(TableSpec(dim, capacity, OptimizerSpec(kind, lr=lr), InitializerSpec(init, 0.01, 7),
                                     missing))


# The tables every group checks: (spec, rows written at the start, with optimizer state).
ALPHA, BRAVO, CHARLIE, DELTA = "alpha_sgd", "bravo_report", "charlie_adagrad", "delta_adam"
ECHO, WIDE, FOXTROT, GOLF, HOTEL = "echo_empty", "wide_stall", "foxtrot_export", "golf_counter", "hotel_victim"
TABLES = {
    ALPHA: (spec(dim=8), 500),
    BRAVO: (spec(dim=3, capacity=1000, lr=0.5, missing="report"), 100),
    CHARLIE: (spec("adagrad", dim=16, capacity=1000, lr=0.1, init="uniform"), 200),
    DELTA: (spec("adam", dim=4, capacity=2000, lr=0.01, init="normal"), 300),
    ECHO: (spec("rowwise_adagrad", dim=2, capacity=10, lr=0.1), 0),
    WIDE: (spec(dim=2048, capacity=64), 64),              # 8 KiB rows: a lookup reply outgrows any buffer
    FOXTROT: (spec("adagrad", dim=32, capacity=40000, lr=0.1), 30000),   # 7.7 MB to export
    GOLF: (spec(dim=4, capacity=256), 0),
    HOTEL: (spec(dim=4, capacity=16), 10),
}


def keys_of(*keys) -> bytes:
    return np.array(keys, np.uint64).tobytes()


def floats(n, width, value=1.0) -> bytes:
    return np.full((n, width), value, np.float32).tobytes()


class ShardDown(Exception):
    """The shard died or stopped answering: the group ends here."""


class Findings:
    """What a group found, grouped by kind for the report."""

    def __init__(self, group: str):
        self.group = group
        self.by_kind: dict[str, list[str]] = defaultdict(list)
        self.lock = threading.Lock()

    def add(self, kind: str, text: str) -> None:
        with self.lock:
            self.by_kind[kind].append(text[:600])

    def __bool__(self) -> bool:
        return bool(self.by_kind)

    def report(self) -> str:
        total = sum(map(len, self.by_kind.values()))
        lines = [f"group '{self.group}' (seed {SEED}): {total} findings"]
        for kind, texts in sorted(self.by_kind.items()):
            lines.append(f"  {kind}: {len(texts)}")
            lines += [f"    - {text}" for text in texts[:4]]
        return "\n".join(lines)


class Fuzz:
    """The shard under test, its reference model, and the calls every group makes."""

    def __init__(self, shard: LocalShard):
        self.shard, self.model = shard, ShardModel()
        self.tcp = tcp_address(shard)
        self.connect()

    def connect(self) -> None:
        """A fresh channel: one that saw the shard down keeps failing fast while it backs off."""
        self.channel = grpc.insecure_channel(self.shard.address,
                                             options=[("grpc.max_receive_message_length", 64 << 20)])
        self.stub = pb_grpc.ParameterShardStub(self.channel)

    def start(self) -> None:
        self.channel.close()
        self.shard.start()
        self.connect()

    # ---- set-up and the check after each group ----------------------------------------------

    def populate(self) -> None:
        rng = np.random.default_rng(SEED)
        for name, (table_spec, n_rows) in TABLES.items():
            self.model.create(self.stub.CreateTable(pb.CreateTableRequest(name=name, spec=table_spec),
                                                    timeout=CALL_TIMEOUT))
            state_floats = self.model.tables[name].state_floats
            per_call = max(1, min(MAX_KEYS, (MAX_MESSAGE // 2) // (4 * (table_spec.dim + state_floats) + 8)))
            for start in range(0, n_rows, per_call):
                keys = np.arange(start + 1, min(n_rows, start + per_call) + 1, dtype=np.uint64) * 7
                rows = rng.normal(size=(len(keys), table_spec.dim)).astype(np.float32)
                state = np.abs(rng.normal(size=(len(keys), state_floats))).astype(np.float32)
                self.assign(name, keys, rows, state)

    def assign(self, name: str, keys: np.ndarray, rows: np.ndarray, state: np.ndarray | None = None,
               timeout: float = CALL_TIMEOUT) -> None:
        request = pb.AssignRequest(table=name, keys=keys.tobytes(), rows=rows.tobytes(),
                                   state=b"" if state is None else state.tobytes())
        self.stub.Assign(request, timeout=timeout)
        self.model.import_chunks([request])

    def check_after(self, findings: Findings) -> None:
        if self.shard.process.poll() is not None:
            findings.add("shard dead after the group", self.death())
            return
        if not self.serving():
            findings.add("shard not SERVING after the group", "health check failed for 10 s")
            return
        try:
            differences, sums = compare(self.stub, self.model, 60.0)
        except grpc.RpcError as error:
            findings.add("checksum unreadable", f"{error.code().name}: {error.details()}")
            return
        print(f"[{findings.group}] seed {SEED}, table checksums: {sums}")
        for text in differences:
            findings.add("tables differ from the reference model", text)

    def serving(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if health_status(self.channel, timeout=2.0) == "SERVING":
                return True
            time.sleep(0.1)
        return False

    def death(self) -> str:
        code = self.shard.process.returncode
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        log = (self.shard.dir / "shard.log").read_text(errors="replace").splitlines()[-6:]
        return f"the shard process ended with {how}; its log ends: {' | '.join(log)[-400:]}"

    def ensure_serving(self) -> None:
        """A shard that an earlier group killed or wedged (that group reported it) is restarted."""
        if self.shard.process.poll() is None and self.serving(5.0):
            return
        print(f"restarting the shard: {self.death() if self.shard.process.poll() is not None else 'not serving'}")
        self.shard.kill()
        self.start()

    def no_answer(self, context: str) -> None:
        """After a call got no answer: ends the group if the shard is dead or has stopped answering."""
        if self.shard.process.poll() is None and self.serving():
            return
        try:
            self.shard.process.wait(10)   # a crashing process may take a while to go (core dump)
        except subprocess.TimeoutExpired:
            raise ShardDown(f"during {context}: the shard stopped answering health checks") from None
        raise ShardDown(f"during {context}: {self.death()}")

    # ---- raw gRPC calls ------------------------------------------------------------------------

    def raw(self, method: str, payload, timeout: float = CALL_TIMEOUT):
        """(code, details, reply) of a call with unserialized bytes; payload is a list of chunks for
        a client stream, and a server stream's reply the list of its messages."""
        desc, path = SERVICE.methods_by_name[method], f"/{SERVICE.full_name}/{method}"
        try:
            if desc.client_streaming:
                reply = self.channel.stream_unary(path)(iter(payload), timeout=timeout)
            elif desc.server_streaming:
                reply = list(self.channel.unary_stream(path)(payload, timeout=timeout))
            else:
                reply = self.channel.unary_unary(path)(payload, timeout=timeout)
            return C.OK, "", reply
        except grpc.RpcError as error:
            return error.code(), error.details() or "", None

    def judge_status(self, findings: Findings, where: str, code, details: str, allowed=CLEAN) -> None:
        if code not in allowed:
            findings.add(f"{where.split(':')[0]} answered {code.name}", f"{where}: {details[:300]}")
        if str(self.shard.dir) in details:
            findings.add("a server path in an error message", f"{where}: {details[:300]}")
        if len(details) > 4096:
            findings.add("an error message of more than 4 KiB", f"{where}: {len(details)} characters")
        if code in NO_ANSWER:
            self.no_answer(where)


def _decode(message_type, data: bytes):
    try:
        return message_type.FromString(data)
    except DecodeError:
        return None   # the shard cannot have read it either: same protobuf runtime


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory):
    print(f"fuzzing with seed {SEED} (EMBPS_FUZZ_SEED replays a run)")
    shard = LocalShard(tmp_path_factory.mktemp("fuzz"), **SETTINGS)
    harness = Fuzz(shard)
    try:
        harness.populate()
        yield harness
    finally:
        harness.channel.close()
        try:
            shard.stop()
        except subprocess.TimeoutExpired:
            pass   # killed; a group reports a shard that does not stop


def run_group(fuzz: Fuzz, name: str, body: Callable[[Fuzz, Findings], None]) -> None:
    fuzz.ensure_serving()
    findings = Findings(name)
    try:
        body(fuzz, findings)
    except ShardDown as down:
        findings.add("shard down", str(down))
    fuzz.check_after(findings)
    assert not findings, findings.report()


# ---- group 1: every RPC, raw bytes -----------------------------------------------------------------

def _base_messages() -> dict:
    """A valid request of every RPC (a list of chunks for Import), the start of its mutations."""
    rows = np.arange(8, dtype=np.float32).reshape(2, 4)
    adam_state = np.ones((2, 9), np.float32)
    return {
        "CreateTable": pb.CreateTableRequest(name="fz_made", spec=spec(dim=4, capacity=16)),
        "DescribeTable": pb.DescribeTableRequest(table=ALPHA),
        "ListTables": pb.ListTablesRequest(),
        "DropTable": pb.DropTableRequest(table="fz_absent"),
        "Lookup": pb.LookupRequest(table=ALPHA, keys=keys_of(7, 14, 21, 10**6), with_state=True),
        "Update": pb.UpdateRequest(table=ALPHA, keys=keys_of(35, 42, 35), grads=floats(3, 8, 0.25),
                                   counts=np.array([1, 4, 2], np.uint32).tobytes()),
        "RefreshStale": pb.RefreshStaleRequest(table=ALPHA, keys=keys_of(7, 35, 10**6), versions=keys_of(0, 1, 2**64 - 1),
                                               bound=1, with_state=True),
        "Assign": pb.AssignRequest(table=DELTA, keys=keys_of(70, 77), rows=rows.tobytes(), state=adam_state.tobytes()),
        "Delete": pb.DeleteRequest(table=DELTA, keys=keys_of(9999991, 9999992)),
        "Export": pb.ExportRequest(table=BRAVO, chunk_rows=7),
        "Import": [pb.ImportRequest(table=DELTA, keys=keys_of(84, 91), rows=rows.tobytes())],
        "GetShardStats": pb.GetShardStatsRequest(),
    }


NAMES_AT_LIMITS = {
    "empty name": ("", {C.INVALID_ARGUMENT, C.NOT_FOUND}),
    "63-character name": ("a" * 63, {C.NOT_FOUND}),
    "64-character name": ("a" * 64, {C.INVALID_ARGUMENT, C.NOT_FOUND}),
    "20000-character name": ("a" * 20000, {C.INVALID_ARGUMENT, C.NOT_FOUND}),
    "20000-character name with NUL": ("a" * 20000 + "\0", {C.INVALID_ARGUMENT}),
    "name with NUL aliasing a table": (ALPHA + "\0zz", {C.INVALID_ARGUMENT}),
    "NUL name": ("\0", {C.INVALID_ARGUMENT}),
}
FINITE_ONLY = {C.INVALID_ARGUMENT}
CREATED = {C.OK}
SHAPE_REFUSED = {C.INVALID_ARGUMENT, C.RESOURCE_EXHAUSTED}
EITHER = {C.OK, C.INVALID_ARGUMENT}


def _create_cases() -> list:
    names = (f"fz_limit_{i}" for i in range(1000))   # one each: a file a failed create leaves stays to be seen

    def create(name=None, **fields):
        return pb.CreateTableRequest(name=next(names) if name is None else name,
                                     spec=spec(**{"dim": 4, "capacity": 16, **fields}))

    def with_field(path: str, value, base=None):
        request = base or create()
        target = request.spec
        *parents, leaf = path.split(".")
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, leaf, value)
        return request

    nan, inf = float("nan"), float("inf")
    cases = [(label, create(name=name), {C.INVALID_ARGUMENT})
             for label, (name, _) in NAMES_AT_LIMITS.items() if label != "63-character name"]
    cases += [
        ("63-character name", create(name="b" * 63), CREATED),
        ("name with a slash", create(name="no/slash"), {C.INVALID_ARGUMENT}),
        ("name '..'", create(name=".."), EITHER),
        ("name with a space", create(name="a b"), {C.INVALID_ARGUMENT}),
        ("name with a newline", create(name="fz\n"), {C.INVALID_ARGUMENT}),
        ("non-ASCII name", create(name="fz_é😀"), {C.INVALID_ARGUMENT}),
        ("no spec", pb.CreateTableRequest(name="fz_nospec"), {C.INVALID_ARGUMENT}),
        ("dim 0", create(dim=0), {C.INVALID_ARGUMENT}),
        ("dim 1 capacity 1", create(dim=1, capacity=1), CREATED),
        ("capacity 0", create(capacity=0), {C.INVALID_ARGUMENT}),
        ("dim 2^32-1", create(dim=2**32 - 1, capacity=1), SHAPE_REFUSED),
        ("dim 65536 x capacity 2^20 (272 GiB)", create(dim=65536, capacity=2**20), SHAPE_REFUSED),
        ("capacity 2^32", create(dim=1, capacity=2**32), SHAPE_REFUSED),
        ("capacity 2^36", create(dim=1, capacity=2**36), SHAPE_REFUSED),
        ("capacity 2^64-1", create(dim=1, capacity=2**64 - 1), SHAPE_REFUSED),
        ("optimizer kind 0", with_field("optimizer.kind", 0), {C.INVALID_ARGUMENT}),
        ("optimizer kind 2^31-1", with_field("optimizer.kind", 2**31 - 1), {C.INVALID_ARGUMENT}),
        ("optimizer kind -1", with_field("optimizer.kind", -1), {C.INVALID_ARGUMENT}),
        ("initializer kind 0", with_field("initializer.kind", 0), {C.INVALID_ARGUMENT}),
        ("missing_keys 2^31-1", with_field("missing_keys", 2**31 - 1), {C.INVALID_ARGUMENT}),
        ("missing_keys -1", with_field("missing_keys", -1), {C.INVALID_ARGUMENT}),
        ("seed 2^64-1", with_field("initializer.seed", 2**64 - 1), CREATED),
        ("lr 0", with_field("optimizer.lr", 0.0), EITHER),
        ("lr -1", with_field("optimizer.lr", -1.0), EITHER),
        ("lr 5e-324", with_field("optimizer.lr", 5e-324), EITHER),
        ("beta1 1 (adam)", with_field("optimizer.beta1", 1.0, create(kind="adam")), EITHER),
        ("beta2 2 (adam)", with_field("optimizer.beta2", 2.0, create(kind="adam")), EITHER),
        ("init scale -1", with_field("initializer.scale", -1.0, create(init="uniform")), EITHER),
        ("exists", pb.CreateTableRequest(name=ALPHA, spec=TABLES[ALPHA][0]), {C.ALREADY_EXISTS}),
        ("exists, if_not_exists, same spec", pb.CreateTableRequest(name=ALPHA, spec=TABLES[ALPHA][0],
                                                                   if_not_exists=True), CREATED),
        ("exists, if_not_exists, other spec", pb.CreateTableRequest(name=ALPHA, spec=spec(dim=9),
                                                                    if_not_exists=True), {C.ALREADY_EXISTS}),
    ]
    for field in ("optimizer.lr", "optimizer.eps", "optimizer.beta1", "optimizer.beta2", "initializer.scale"):
        for label, value in (("NaN", nan), ("Inf", inf), ("-Inf", -inf), ("1e39 (beyond float32)", 1e39)):
            base = create(kind="adam", init="uniform")
            cases.append((f"{field} {label}", with_field(field, value, base), FINITE_ONLY))
    return cases


def _row_cases() -> list:
    """Lookup, Update, Assign, Delete, Export and Import with their fields at the limits."""
    many, over = np.arange(1, MAX_KEYS + 1, dtype=np.uint64) * 7, np.arange(1, MAX_KEYS + 2, dtype=np.uint64)
    reserved, big = keys_of(2**64 - 1), np.finfo(np.float32).max
    ok, refused, too_large = {C.OK}, {C.INVALID_ARGUMENT}, {C.RESOURCE_EXHAUSTED}
    delta_rows = lambda n, v=0.5: floats(n, 4, v)   # noqa: E731
    cases = [
        ("Lookup", "no keys", pb.LookupRequest(table=ALPHA), ok),
        ("Lookup", "max keys", pb.LookupRequest(table=ALPHA, keys=many.tobytes(), with_state=True), ok),
        ("Lookup", "max keys + 1", pb.LookupRequest(table=ALPHA, keys=over.tobytes()), too_large),
        ("Lookup", "7 key bytes", pb.LookupRequest(table=ALPHA, keys=b"\1" * 7), refused),
        ("Lookup", "reserved key", pb.LookupRequest(table=ALPHA, keys=reserved), EITHER),
        ("Lookup", "key 2^64-2", pb.LookupRequest(table=BRAVO, keys=keys_of(2**64 - 2)), ok),
        ("Lookup", "reply of 128 x 8 KiB rows, over the message limit",
         pb.LookupRequest(table=WIDE, keys=np.arange(128, dtype=np.uint64).tobytes()), too_large),
        ("Lookup", "reply of max keys x 8 KiB rows", pb.LookupRequest(table=WIDE, keys=many.tobytes()), too_large),
        ("Lookup", "request over the message limit", pb.LookupRequest(table=ALPHA, keys=bytes(2 * MAX_MESSAGE)),
         too_large),
        ("Update", "no keys", pb.UpdateRequest(table=ALPHA), ok),
        ("Update", "max keys", pb.UpdateRequest(table=ALPHA, keys=many.tobytes(), grads=floats(MAX_KEYS, 8, 0.5)), ok),
        ("Update", "max keys + 1", pb.UpdateRequest(table=ALPHA, keys=over.tobytes(), grads=floats(MAX_KEYS + 1, 8)),
         too_large),
        ("Update", "reserved key", pb.UpdateRequest(table=ALPHA, keys=reserved, grads=floats(1, 8)), refused),
        ("Update", "NaN", pb.UpdateRequest(table=ALPHA, keys=keys_of(7), grads=floats(1, 8, np.nan)), refused),
        ("Update", "-Inf", pb.UpdateRequest(table=ALPHA, keys=keys_of(7), grads=floats(1, 8, -np.inf)), refused),
        ("Update", "subnormal", pb.UpdateRequest(table=ALPHA, keys=keys_of(14), grads=floats(1, 8, 1e-45)), ok),
        ("Update", "-0.0", pb.UpdateRequest(table=ALPHA, keys=keys_of(21), grads=floats(1, 8, -0.0)), ok),
        ("Update", "3e38 on a new key", pb.UpdateRequest(table=ALPHA, keys=keys_of(777777), grads=floats(1, 8, 3e38)),
         ok),
        ("Update", "3e38 again: the row would overflow",
         pb.UpdateRequest(table=ALPHA, keys=keys_of(777777), grads=floats(1, 8, 3e38)), refused),
        ("Update", "two 3e38 of one key: the sum overflows",
         pb.UpdateRequest(table=ALPHA, keys=keys_of(888888, 888888), grads=floats(2, 8, 3e38)), refused),
        ("Update", "grads of a wrong dim", pb.UpdateRequest(table=ALPHA, keys=keys_of(7), grads=floats(1, 7)), refused),
        ("Update", "a count of 0", pb.UpdateRequest(table=ALPHA, keys=keys_of(7), grads=floats(1, 8),
                                                    counts=bytes(4)), refused),
        ("Update", "a count of 2^32-1", pb.UpdateRequest(table=ALPHA, keys=keys_of(7), grads=floats(1, 8, 0.0),
                                                         counts=b"\xff" * 4), ok),
        ("Update", "counts of a wrong length", pb.UpdateRequest(table=ALPHA, keys=keys_of(7), grads=floats(1, 8),
                                                                counts=bytes(5)), refused),
        ("RefreshStale", "no keys", pb.RefreshStaleRequest(table=ALPHA), ok),
        ("RefreshStale", "max keys, no copies", pb.RefreshStaleRequest(
            table=ALPHA, keys=many.tobytes(), versions=b"\xff" * 8 * MAX_KEYS, with_state=True), ok),
        ("RefreshStale", "max keys + 1", pb.RefreshStaleRequest(table=ALPHA, keys=over.tobytes(),
                                                                versions=bytes(8 * (MAX_KEYS + 1))), too_large),
        ("RefreshStale", "bound 2^64-1", pb.RefreshStaleRequest(table=ALPHA, keys=keys_of(7), versions=bytes(8),
                                                                bound=2**64 - 1), ok),
        ("RefreshStale", "versions of a wrong length", pb.RefreshStaleRequest(table=ALPHA, keys=keys_of(7),
                                                                              versions=bytes(7)), refused),
        ("RefreshStale", "reply of max keys x 8 KiB rows", pb.RefreshStaleRequest(
            table=WIDE, keys=many.tobytes(), versions=b"\xff" * 8 * MAX_KEYS), too_large),
        ("Assign", "no keys", pb.AssignRequest(table=DELTA), ok),
        ("Assign", "NaN rows", pb.AssignRequest(table=DELTA, keys=keys_of(7), rows=delta_rows(1, np.nan)), refused),
        ("Assign", "Inf rows", pb.AssignRequest(table=DELTA, keys=keys_of(7), rows=delta_rows(1, np.inf)), refused),
        ("Assign", "NaN state", pb.AssignRequest(table=DELTA, keys=keys_of(7), rows=delta_rows(1),
                                                 state=floats(1, 9, np.nan)), refused),
        ("Assign", "float32 max rows", pb.AssignRequest(table=DELTA, keys=keys_of(7000), rows=delta_rows(1, big)), ok),
        ("Assign", "subnormal rows", pb.AssignRequest(table=DELTA, keys=keys_of(7007), rows=delta_rows(1, 1e-45)), ok),
        ("Assign", "repeated keys, the last wins", pb.AssignRequest(table=DELTA, keys=keys_of(7014, 7014),
                                                                    rows=np.arange(8, dtype=np.float32).tobytes()), ok),
        ("Assign", "state of a wrong size", pb.AssignRequest(table=DELTA, keys=keys_of(7), rows=delta_rows(1),
                                                             state=floats(1, 3)), refused),
        ("Assign", "reserved key", pb.AssignRequest(table=DELTA, keys=reserved, rows=delta_rows(1)), refused),
        ("Assign", "max keys + 1", pb.AssignRequest(table=DELTA, keys=over.tobytes(), rows=delta_rows(MAX_KEYS + 1)),
         too_large),
        ("Assign", "over capacity", pb.AssignRequest(table=ECHO, keys=np.arange(1, 12, dtype=np.uint64).tobytes(),
                                                     rows=floats(11, 2)), too_large),
        ("Delete", "no keys", pb.DeleteRequest(table=DELTA), ok),
        ("Delete", "reserved key", pb.DeleteRequest(table=DELTA, keys=reserved), EITHER),
        ("Delete", "a present key twice", pb.DeleteRequest(table=DELTA, keys=keys_of(7, 7, 14)), ok),
        ("Delete", "max keys + 1", pb.DeleteRequest(table=DELTA, keys=over.tobytes()), too_large),
        ("Delete", "7 key bytes", pb.DeleteRequest(table=DELTA, keys=b"\0" * 7), refused),
    ]
    for chunk_rows in (0, 1, 2**32 - 1):
        cases += [("Export", f"chunk_rows {chunk_rows}", pb.ExportRequest(table=t, chunk_rows=chunk_rows), ok)
                  for t in (CHARLIE, WIDE)]
    return cases


def _import_cases() -> list:
    good = pb.ImportRequest(table=DELTA, keys=keys_of(98, 105), rows=floats(2, 4, 0.25))
    return [
        ("no chunks", [], {C.OK}),
        ("first chunk without a table", [pb.ImportRequest(keys=keys_of(1), rows=floats(1, 4))], {C.INVALID_ARGUMENT}),
        ("a chunk, then garbage", [good, b"\xff\xff\xff"], {C.INVALID_ARGUMENT}),
        ("a chunk, then a cut chunk", [good, good.SerializeToString()[:-3]], {C.INVALID_ARGUMENT}),
        ("a chunk, then NaN rows", [good, pb.ImportRequest(keys=keys_of(112), rows=floats(1, 4, np.nan))],
         {C.INVALID_ARGUMENT}),
        ("a chunk of max keys + 1", [pb.ImportRequest(table=DELTA, keys=np.arange(1, MAX_KEYS + 2, dtype=np.uint64)
                                                      .tobytes(), rows=floats(MAX_KEYS + 1, 4))],
         {C.RESOURCE_EXHAUSTED}),
        ("a chunk for another table", [good, pb.ImportRequest(table=ECHO, keys=keys_of(1), rows=floats(1, 2))],
         {C.OK}),
    ]


def _rpc_cases(rng: np.random.Generator) -> list:
    """(method, label, payload, allowed codes) for every RPC: random, broken, mutated and at the limits."""
    bases = _base_messages()
    assert set(bases) == set(SERVICE.methods_by_name), "every RPC needs a base message"
    cases = []
    for method, base in bases.items():
        desc = SERVICE.methods_by_name[method].input_type
        if method == "Import":
            first = base[0].SerializeToString()
            fuzzed = (protobuf_fuzz.random_messages(rng, 20) + protobuf_fuzz.structural(desc, first)
                      + protobuf_fuzz.mutations(first, rng, 40))
            # Alternately alone and after a good chunk, which then stays imported whatever the next one is.
            cases += [(method, label, [data] if i % 2 else [first, data], CLEAN)
                      for i, (label, data) in enumerate(fuzzed)]
            continue
        data = base.SerializeToString()
        fuzzed = (protobuf_fuzz.random_messages(rng, 20) + protobuf_fuzz.structural(desc, data)
                  + protobuf_fuzz.mutations(data, rng, 40))
        cases += [(method, label, payload, CLEAN) for label, payload in fuzzed]
    for label, (name, allowed) in NAMES_AT_LIMITS.items():
        cases += [("DescribeTable", label, pb.DescribeTableRequest(table=name), allowed),
                  ("DropTable", label, pb.DropTableRequest(table=name), allowed),
                  ("Lookup", label, pb.LookupRequest(table=name, keys=keys_of(7)), allowed),
                  ("Update", label, pb.UpdateRequest(table=name, keys=keys_of(7), grads=floats(1, 8)), allowed),
                  ("Assign", label, pb.AssignRequest(table=name, keys=keys_of(7), rows=floats(1, 8)), allowed),
                  ("Delete", label, pb.DeleteRequest(table=name, keys=keys_of(7)), allowed),
                  ("Export", label, pb.ExportRequest(table=name), allowed),
                  ("Import", label, [pb.ImportRequest(table=name, keys=keys_of(7), rows=floats(1, 8))], allowed)]
    cases += [("CreateTable", label, request, allowed) for label, request, allowed in _create_cases()]
    cases += [(method, label, request, allowed) for method, label, request, allowed in _row_cases()]
    cases += [("Import", label, chunks, allowed) for label, chunks, allowed in _import_cases()]
    for method in ("ListTables", "GetShardStats"):
        cases.append((method, "unknown fields only", protobuf_fuzz.length_delimited(5, b"x") + b"\x08\x01", {C.OK}))
    return cases


def _serialized(payload):
    if isinstance(payload, list):
        return [p if isinstance(p, bytes) else p.SerializeToString() for p in payload]
    return payload if isinstance(payload, bytes) else payload.SerializeToString()


def _account(fuzz: Fuzz, findings: Findings, method: str, where: str, payload, code, reply) -> None:
    """Brings the model along with what the shard acknowledged, and checks what it returned."""
    message_type = getattr(pb, SERVICE.methods_by_name[method].input_type.name)
    if method == "Import":
        chunks = [_decode(message_type, p) for p in payload]
        applied = chunks if code == C.OK else chunks[:-1]   # only the last chunk of a case is in question
        if code in NO_ANSWER or code in (C.INTERNAL, C.UNKNOWN):
            for chunk in chunks:
                if chunk is not None:
                    fuzz.model.mark_uncertain(chunk.table, where)
            return
        _apply(fuzz, findings, where, lambda: fuzz.model.import_chunks([c for c in applied if c is not None]))
        return
    request = _decode(message_type, payload)
    if request is None:
        return
    if code == C.OK:
        _apply(fuzz, findings, where, lambda: fuzz.model.apply(method, request, reply))
        _check_reads(fuzz, findings, method, where, request, reply)
        if method == "CreateTable":
            _drop_created(fuzz, findings, where, pb.TableInfo.FromString(reply).name)
    elif method in WRITES and (code in NO_ANSWER or code in (C.INTERNAL, C.UNKNOWN)):
        fuzz.model.mark_uncertain(getattr(request, "table", ""), where)


def _apply(fuzz: Fuzz, findings: Findings, where: str, apply) -> None:
    try:
        for text in apply() or []:
            findings.add("acknowledged write breaks an invariant", f"{where}: {text}")
    except KeyError as error:
        findings.add("a write to a table that does not exist was acknowledged", f"{where}: {error}")
    except (Unmodelled, ValueError) as error:
        findings.add("a write the model cannot follow was acknowledged", f"{where}: {error}")


def _drop_created(fuzz: Fuzz, findings: Findings, where: str, name: str) -> None:
    """Tables a case created go again, so the fuzz leaves only the reference tables."""
    if name in TABLES:
        return   # if_not_exists on a reference table: nothing was created
    try:
        fuzz.stub.DropTable(pb.DropTableRequest(table=name), timeout=CALL_TIMEOUT)
        fuzz.model.drop(name)
    except grpc.RpcError as error:
        findings.add("a table a case created cannot be dropped", f"{where}: {name!r}: {error.code().name} "
                                                                  f"{error.details()[:200]}")


def _check_reads(fuzz: Fuzz, findings: Findings, method: str, where: str, request, reply) -> None:
    if method not in ("Lookup", "Export") or request.table not in fuzz.model.tables or \
            request.table in fuzz.model.uncertain:
        return
    if method == "Export":
        keys = np.frombuffer(b"".join(pb.ExportResponse.FromString(r).keys for r in reply), "<u8")
        expected = fuzz.model.contents(request.table)[0]
        if not np.array_equal(np.sort(keys), expected):
            findings.add("a read returned other data", f"{where}: exported {len(keys)} keys, expected {len(expected)}")
        return
    response, keys = pb.LookupResponse.FromString(reply), np.frombuffer(request.keys, "<u8")
    rows, found, known = fuzz.model.expected_rows(request.table, keys)
    got = np.frombuffer(response.rows, "<f4")
    if len(got) != rows.size or len(response.found) != len(keys):
        findings.add("a read returned other data", f"{where}: {len(got)} floats and {len(response.found)} found "
                                                   f"flags for {len(keys)} keys")
        return
    got = got.reshape(rows.shape)
    if not np.array_equal(np.frombuffer(response.found, np.bool_), found) or \
            not np.array_equal(got[known].view(np.uint32), rows[known].view(np.uint32)):
        findings.add("a read returned other data", f"{where}: rows or found flags differ from the model")


def group_grpc(fuzz: Fuzz, findings: Findings) -> None:
    rng = np.random.default_rng(SEED + 1)
    for method, label, payload, allowed in _rpc_cases(rng):
        where = f"{method}: {label}"
        data = _serialized(payload)
        code, details, reply = fuzz.raw(method, data)
        _account(fuzz, findings, method, where, data, code, reply)
        fuzz.judge_status(findings, where, code, details, allowed)
    restart(fuzz, findings)


def test_every_rpc_answers_bad_protobuf_and_limits_precisely(fuzz):
    run_group(fuzz, "every RPC: random, broken and mutated protobuf, fields at their limits", group_grpc)


# ---- group 2: the native TCP frame parser ------------------------------------------------------------

def _frame(op=LOOKUP, name=ALPHA.encode(), keys=(7, 14), dim=8, grads=None, flags=0, reserved=0,
           magic=lib.EMBPS_WIRE_MAGIC, n=None) -> bytes:
    keys = np.array(keys, np.uint64)
    body = keys.tobytes() + (b"" if grads is None else np.asarray(grads, np.float32).tobytes())
    return WIRE_REQUEST.pack(magic, op, flags, len(name), reserved, len(keys) if n is None else n, dim) + name + body


def _update_frame(keys=(35, 42), value=0.5, name=ALPHA.encode(), dim=8) -> bytes:
    return _frame(UPDATE, name, keys, dim, np.full((len(keys), dim), value, np.float32))


def _refresh_frame(keys=(7, 14), versions=(2**64 - 1, 2**64 - 1), bound=0, dim=8, flags=0,
                   name=ALPHA.encode()) -> bytes:
    body = np.array(versions, np.uint64).tobytes() + np.array([bound], np.uint64).tobytes()
    return _frame(REFRESH, name, keys, dim, flags=flags) + body


def _tcp_cases(rng: np.random.Generator) -> list:
    """(label, bytes, expected statuses of the first replies, or None for any clean outcome)."""
    valid, update = _frame(), _update_frame()
    cases = [(f"random {i}", rng.bytes(int(rng.integers(1, 100))), None) for i in range(30)]
    for i in range(60):
        op = int(rng.choice([0, LOOKUP, UPDATE, REFRESH, 4, 255]))
        name_len, n = int(rng.choice([0, 1, 5, 63, 64, 255])), int(rng.choice([0, 1, 3, MAX_KEYS, MAX_KEYS + 1,
                                                                                  2**31, 2**32 - 1]))
        dim = int(rng.choice([0, 1, 8, 2**16, 2**32 - 1]))
        head = WIRE_REQUEST.pack(lib.EMBPS_WIRE_MAGIC, op, int(rng.integers(0, 256)), name_len,
                                 int(rng.integers(0, 256)), n, dim)
        cases.append((f"random header {i}", head + rng.bytes(int(rng.integers(0, 600))), None))
    cases += [(f"cut at byte {cut}", valid[:cut], []) for cut in range(1, len(valid))]
    cases += [(f"update cut at byte {cut}", update[:cut], []) for cut in range(1, len(update), 5)]
    cases += [
        ("nothing sent", b"", []),
        ("header says 4 keys, 2 sent", _frame(n=4), []),
        ("header says 1 key, 3 sent", _frame(keys=(7, 14, 21), n=1), ["OK", "PROTOCOL"]),
        ("name length says 20, the name is 9 bytes", WIRE_REQUEST.pack(lib.EMBPS_WIRE_MAGIC, LOOKUP, 0, 20, 0, 1, 8)
         + ALPHA.encode() + bytes(19), ["INVALID_ARGUMENT"]),
        ("name length 0", _frame(name=b""), None),
        ("name length 64", _frame(name=b"a" * 64), None),
        ("name length 255", _frame(name=b"a" * 255), None),
        ("63-character name", _frame(name=b"a" * 63), ["NOT_FOUND"]),
        ("lookup 2^32-1 keys", _frame(n=2**32 - 1), ["TOO_LARGE"]),
        ("update 2^32-1 keys", _frame(UPDATE, n=2**32 - 1), ["TOO_LARGE"]),
        ("update dim 2^32-1", _frame(UPDATE, keys=(7,), dim=2**32 - 1), ["TOO_LARGE"]),
        ("update max keys of dim 2^20", _frame(UPDATE, keys=(), n=MAX_KEYS, dim=2**20), ["TOO_LARGE"]),
        ("update with counts", _frame(UPDATE, keys=(35, 42), grads=np.full((2, 8), 0.5), flags=lib.EMBPS_WIRE_WITH_COUNTS)
         + np.array([3, 1], np.uint32).tobytes(), ["OK"]),
        ("update with a count of 0", _frame(UPDATE, keys=(35,), grads=np.full((1, 8), 0.5),
                                            flags=lib.EMBPS_WIRE_WITH_COUNTS) + bytes(4), ["INVALID_ARGUMENT"]),
        ("refresh, no copies, with state", _refresh_frame(flags=lib.EMBPS_WIRE_WITH_STATE), ["OK"]),
        ("refresh at version 0, bound 0", _refresh_frame(versions=(0, 0)), ["OK"]),
        ("refresh of a wrong dim", _refresh_frame(dim=7), ["INVALID_ARGUMENT"]),
        ("refresh, dim 0", _refresh_frame(dim=0), ["OK"]),
        ("refresh max keys + 1", _frame(REFRESH, keys=(), n=MAX_KEYS + 1), ["TOO_LARGE"]),
        ("refresh 2^32-1 keys", _frame(REFRESH, keys=(), n=2**32 - 1), ["TOO_LARGE"]),
        ("refresh cut before its bound", _refresh_frame()[:-8], []),
        ("lookup max keys + 1", _frame(n=MAX_KEYS + 1), ["TOO_LARGE"]),
        ("lookup max keys", _frame(keys=np.arange(1, MAX_KEYS + 1) * 7), ["OK"]),
        ("lookup no keys", _frame(keys=()), ["OK"]),
        ("bad magic", _frame(magic=0xDEADBEEF), ["PROTOCOL"]),
        ("op 0", _frame(op=0), ["PROTOCOL"]),
        ("unknown flag bits", _frame(flags=0xFE), None),
        ("with state, dim 0", _frame(flags=lib.EMBPS_WIRE_WITH_STATE, dim=0), None),
        ("with state", _frame(name=CHARLIE.encode(), dim=16, flags=lib.EMBPS_WIRE_WITH_STATE), ["OK"]),
        ("reserved byte set", _frame(reserved=0xFF), None),
        ("lookup of a wrong dim, then a good one", _frame(dim=7) + valid, ["INVALID_ARGUMENT", "OK"]),
        ("update of a wrong dim", _update_frame(dim=7), ["INVALID_ARGUMENT"]),
        ("update NaN", _update_frame(value=np.nan), ["NONFINITE"]),
        ("update reserved key", _update_frame(keys=(2**64 - 1,)), ["INVALID_ARGUMENT"]),
        ("update 3e38 twice of one new key: the sum overflows", _update_frame(keys=(999999, 999999), value=3e38),
         ["NONFINITE"]),
        ("update of the report table", _update_frame(name=BRAVO.encode(), dim=3, keys=(7, 7, 700)), ["OK"]),
        ("eight lookups in one write", b"".join(_frame(keys=(7 * i, 7 * i + 7)) for i in range(8)), ["OK"] * 8),
        ("an update, then lookups of its keys", update + _frame(keys=(35, 42)), ["OK", "OK"]),
    ]
    for name in (ALPHA.encode() + b"\0zz", ALPHA.encode() + b"\0", b"\0" + ALPHA.encode()):
        cases += [(f"lookup of {name!r}", _frame(name=name), ["INVALID_ARGUMENT"]),
                  (f"update of {name!r}", _update_frame(name=name), ["INVALID_ARGUMENT"])]
    cases += [(f"garbage after a good {kind} {i}", frame + rng.bytes(int(rng.integers(1, 64))), ["OK"])
              for i in range(8) for kind, frame in (("lookup", valid), ("update", _update_frame(keys=(56 + i,))))]
    for kind, base in (("lookup", valid), ("update", update), ("refresh", _refresh_frame())):
        cases += [(f"{kind} {label}", data, None) for label, data in protobuf_fuzz.mutations(base, rng, 24)]
    return cases


def _grpc_name_cases() -> list:
    """Names the TCP path must refuse as gRPC refuses them, or not serve: (label, name bytes)."""
    return [("slash", b"no/slash"), ("dot-dot", b".."), ("space", b"a b"), ("non-ASCII", "é".encode()),
            ("newline", ALPHA.encode() + b"\n"), ("not UTF-8", b"\xff\xfe"), ("alias with NUL", ALPHA.encode() + b"\0")]


def _judge_tcp(fuzz: Fuzz, findings: Findings, label: str, sent: bytes, expected, received: bytes, end: str) -> None:
    where = f"tcp: {label}"
    replies, rest = split_replies(received)
    requests = split_requests(sent)   # the server answers them in order, until it closes
    for request, reply in zip(requests, replies):
        _account_tcp(fuzz, findings, where, request, reply)
    if end == "timeout":
        findings.add("tcp: no reply and no close", f"{where}: nothing for {CALL_TIMEOUT} s after the request ended")
    if rest:
        findings.add("tcp: malformed reply", f"{where}: {rest}")
    for reply in replies:
        if reply.status in BAD_TCP_REASONS or (reply.status != "OK" and grpc_code(reply.status) == C.INTERNAL):
            findings.add(f"tcp: answered {reply.status}", f"{where}: {reply.message[:300]}")
        if reply.status != "OK" and reply.payload:
            findings.add("tcp: an error reply with a payload",
                         f"{where}: {reply.status} with {len(reply.payload)} bytes")
        if str(fuzz.shard.dir) in reply.message:
            findings.add("a server path in an error message", f"{where}: {reply.message[:300]}")
    statuses = [r.status for r in replies]
    if expected is not None and statuses[:len(expected)] != expected:
        findings.add("tcp: unexpected status", f"{where}: replies {statuses}, expected {expected} first")
        try:
            fuzz.no_answer(where)   # so that a crash is laid at this case's door
        except ShardDown:
            for request in requests[len(replies):]:   # unanswered updates: applied or not, nobody knows
                if request.op == UPDATE:
                    fuzz.model.mark_uncertain(request.name.decode(errors="replace"), where)
            raise


def _account_tcp(fuzz: Fuzz, findings: Findings, where: str, request, reply) -> None:
    if reply.status != "OK":
        return
    try:
        name = request.name.decode()
        table = fuzz.model.tables[name] if "\0" not in name else None
    except (UnicodeDecodeError, KeyError):
        table = None
    if table is None:
        findings.add("tcp: OK for a table that does not exist", f"{where}: {request.name!r}")
        return
    if request.op == UPDATE:
        _apply(fuzz, findings, where, lambda: fuzz.model.update(name, request.keys, request.grads))
        return
    width = table.dim + (table.state_floats if request.flags & lib.EMBPS_WIRE_WITH_STATE else 0)
    n = request.n_keys
    if request.op == REFRESH:
        _account_refresh(fuzz, findings, where, request, reply, name, width)
        return
    if len(reply.payload) != n * (4 * width + 1):
        findings.add("tcp: a lookup reply of the wrong size", f"{where}: {len(reply.payload)} bytes for {n} keys")
        return
    if name in fuzz.model.uncertain:
        return
    rows, found, known = fuzz.model.expected_rows(name, request.keys)
    got = np.frombuffer(reply.payload, "<f4", n * width).reshape(n, width)[:, :table.dim]
    got_found = np.frombuffer(reply.payload, np.bool_, n, 4 * n * width)
    if not np.array_equal(got_found, found) or not np.array_equal(got[known].view(np.uint32),
                                                                   rows[known].view(np.uint32)):
        findings.add("tcp: a lookup returned other rows than the model", where)


def _account_refresh(fuzz: Fuzz, findings: Findings, where: str, request, reply, name: str, width: int) -> None:
    """A refresh answers m <= n rows at ascending positions, "no copy" ones among them, as the model has them."""
    n, payload = request.n_keys, reply.payload
    m = int(np.frombuffer(payload, "<u8", 1)[0]) if len(payload) >= 8 else -1
    if not 0 <= m <= n or len(payload) != 8 + m * (12 + 4 * width):
        findings.add("tcp: a refresh reply of the wrong size", f"{where}: {len(payload)} bytes for {n} keys")
        return
    index = np.frombuffer(payload, "<u4", m, 8 + 8 * m).astype(np.int64)
    no_copy = np.flatnonzero(request.versions == 2**64 - 1)
    if np.any(np.diff(index) <= 0) or (m and index[-1] >= n) or not np.isin(no_copy, index).all():
        findings.add("tcp: a refresh answered the wrong positions", f"{where}: {index.tolist()[:20]}")
        return
    if name in fuzz.model.uncertain or m == 0:
        return
    rows, _, known = fuzz.model.expected_rows(name, request.keys[index])
    got = np.frombuffer(payload, "<f4", m * width, 8 + 12 * m).reshape(m, width)[:, :rows.shape[1]]
    if not np.array_equal(got[known].view(np.uint32), rows[known].view(np.uint32)):
        findings.add("tcp: a refresh returned other rows than the model", where)


def _tcp_lookup_works(fuzz: Fuzz, findings: Findings, where: str, timeout: float = CALL_TIMEOUT) -> None:
    """A well-behaved client on a fresh connection gets exactly the model's rows."""
    keys = np.arange(1, 65, dtype=np.uint64) * 7
    path = TcpDataPath(f"{fuzz.tcp[0]}:{fuzz.tcp[1]}", timeout)
    try:
        rows, _, found = path.lookup(ALPHA, keys, dim=8)
    except ShardError as error:
        findings.add("tcp: a good client is not served", f"{where}: {error.code.name} {error.details}")
        if error.code in NO_ANSWER:
            fuzz.no_answer(where)
        return
    finally:
        path.close()
    expected, expected_found, _ = fuzz.model.expected_rows(ALPHA, keys)
    if ALPHA not in fuzz.model.uncertain and (not np.array_equal(found, expected_found)
                                              or not np.array_equal(rows.view(np.uint32), expected.view(np.uint32))):
        findings.add("tcp: a good client got other rows than the model", where)


def _exchange(fuzz: Fuzz, findings: Findings, label: str, data: bytes) -> tuple[bytes, str]:
    try:
        return exchange(fuzz.tcp, data, CALL_TIMEOUT)
    except OSError as error:   # cannot connect
        fuzz.no_answer(f"tcp: {label}")
        findings.add("tcp: a client cannot connect", f"{label}: {error!r}")
        return b"", "refused"


def group_tcp(fuzz: Fuzz, findings: Findings) -> None:
    rng = np.random.default_rng(SEED + 2)
    for i, (label, data, expected) in enumerate(_tcp_cases(rng)):
        received, end = _exchange(fuzz, findings, label, data)
        _judge_tcp(fuzz, findings, label, data, expected, received, end)
        if i % 40 == 39:
            _tcp_lookup_works(fuzz, findings, f"after case {label}")
    for label, name in _grpc_name_cases():
        received, _ = _exchange(fuzz, findings, f"name {label}", _frame(name=name))
        tcp_status = [r.status for r in split_replies(received)[0]][:1]
        code, details, _ = fuzz.raw("Lookup", protobuf_fuzz.length_delimited(1, name)
                                    + protobuf_fuzz.length_delimited(2, keys_of(7)))
        # Refused as gRPC refuses it; a name gRPC only finds missing may also be refused.
        allowed = [["INVALID_ARGUMENT"]] + ([["NOT_FOUND"]] if code == C.NOT_FOUND else [])
        if tcp_status not in allowed:
            findings.add("tcp: a name answered otherwise than on gRPC",
                         f"name {label} {name!r}: tcp {tcp_status}, gRPC {code.name} {details[:100]}")
    _tcp_lookup_works(fuzz, findings, "after the frame fuzz")


def test_tcp_frame_parser_answers_bad_frames_cleanly(fuzz):
    run_group(fuzz, "the TCP frame parser: random, cut, lying and mutated frames", group_tcp)


# ---- group 3: concurrent lifecycle churn ------------------------------------------------------------

CHURN_NAMES = ("churn_a", "churn_b", "churn_c")
CHURN_CLEAN = CLEAN | {C.ABORTED}


def _churn_op(fuzz: Fuzz, rng: np.random.Generator, thread: int, role: str) -> tuple[str, Callable[[], object]]:
    """One operation of a thread's role: create or drop the first shared name, or anything on any of them
    (or on the counter table, modelled)."""
    name = CHURN_NAMES[0] if role != "mixed" else str(rng.choice(CHURN_NAMES))
    dim = int(rng.choice([4, 8]))
    keys = rng.integers(1, 200, int(rng.integers(1, 20))).astype(np.uint64)
    grads = np.ones((len(keys), dim), np.float32)
    s, t = fuzz.stub, CALL_TIMEOUT
    ops = {
        "create": lambda: s.CreateTable(pb.CreateTableRequest(name=name, spec=spec(dim=dim, capacity=256),
                                                              if_not_exists=bool(rng.integers(2))), timeout=t),
        "drop": lambda: s.DropTable(pb.DropTableRequest(table=name), timeout=t),
        "describe": lambda: s.DescribeTable(pb.DescribeTableRequest(table=name), timeout=t),
        "list": lambda: s.ListTables(pb.ListTablesRequest(), timeout=t),
        "stats": lambda: s.GetShardStats(pb.GetShardStatsRequest(), timeout=t),
        "lookup": lambda: s.Lookup(pb.LookupRequest(table=name, keys=keys.tobytes(), with_state=True), timeout=t),
        "update": lambda: s.Update(pb.UpdateRequest(table=name, keys=keys.tobytes(), grads=grads.tobytes()), timeout=t),
        "assign": lambda: s.Assign(pb.AssignRequest(table=name, keys=keys.tobytes(), rows=grads.tobytes()), timeout=t),
        "delete": lambda: s.Delete(pb.DeleteRequest(table=name, keys=keys.tobytes()), timeout=t),
        "export": lambda: list(s.Export(pb.ExportRequest(table=name, chunk_rows=16), timeout=t)),
        "import": lambda: s.Import(iter([pb.ImportRequest(table=name, keys=keys.tobytes(), rows=grads.tobytes())]),
                                   timeout=t),
        "tcp lookup": lambda: _tcp_call(fuzz, "lookup", name, keys, grads),
        "tcp update": lambda: _tcp_call(fuzz, "update", name, keys, grads),
        "counter": lambda: _count(fuzz, thread),
    }
    op = role if role != "mixed" else str(rng.choice(list(ops)))
    return f"{op} {name}", ops[op]


def _tcp_call(fuzz: Fuzz, op: str, name: str, keys: np.ndarray, grads: np.ndarray):
    path = TcpDataPath(f"{fuzz.tcp[0]}:{fuzz.tcp[1]}", CALL_TIMEOUT)
    try:
        return path.lookup(name, keys) if op == "lookup" else path.update(name, keys, grads)
    finally:
        path.close()


def _count(fuzz: Fuzz, thread: int) -> None:
    """Adds whole numbers to the counter table: exact in float32 in any order, so the model follows."""
    keys = np.arange(thread, thread + 8, dtype=np.uint64)
    grads = np.full((8, 4), float(thread + 1), np.float32)
    try:
        fuzz.stub.Update(pb.UpdateRequest(table=GOLF, keys=keys.tobytes(), grads=grads.tobytes()), timeout=CALL_TIMEOUT)
    except grpc.RpcError:
        fuzz.model.mark_uncertain(GOLF, "a counter update got no answer")
        raise
    fuzz.model.update(GOLF, keys, grads)


def _churn_thread(fuzz: Fuzz, findings: Findings, thread: int, role: str, stop: threading.Event,
                  died: list) -> None:
    rng = np.random.default_rng(SEED + 100 + thread)
    for i in range(100):
        if stop.is_set():
            return
        label, op = _churn_op(fuzz, rng, thread, role)
        try:
            op()
            continue
        except grpc.RpcError as error:
            code, details = error.code(), error.details() or ""
        except ShardError as error:
            code, details = error.code, error.details
        except Exception as error:   # noqa: BLE001 -- a client-side failure is a finding too (bad reply)
            findings.add("churn: the client failed", f"thread {thread} op {i} {label}: {error!r}"[:300])
            continue
        if code not in CHURN_CLEAN:
            findings.add(f"churn: {label.split()[0]} answered {code.name}", f"thread {thread} op {i} {label}: "
                                                                           f"{details[:200]}")
        if code in NO_ANSWER and _exited(fuzz.shard, 3.0):
            died.append(f"during churn op {i} of thread {thread} ({label}): {fuzz.death()}")
            stop.set()


def _exited(shard: LocalShard, within: float) -> bool:
    try:
        shard.process.wait(within)
        return True
    except subprocess.TimeoutExpired:
        return False


def group_churn(fuzz: Fuzz, findings: Findings) -> None:
    stop, died = threading.Event(), []
    roles = ("create", "drop", "drop", "mixed", "mixed", "mixed", "mixed")   # two drops of one name race too
    threads = [threading.Thread(target=_churn_thread, args=(fuzz, findings, i, role, stop, died))
               for i, role in enumerate(roles)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    if any(thread.is_alive() for thread in threads):
        stop.set()
        raise ShardDown("churn threads still running after 120 s: calls hang")
    if died:
        raise ShardDown(died[0])
    for name in CHURN_NAMES:   # what survives must be whole, then it goes: the model does not hold it
        try:
            info = fuzz.stub.DescribeTable(pb.DescribeTableRequest(table=name), timeout=CALL_TIMEOUT)
        except grpc.RpcError as error:
            if error.code() != C.NOT_FOUND:
                findings.add("churn: a surviving table cannot be described", f"{name}: {error.code().name}")
            continue
        try:
            chunks = list(fuzz.stub.Export(pb.ExportRequest(table=name), timeout=CALL_TIMEOUT))
            fuzz.stub.DropTable(pb.DropTableRequest(table=name), timeout=CALL_TIMEOUT)
        except grpc.RpcError as error:
            findings.add("churn: a surviving table cannot be exported and dropped", f"{name}: {error.code().name}")
            continue
        keys = np.frombuffer(b"".join(c.keys for c in chunks), "<u8")
        if len(keys) != info.rows or len(np.unique(keys)) != len(keys):
            findings.add("churn: a surviving table is inconsistent",
                         f"{name}: {info.rows} rows described, {len(keys)} exported, {len(np.unique(keys))} distinct")


def test_concurrent_lifecycle_churn_keeps_the_shard_whole(fuzz):
    run_group(fuzz, "concurrent create/drop/describe/lookup/update/export of shared names", group_churn)


# ---- group 4: stalled readers ----------------------------------------------------------------------

def _stalled_tcp_reader(fuzz: Fuzz) -> socket.socket:
    """Four lookups of 8 MiB replies, never read: the shard's send blocks on the first."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(CALL_TIMEOUT)
    sock.connect(fuzz.tcp)
    keys = np.resize(np.arange(1, 65, dtype=np.uint64) * 7, MAX_KEYS)
    sock.sendall(_frame(name=WIDE.encode(), keys=keys, dim=2048) * 4)
    return sock


class Stalled(Exception):
    """Calls of other clients wait for the stalled readers: the rest of the checks would only wait too."""


def _timed_call(findings: Findings, fuzz: Fuzz, what: str, call, timeout=OTHERS_TIMEOUT):
    """call(timeout) by another client while readers stall; a failure or a wait past timeout is a finding."""
    try:
        return call(timeout)
    except grpc.RpcError as error:
        findings.add(f"stall: {what.split(':')[0]} failed while a reader stalled",
                     f"{what}: {error.code().name} {(error.details() or '')[:200]}")
        if error.code() == C.UNAVAILABLE:
            fuzz.no_answer(what)
        if error.code() == C.DEADLINE_EXCEEDED and sum(
                "DEADLINE_EXCEEDED" in text for texts in findings.by_kind.values() for text in texts) >= 2:
            raise Stalled() from None
    return None


def _others_keep_working(fuzz: Fuzz, findings: Findings) -> bool:
    """Calls on other tables, and reads of the stalled ones, as if nobody stalled; returns whether the
    drop of the victim table got an answer."""
    s = fuzz.stub
    dropped = _timed_call(findings, fuzz, "DropTable: an unrelated table",
                          lambda t: s.DropTable(pb.DropTableRequest(table=HOTEL), timeout=t))
    if dropped is not None:
        fuzz.model.drop(HOTEL)
    for step, call in (
            ("CreateTable", lambda t: s.CreateTable(pb.CreateTableRequest(name="india_new", spec=spec(dim=4)),
                                                    timeout=t)),
            ("DescribeTable", lambda t: s.DescribeTable(pb.DescribeTableRequest(table="india_new"), timeout=t)),
            ("DropTable: the new table", lambda t: s.DropTable(pb.DropTableRequest(table="india_new"), timeout=t)),
            ("Lookup: the exported table", lambda t: s.Lookup(pb.LookupRequest(table=FOXTROT, keys=keys_of(7, 14)),
                                                              timeout=t)),
            ("Lookup: the stalled TCP table", lambda t: s.Lookup(pb.LookupRequest(table=WIDE, keys=keys_of(7)),
                                                                 timeout=t)),
            ("ListTables", lambda t: s.ListTables(pb.ListTablesRequest(), timeout=t))):
        _timed_call(findings, fuzz, step, call)
    rows = np.full((2, 32), 0.5, np.float32)
    try:
        fuzz.assign(FOXTROT, np.array([7, 14], np.uint64), rows, timeout=OTHERS_TIMEOUT)
    except grpc.RpcError as error:
        fuzz.model.mark_uncertain(FOXTROT, "an assign during the stalled export got no answer")
        findings.add("stall: Assign failed while a reader stalled", f"the exported table: {error.code().name}")
    keys = np.arange(1, 33, dtype=np.uint64) * 7
    grads = np.full((32, 8), 0.5, np.float32)
    if _timed_call(findings, fuzz, "Update: an unrelated table", lambda t: s.Update(
            pb.UpdateRequest(table=ALPHA, keys=keys.tobytes(), grads=grads.tobytes()), timeout=t)) is not None:
        fuzz.model.update(ALPHA, keys, grads)
    else:
        fuzz.model.mark_uncertain(ALPHA, "an update during the stall got no answer")
    _tcp_lookup_works(fuzz, findings, "tcp lookup of an unrelated table while readers stall", OTHERS_TIMEOUT)
    return dropped is not None


def _writers_of_the_stalled_table(fuzz: Fuzz, findings: Findings) -> None:
    """Updates of the rows the stalled reply is sent from: they may wait for the cut, never fail."""
    keys = np.arange(1, 65, dtype=np.uint64) * 7
    grads = np.ones((64, 2048), np.float32)
    failures = 0
    for i in range(80):
        try:
            fuzz.stub.Update(pb.UpdateRequest(table=WIDE, keys=keys.tobytes(), grads=grads.tobytes()),
                             timeout=2 * SEND_TIMEOUT + 5)
            fuzz.model.update(WIDE, keys, grads)
        except grpc.RpcError as error:
            if error.code() in NO_ANSWER:
                fuzz.model.mark_uncertain(WIDE, "an update of the stalled table got no answer")
            findings.add("stall: an update of the stalled table failed", f"update {i}: {error.code().name} "
                                                                          f"{(error.details() or '')[:200]}")
            failures += 1
            if failures == 3 or error.code() in NO_ANSWER:
                return


def _cut_in_time(sock: socket.socket, started: float) -> bool:
    """Once well past the send deadline: the shard has cut the connection (its four replies never all arrive)."""
    time.sleep(max(0.0, started + SEND_TIMEOUT + 4 - time.monotonic()))
    received = bytearray()
    sock.settimeout(2 * CALL_TIMEOUT)
    try:
        while chunk := sock.recv(1 << 20):
            received += chunk
    except socket.timeout:
        return False   # still open: every reply arrived
    except OSError:
        return True
    return len(split_replies(bytes(received))[0]) < 4


def group_stall(fuzz: Fuzz, findings: Findings) -> None:
    export = fuzz.stub.Export(pb.ExportRequest(table=FOXTROT, chunk_rows=16), timeout=120)
    next(export)   # one chunk read, then no more
    sock, started = _stalled_tcp_reader(fuzz), time.monotonic()
    victim_answered = False
    try:
        time.sleep(0.5)   # both readers' sends are blocked by now
        victim_answered = _others_keep_working(fuzz, findings)
        _writers_of_the_stalled_table(fuzz, findings)
        if not _cut_in_time(sock, started):
            findings.add("stall: the stalled TCP reader was never cut",
                         f"its connection still served every reply {SEND_TIMEOUT + 4:.0f} s after its send blocked")
    except Stalled:
        findings.add("stall: other clients wait for the stalled readers", "checks stopped after two of their calls "
                                                                           f"waited {OTHERS_TIMEOUT} s in vain")
    finally:
        sock.close()
        export.cancel()
    _settle(fuzz, victim_answered)
    _tcp_lookup_works(fuzz, findings, "after the stall")


def _settle(fuzz: Fuzz, victim_answered: bool) -> None:
    """Calls that timed out during the stall may take effect once it ends: make their tables' fate sure."""
    time.sleep(0.5)
    for name in ([] if victim_answered else [HOTEL]) + ["india_new"]:
        try:
            fuzz.stub.DropTable(pb.DropTableRequest(table=name), timeout=60)
        except grpc.RpcError as error:
            if error.code() != C.NOT_FOUND:
                raise ShardDown(f"table {name} cannot be dropped after the stall: {error.code().name}") from None
        fuzz.model.drop(name)


def test_stalled_readers_stall_nobody_else(fuzz):
    run_group(fuzz, "a TCP reader and a gRPC Export that stop reading", group_stall)


# ---- group 5: an idle connection flood -------------------------------------------------------------

def _flood(fuzz: Fuzz, n: int) -> list[socket.socket]:
    """n connections: idle, stopped inside a header, or stopped inside the keys."""
    socks, partial = [], (b"", _frame()[:7], _frame(keys=range(16))[:40])
    for i in range(n):
        try:
            sock = socket.create_connection(fuzz.tcp, timeout=CALL_TIMEOUT)
        except OSError:
            fuzz.no_answer(f"flood: connection {i}")
            raise
        socks.append(sock)
        try:
            sock.sendall(partial[i % 3])
        except OSError:
            pass   # refused for capacity already: the shard answered and closed
    return socks


def _newcomer_is_answered(fuzz: Fuzz, findings: Findings) -> None:
    """A new client during the flood gets its rows, or a clear refusal; never a silent close."""
    received, end = _exchange(fuzz, findings, "flood: a new client", _frame(keys=(7, 14)))
    replies, rest = split_replies(received)
    if not replies:
        findings.add("flood: a new client gets no reply", f"connection {end} with {len(received)} bytes")
    elif replies[0].status != "OK" and grpc_code(replies[0].status) not in (C.RESOURCE_EXHAUSTED, C.UNAVAILABLE):
        findings.add("flood: a new client is refused unclearly", f"{replies[0].status}: {replies[0].message}")
    elif replies[0].status == "OK":
        _account_tcp(fuzz, findings, "flood: the new client", split_requests(_frame(keys=(7, 14)))[0], replies[0])
    if rest:
        findings.add("tcp: malformed reply", f"flood: the new client: {rest}")


CLOSING_CODES = {C.RESOURCE_EXHAUSTED, C.UNAVAILABLE, C.DEADLINE_EXCEEDED, C.INVALID_ARGUMENT}   # refused, timed out


def _all_closed_by_the_shard(socks: list[socket.socket], timeout: float) -> tuple[int, list[str]]:
    """Waits until the shard has closed every connection; returns (how many stayed open, bad replies)."""
    poller, open_socks, bad = select.poll(), {s.fileno(): s for s in socks}, []
    received = defaultdict(bytearray)
    for fd in open_socks:
        poller.register(fd, select.POLLIN | select.POLLRDHUP)
    deadline = time.monotonic() + timeout
    while open_socks and time.monotonic() < deadline:
        for fd, _ in poller.poll(200):
            try:
                chunk = open_socks[fd].recv(1 << 16)
            except OSError:
                chunk = b""
            if chunk:
                received[fd] += chunk
                continue
            poller.unregister(fd)
            del open_socks[fd]
            replies, rest = split_replies(bytes(received[fd]))
            bad += [f"{r.status}: {r.message}" for r in replies if grpc_code(r.status) not in CLOSING_CODES]
            bad += [rest] if rest else []
    return len(open_socks), bad


def group_flood(fuzz: Fuzz, findings: Findings) -> None:
    socks = _flood(fuzz, 300)
    try:
        _newcomer_is_answered(fuzz, findings)
        _timed_call(findings, fuzz, "DescribeTable: during the flood",
                    lambda t: fuzz.stub.DescribeTable(pb.DescribeTableRequest(table=ALPHA), timeout=t))
        still_open, bad = _all_closed_by_the_shard(socks, 20.0)
        if still_open:
            findings.add("flood: idle connections are never closed", f"{still_open} of 300 idle or half-sent "
                                                                      "connections still open after 20 s")
        for text in bad[:5]:
            findings.add("flood: a connection closed with an unclear reply", text)
    finally:
        for sock in socks:
            sock.close()
    _tcp_lookup_works(fuzz, findings, "after the flood")


def test_idle_connection_flood_locks_nobody_out(fuzz):
    run_group(fuzz, "300 idle and half-sent TCP connections", group_flood)


# ---- group 6: a restart ----------------------------------------------------------------------------

def restart(fuzz: Fuzz, findings: Findings) -> None:
    """SIGTERM stops the shard cleanly, whatever calls it served; no failed create left a file behind, and
    it starts again (the check after the group sees every acknowledged write survive)."""
    try:
        code = fuzz.shard.stop()
        if code != 0:
            findings.add("restart: the shard did not exit cleanly", f"exit code {code}")
    except subprocess.TimeoutExpired:
        findings.add("restart: the shard did not stop", "still running 20 s after SIGTERM; killed")
    stray = [p for p in (fuzz.shard.dir / "store").glob("*.table") if p.name[:-len(".table")] not in fuzz.model.tables]
    if stray:
        findings.add("restart: files of tables that do not exist", ", ".join(sorted(p.name for p in stray)))
    try:
        fuzz.start()
    except (RuntimeError, TimeoutError) as error:
        findings.add("restart: the shard does not start again", f"{error}; {fuzz.death()}")
        for path in stray:   # so that the groups after this one find a shard to test
            path.unlink()
        try:
            fuzz.start()
        except (RuntimeError, TimeoutError) as again:
            raise ShardDown(f"the shard does not start even without the stray files: {again}") from None


def test_a_restart_keeps_every_table(fuzz):
    run_group(fuzz, "restart after all the groups", restart)
