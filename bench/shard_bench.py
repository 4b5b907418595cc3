"""PS shard benchmark: one `embps ps-shard` process on loopback against Redis, measured in the same run.

Workload: one table of --rows random 64-bit keys x dim 32 float32 with Adagrad, read and updated in batches
of 512 keys drawn Zipf(0.99) over the rows by 2 client threads at once (2 concurrent streams).  The shard's
store lives in a temporary directory standing in for PM, removed at the end: by default (--data-dir auto, as
root) on a private tmpfs mounted huge=always, since real PM is mapped with 2 MB pages (devdax), else on
/dev/shm's 4 KB pages (the mount used is kept in the JSON).  Redis keeps its rows in its own heap.

Contenders, each with one client (one connection) per thread:
  - embps, PSClient on its default data path (data_path="auto"; which path that was is printed and kept),
  - embps, PSClient forced onto the pure gRPC path (data_path="grpc"),
  - Redis (Debian's redis-server, started here on a free loopback port with --save '' --appendonly no),
    each row a 128-byte value under its key's 8 little-endian bytes, MGET / MSET from redis-py with hiredis.
A lookup on the Redis side ends, as a user's would, in an (n, 32) float32 array:
np.frombuffer(b"".join(values), np.float32).reshape(n, 32).  An update on the Redis side is an MSET of the
batch's rows as bytes, {key: row.tobytes()} -- no optimizer arithmetic at all, so it only favours Redis.
Both sides count 512 keys per batch (Zipf batches repeat keys; the shard sums repeated gradients, the MSET
dict keeps the last row).

Figures (goals in GOALS):
  shard_lookup_vs_redis   PSClient.lookup keys/s on the default path / Redis MGET keys/s
  shard_update_vs_redis   PSClient.update (Adagrad on the shard) keys/s / Redis MSET keys/s
Context: the same on the gRPC path, absolute keys/s, CPU microseconds per batch in the client process (both
threads) and in the server's process (all its threads) in the pass that used least (where the time goes:
under load this moves less than wall time), and p50/p99 latency of a lookup at half of each side's
measured peak (paced open-loop requests from 2 threads; latency counted from each request's scheduled start,
so a stall delays the requests behind it as it would for a real caller).

Timing: the Zipf batches are generated once (seeded) and every contender runs the same ones in the same
order.  Each contender gets one untimed warm-up pass over all of them, which also sizes its timed passes to
about 1.5 s (0.5 s with --quick; cycling over the batches), then `reps` timed passes, the 2 threads splitting
the calls, alternating between contenders so that drift on a shared machine hits all of them alike.
Throughputs use the best (fastest) pass: interference only ever slows a pass down.  Every pass is kept in
the JSON (samples_seconds, details.calls_per_pass).

Prints `figure NAME VALUE UNIT` and `context NAME VALUE UNIT` lines and writes bench/results/shard.json and
shard.png (shard-quick.* with --quick).
"""

import argparse
import contextlib
import dataclasses
import os
import platform
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import redis  # noqa: E402
import redis.utils  # noqa: E402
from rich.progress import Progress, TimeElapsedColumn  # noqa: E402

from bench_common import Report, make_keys, mount_of, save_figure, save_results, zipf_batches  # noqa: E402
from store_bench import pm_directory  # noqa: E402  (the PM stand-in both benchmarks use)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REDIS_SERVER = "/usr/bin/redis-server"
TABLE = "bench"
GOALS = {
    "shard_lookup_vs_redis": (">=", 10.0),
    "shard_update_vs_redis": (">=", 6.0),
}


@dataclass(frozen=True)
class Config:
    rows: int
    reps: int                    # timed passes per throughput contender
    n_batches: int               # distinct pre-generated batches (the warm-up pass runs each once)
    pass_seconds: float          # timed passes are sized from the warm-up to last about this long
    latency_reps: int            # paced latency passes per side
    latency_seconds: float       # length of one paced latency pass
    dim: int = 32
    batch: int = 512
    threads: int = 2
    zipf_theta: float = 0.99
    load_batch: int = 8192       # rows per assign / MSET while loading
    grad_batches: int = 64       # distinct gradient batches, cycled (the keys are never cycled)
    lr: float = 0.01
    eps: float = 1e-10
    seed: int = 0
    results_name: str = "shard"
    redis_only: bool = False
    data_dir: str = "auto"       # parent of the shard's store directory (see store_bench.pm_directory)


def parse_args() -> Config:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200K rows and fewer, shorter passes (well under a minute)")
    parser.add_argument("--rows", type=int, help="rows in the table (default 1M, quick 200K)")
    parser.add_argument("--redis-only", action="store_true",
                        help="measure only the Redis baseline (no shard, no figures; for checking the baseline)")
    parser.add_argument("--data-dir", default="auto",
                        help="where the shard's store goes; 'auto' (default) mounts a tmpfs with huge=always, "
                             "which gives the store the 2 MB pages a real PM (DAX) mapping gets")
    args = parser.parse_args()
    if args.quick:
        cfg = Config(rows=200_000, reps=3, n_batches=1024, pass_seconds=0.5, latency_reps=2, latency_seconds=1.0,
                     results_name="shard-quick")
    else:
        cfg = Config(rows=1_000_000, reps=5, n_batches=2048, pass_seconds=1.5, latency_reps=3, latency_seconds=2.0)
    changes = {"redis_only": args.redis_only, "data_dir": args.data_dir}
    if args.rows:
        changes["rows"] = args.rows
    return Config(**{**asdict(cfg), **changes})


# ---- workload -------------------------------------------------------------------------------------

def random_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    rows = rng.random((n, dim), dtype=np.float32)
    rows -= 0.5
    rows *= 0.02
    return rows


def redis_keys(keys: np.ndarray) -> list[bytes]:
    """Redis keys are the uint64 ids' 8 little-endian bytes (the shard's own wire format for keys)."""
    raw = keys.astype("<u8").tobytes()
    return [raw[i:i + 8] for i in range(0, len(raw), 8)]


@dataclass
class Workload:
    keys: np.ndarray            # (rows,) uint64, row i's key
    dense: np.ndarray           # (rows, dim) float32, the loaded rows
    batch_rows: np.ndarray      # (n_batches, batch) row indices
    batch_keys: np.ndarray      # (n_batches, batch) uint64
    grads: np.ndarray           # (grad_batches, batch, dim) float32; batch i uses grads[i % grad_batches]
    # Redis gets its keys as ready-made bytes lists, built outside the clock (the shard's client gets numpy
    # arrays, which is what a trainer holds; turning them into Redis keys would be the Redis user's cost).
    redis_batch_keys: list[list[bytes]]


def make_workload(cfg: Config, report: Report) -> Workload:
    rng = np.random.default_rng(cfg.seed)
    keys = make_keys(cfg.rows)
    dense = random_rows(rng, cfg.rows, cfg.dim)
    batch_rows = zipf_batches(cfg.rows, cfg.n_batches, cfg.batch, cfg.zipf_theta, rng)
    batch_keys = keys[batch_rows]
    grads = rng.standard_normal((cfg.grad_batches, cfg.batch, cfg.dim), dtype=np.float32)
    report.note("distinct_keys_per_batch", float(np.mean([len(np.unique(b)) for b in batch_rows])), "keys")
    return Workload(keys, dense, batch_rows, batch_keys, grads, [redis_keys(k) for k in batch_keys])


# ---- timing ---------------------------------------------------------------------------------------

def run_threads(body: Callable[[int], object], threads: int) -> tuple[float, list]:
    """Runs body(t) on `threads` threads released together; returns (wall seconds, results by thread)."""
    barrier = threading.Barrier(threads + 1)
    results: list = [None] * threads
    errors: list[BaseException] = []

    def thread_main(t: int) -> None:
        barrier.wait()
        try:
            results[t] = body(t)
        except BaseException as exc:  # re-raised in the caller
            errors.append(exc)

    workers = [threading.Thread(target=thread_main, args=(t,), daemon=True) for t in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()
    start = time.perf_counter()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return elapsed, results


# A contender is a per-thread call: call(thread, batch_index) does one request for that batch.
Call = Callable[[int, int], object]


@dataclass
class Passes:
    calls: int                  # requests (batches) per timed pass
    seconds: list[float]        # wall seconds of each timed pass
    # CPU seconds of each timed pass in this (client) process and in the server's process: where the time
    # goes, and a measure a loaded machine distorts less than wall time.
    client_cpu: list[float] = dataclasses.field(default_factory=list)
    server_cpu: list[float] = dataclasses.field(default_factory=list)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far, all its threads (from /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def throughput_passes(progress: Progress, label: str, contenders: dict[str, tuple[Call, int]],
                      cfg: Config) -> dict[str, Passes]:
    """Timed passes of each contender (its call and its server's pid).  A pass of c calls runs batches 0,
    1, ..., c-1 (modulo n_batches), thread t taking calls t, t+T, ...  Each contender first runs an untimed
    warm-up pass over the n_batches batches, which also sizes its timed passes to about cfg.pass_seconds
    (never fewer than n_batches calls); then cfg.reps rounds alternate between the contenders."""
    task = progress.add_task(label, total=len(contenders) * (cfg.reps + 1))

    def one_pass(call: Call, calls: int) -> float:
        def body(t: int) -> None:
            for j in range(t, calls, cfg.threads):
                call(t, j % cfg.n_batches)
        return run_threads(body, cfg.threads)[0]

    passes: dict[str, Passes] = {}
    for name, (call, _) in contenders.items():
        warm_up = one_pass(call, cfg.n_batches)
        calls = max(cfg.n_batches, round(cfg.n_batches * cfg.pass_seconds / warm_up / cfg.threads) * cfg.threads)
        passes[name] = Passes(calls, [])
        progress.advance(task)
    for _ in range(cfg.reps):
        for name, (call, server_pid) in contenders.items():
            client, server = time.process_time(), process_cpu_seconds(server_pid)
            passes[name].seconds.append(one_pass(call, passes[name].calls))
            passes[name].client_cpu.append(time.process_time() - client)
            passes[name].server_cpu.append(process_cpu_seconds(server_pid) - server)
            progress.advance(task)
    return passes


def paced_latencies(call: Call, batches_per_s: float, cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """Seconds from each request's scheduled start to its completion, with `batches_per_s` requests per
    second spread evenly over the threads (open loop: the schedule does not wait for slow requests);
    and, for diagnosis, the seconds from each request's actual start (service time)."""
    per_thread = batches_per_s / cfg.threads
    interval = 1.0 / per_thread
    n_requests = max(1, int(cfg.latency_seconds * per_thread))

    def body(t: int) -> tuple[np.ndarray, np.ndarray]:
        latencies, service = np.empty(n_requests), np.empty(n_requests)
        start = time.perf_counter() + 0.01 + t * interval / cfg.threads  # threads interleave their sends
        i = t
        for j in range(n_requests):
            scheduled = start + j * interval
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent = time.perf_counter()
            call(t, i)
            done = time.perf_counter()
            latencies[j], service[j] = done - scheduled, done - sent
            i = (i + cfg.threads) % cfg.n_batches
        return latencies, service

    per_thread_results = run_threads(body, cfg.threads)[1]
    return tuple(np.concatenate(arrays) for arrays in zip(*per_thread_results))


# ---- Redis ----------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def redis_server(work_dir: str, address: str = "127.0.0.1",
                 enter: tuple[str, ...] = ()) -> Iterator[tuple[int, int]]:
    """Debian's redis-server on a free port, no persistence; yields its port and pid.  By default on
    loopback; `enter` runs it elsewhere (e.g. `ip netns exec NS`, see embps.testing.netns_hosts), on `address`."""
    for _ in range(5):  # the free port can be taken between free_port() and the server's bind
        port = free_port()
        proc = subprocess.Popen(
            [*enter, REDIS_SERVER, "--port", str(port), "--bind", address, "--protected-mode", "no", "--save", "",
             "--appendonly", "no",
             "--dir", work_dir, "--logfile", "", "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        probe = redis.Redis(host=address, port=port)
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                probe.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.02)
        probe.close()
        if proc.poll() is None and time.monotonic() < deadline:
            break
        proc.kill()
        proc.wait()
    else:
        raise RuntimeError(f"redis-server did not start: {proc.stderr.read().decode(errors='replace')[-2000:]}")
    try:
        yield port, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class RedisSide:
    def __init__(self, port: int, cfg: Config, wl: Workload, address: str = "127.0.0.1"):
        self.cfg, self.wl = cfg, wl
        # One client, hence one connection, per thread (redis-py parses with hiredis when it is installed).
        self.conns = [redis.Redis(host=address, port=port, single_connection_client=True)
                      for _ in range(cfg.threads)]

    def load(self, progress: Progress, report: Report) -> None:
        cfg, wl, r = self.cfg, self.wl, self.conns[0]
        task = progress.add_task(f"redis: loading {cfg.rows:,} rows", total=cfg.rows)
        seconds = 0.0
        for lo in range(0, cfg.rows, cfg.load_batch):
            keys, rows = wl.keys[lo:lo + cfg.load_batch], wl.dense[lo:lo + cfg.load_batch]
            start = time.perf_counter()
            r.mset(dict(zip(redis_keys(keys), (row.tobytes() for row in rows))))
            seconds += time.perf_counter() - start
            progress.advance(task, len(keys))
        assert r.dbsize() == cfg.rows, f"redis holds {r.dbsize()} keys, expected {cfg.rows}"
        report.note("redis_load_rows_per_s", cfg.rows / seconds, "rows/s")
        report.note("redis_used_memory_bytes", float(r.info("memory")["used_memory"]), "B")

    def lookup(self, t: int, i: int) -> np.ndarray:
        values = self.conns[t].mget(self.wl.redis_batch_keys[i])
        return np.frombuffer(b"".join(values), np.float32).reshape(len(values), self.cfg.dim)

    def update(self, t: int, i: int) -> None:
        rows = self.wl.grads[i % self.cfg.grad_batches]
        self.conns[t].mset(dict(zip(self.wl.redis_batch_keys[i], (row.tobytes() for row in rows))))

    def check(self) -> None:
        np.testing.assert_array_equal(self.lookup(0, 0), self.wl.dense[self.wl.batch_rows[0]])

    def close(self) -> None:
        for c in self.conns:
            c.close()


# ---- the shard ------------------------------------------------------------------------------------

def operation_counts(client) -> dict[str, tuple[int, int, int]]:
    """operation -> (requests, errors, keys), summed over shards."""
    counts: dict[str, tuple[int, int, int]] = {}
    for stats in client.stats():
        for op in stats.operations:
            r, e, k = counts.get(op.operation, (0, 0, 0))
            counts[op.operation] = (r + op.requests, e + op.errors, k + op.keys)
    return counts


def counts_delta(before: dict, after: dict) -> dict[str, dict[str, int]]:
    delta = {}
    for name, (r, e, k) in after.items():
        r0, e0, k0 = before.get(name, (0, 0, 0))
        if (r - r0, e - e0, k - k0) != (0, 0, 0):
            delta[name] = {"requests": r - r0, "errors": e - e0, "keys": k - k0}
    return delta


def client_path_kind(client) -> str:
    """The data path the client uses for its (one) shard."""
    kinds = getattr(client, "data_path_kinds", None)
    if callable(kinds):
        return ",".join(kinds())
    from embps.common.spec_messages import DATA_PATH_KINDS
    offered = client.stats()[0].data_paths
    return "?(" + ",".join(DATA_PATH_KINDS.from_message(p.kind) for p in offered) + " offered)"


class ShardSide:
    def __init__(self, address: str, data_path: str, cfg: Config, wl: Workload):
        from embps.client import ClusterConfig, PSClient
        self.cfg, self.wl, self.data_path = cfg, wl, data_path
        # One client per thread, like the Redis side (PSClient is thread-safe; a shared one is not measured).
        self.clients = [PSClient(ClusterConfig.from_addresses([address], data_path=data_path))
                        for _ in range(cfg.threads)]
        self.kind = client_path_kind(self.clients[0])

    def lookup(self, t: int, i: int) -> np.ndarray:
        return self.clients[t].lookup(TABLE, self.wl.batch_keys[i])

    def update(self, t: int, i: int) -> None:
        self.clients[t].update(TABLE, self.wl.batch_keys[i], self.wl.grads[i % self.cfg.grad_batches])

    def close(self) -> None:
        for c in self.clients:
            c.close()


def table_spec(cfg: Config):
    from embps.api import OptimizerSpec, TableSpec
    return TableSpec(dim=cfg.dim, capacity=cfg.rows, optimizer=OptimizerSpec("adagrad", lr=cfg.lr, eps=cfg.eps))


def load_shard(side: ShardSide, progress: Progress, report: Report) -> None:
    cfg, wl, client = side.cfg, side.wl, side.clients[0]
    client.create_table(TABLE, table_spec(cfg), if_not_exists=True)
    task = progress.add_task(f"shard: loading {cfg.rows:,} rows", total=cfg.rows)
    seconds = 0.0
    for lo in range(0, cfg.rows, cfg.load_batch):
        keys, rows = wl.keys[lo:lo + cfg.load_batch], wl.dense[lo:lo + cfg.load_batch]
        start = time.perf_counter()
        client.assign(TABLE, keys, rows)
        seconds += time.perf_counter() - start
        progress.advance(task, len(keys))
    report.note("shard_load_rows_per_s", cfg.rows / seconds, "rows/s")


def check_update(side: ShardSide, distinct_rows: np.ndarray) -> None:
    """An update of keys still at zero optimizer state gives what the store's kernel computes."""
    from embps.api import state_floats
    from embps.store import apply_optimizer
    cfg, wl = side.cfg, side.wl
    spec = table_spec(cfg)
    expected = wl.dense[distinct_rows].copy()
    state = np.zeros((len(distinct_rows), state_floats(spec.optimizer.kind, cfg.dim)), np.float32)
    grads = wl.grads[0][:len(distinct_rows)].copy()
    apply_optimizer(spec, expected, state, grads)
    side.clients[0].update(TABLE, wl.keys[distinct_rows], grads)
    got = side.clients[0].lookup(TABLE, wl.keys[distinct_rows])
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-8)


def path_traffic(side: ShardSide, call: Call, calls: int) -> dict[str, dict[str, int]]:
    """Which shard operations `calls` calls of `call` show up as (proof of the data path used)."""
    before = operation_counts(side.clients[0])
    for i in range(calls):
        call(0, i)
    time.sleep(0.05)  # the TCP data server counts a request just after sending its reply
    delta = counts_delta(before, operation_counts(side.clients[0]))
    delta.pop("GetShardStats", None)  # the counting itself
    return delta


# ---- measurement ----------------------------------------------------------------------------------

def keys_per_s(report: Report, cfg: Config, passes: dict[str, Passes]) -> dict[str, float]:
    report.samples.update({name: p.seconds for name, p in passes.items()})
    report.info.setdefault("calls_per_pass", {}).update({name: p.calls for name, p in passes.items()})
    for name, p in passes.items():
        report.note(f"{name}_client_cpu_us_per_batch", min(p.client_cpu) / p.calls * 1e6, "us")
        report.note(f"{name}_server_cpu_us_per_batch", min(p.server_cpu) / p.calls * 1e6, "us")
    rates = {name: p.calls * cfg.batch / min(p.seconds) for name, p in passes.items()}
    for name, value in rates.items():
        report.note(f"{name}_keys_per_s", value, "keys/s")
    return rates


def measure_latency(progress: Progress, report: Report, sides: dict[str, tuple[Call, float]], cfg: Config) -> dict:
    """p50/p99 of each side's lookups at half its peak (keys/s), alternating sides; best pass kept."""
    task = progress.add_task("latency at half peak", total=len(sides) * cfg.latency_reps)
    per_pass: dict[str, list[dict]] = {name: [] for name in sides}
    for _ in range(cfg.latency_reps):
        for name, (call, peak) in sides.items():
            lat, service = (a * 1e3 for a in paced_latencies(call, peak / 2 / cfg.batch, cfg))
            per_pass[name].append({"p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
                                   "max_ms": float(lat.max()), "requests": int(lat.size),
                                   "service_p50_ms": float(np.percentile(service, 50)),
                                   "service_p99_ms": float(np.percentile(service, 99))})
            progress.advance(task)
    report.info["latency_passes"] = per_pass
    best = {name: min(passes, key=lambda p: p["p99_ms"]) for name, passes in per_pass.items()}
    for name, (_, peak) in sides.items():
        report.note(f"{name}_half_peak_load_keys_per_s", peak / 2, "keys/s")
    return best


def run(cfg: Config, started: float) -> Report:
    report = Report(GOALS)
    wl = make_workload(cfg, report)
    tmp = tempfile.mkdtemp(prefix="embps-shard-bench-", dir=cfg.data_dir)
    report.info["data_dir_mount"] = mount_of(tmp)
    sides_to_close: list = []
    try:
        with contextlib.ExitStack() as stack:
            port, redis_pid = stack.enter_context(redis_server(tmp))
            progress = stack.enter_context(Progress(*Progress.get_default_columns(), TimeElapsedColumn()))
            rs = RedisSide(port, cfg, wl)
            sides_to_close.append(rs)
            rs.load(progress, report)
            rs.check()
            if cfg.redis_only:
                rates = keys_per_s(report, cfg, throughput_passes(progress, "lookup passes", {"redis_mget": (rs.lookup, redis_pid)}, cfg))
                rates |= keys_per_s(report, cfg, throughput_passes(progress, "update passes", {"redis_mset": (rs.update, redis_pid)}, cfg))
                best = measure_latency(progress, report, {"redis_mget": (rs.lookup, rates["redis_mget"])}, cfg)
                report.note("redis_mget_p50_ms", best["redis_mget"]["p50_ms"], "ms")
                report.note("redis_mget_p99_ms", best["redis_mget"]["p99_ms"], "ms")
                return report

            from embps.common.local_cluster import LocalShard
            from embps.common.spec_messages import DATA_PATH_KINDS
            shard = stack.enter_context(LocalShard(os.path.join(tmp, "shard")))
            report.info["shard_address"] = shard.address
            shard_pid = shard.process.pid
            ours = ShardSide(shard.address, "auto", cfg, wl)
            sides_to_close.append(ours)
            grpc = ShardSide(shard.address, "grpc", cfg, wl)
            sides_to_close.append(grpc)
            report.info["default_data_path"] = ours.kind
            report.info["grpc_data_path"] = grpc.kind
            report.info["offered_data_paths"] = [[DATA_PATH_KINDS.from_message(p.kind), p.address]
                                                 for s in ours.clients[0].stats() for p in s.data_paths]
            progress.console.print(f"shard at {shard.address}; default client path: {ours.kind}, "
                                   f"forced: {grpc.kind}; offered: {report.info['offered_data_paths']}")
            load_shard(ours, progress, report)
            for side in (ours, grpc):
                np.testing.assert_array_equal(side.lookup(0, 0), wl.dense[wl.batch_rows[0]])
            report.info["traffic_lookup_default"] = path_traffic(ours, ours.lookup, 4)
            report.info["traffic_lookup_grpc"] = path_traffic(grpc, grpc.lookup, 4)
            progress.console.print(f"lookup traffic: default {report.info['traffic_lookup_default']}, "
                                   f"grpc {report.info['traffic_lookup_grpc']}")

            # ---- lookups
            rates = keys_per_s(report, cfg, throughput_passes(progress, "lookup passes", {
                "shard_lookup": (ours.lookup, shard_pid), "shard_lookup_grpc": (grpc.lookup, shard_pid),
                "redis_mget": (rs.lookup, redis_pid)}, cfg))
            report.figure("shard_lookup_vs_redis", rates["shard_lookup"] / rates["redis_mget"], "x")
            report.note("shard_lookup_grpc_vs_redis", rates["shard_lookup_grpc"] / rates["redis_mget"], "x")

            # ---- latency at half of each side's peak
            best = measure_latency(progress, report, {"shard_lookup": (ours.lookup, rates["shard_lookup"]),
                                                      "redis_mget": (rs.lookup, rates["redis_mget"])}, cfg)
            report.note("shard_lookup_p50_ms", best["shard_lookup"]["p50_ms"], "ms")
            report.note("shard_lookup_p99_ms", best["shard_lookup"]["p99_ms"], "ms")
            report.note("redis_mget_p50_ms", best["redis_mget"]["p50_ms"], "ms")
            report.note("redis_mget_p99_ms", best["redis_mget"]["p99_ms"], "ms")
            # Service time (from the actual send) of the same passes: how much of the tail is the client
            # process waiting for a CPU or the GIL rather than the server.
            report.note("shard_lookup_service_p99_ms", best["shard_lookup"]["service_p99_ms"], "ms")
            report.note("redis_mget_service_p99_ms", best["redis_mget"]["service_p99_ms"], "ms")

            # ---- updates (the lookups above changed nothing; state is still zero everywhere)
            check_update(ours, np.arange(0, cfg.batch))
            check_update(grpc, np.arange(cfg.batch, 2 * cfg.batch))
            report.info["traffic_update_default"] = path_traffic(ours, ours.update, 4)
            report.info["traffic_update_grpc"] = path_traffic(grpc, grpc.update, 4)
            rates |= keys_per_s(report, cfg, throughput_passes(progress, "update passes", {
                "shard_update": (ours.update, shard_pid), "shard_update_grpc": (grpc.update, shard_pid),
                "redis_mset": (rs.update, redis_pid)}, cfg))
            report.figure("shard_update_vs_redis", rates["shard_update"] / rates["redis_mset"], "x")
            report.note("shard_update_grpc_vs_redis", rates["shard_update_grpc"] / rates["redis_mset"], "x")

            errors = {name: e for name, (_, e, _) in operation_counts(ours.clients[0]).items() if e}
            report.info["shard_operation_errors"] = errors
            if errors:
                progress.console.print(f"[red]shard reports errors: {errors}")
            for side in reversed(sides_to_close):
                side.close()
            sides_to_close.clear()
    finally:
        for side in sides_to_close:
            with contextlib.suppress(Exception):
                side.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return report


# ---- output ---------------------------------------------------------------------------------------

def environment() -> dict:
    version = subprocess.run([REDIS_SERVER, "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "redis_py": redis.__version__,
        "hiredis": redis.utils.HIREDIS_AVAILABLE,
        "redis_server": version,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }


def plot(report: Report, goals: dict[str, dict], path: Path) -> None:
    ctx = lambda name: report.context[name]["value"]  # noqa: E731
    fig, (ax_rate, ax_ratio, ax_lat) = plt.subplots(1, 3, figsize=(17, 5), gridspec_kw={"width_ratios": [2, 1.3, 1]})

    default_kind = report.info.get("default_data_path", "default")
    labels = [f"embps, default path ({default_kind})", "embps, gRPC path", "Redis (MGET / MSET)"]
    series = [("shard_lookup", "shard_update"), ("shard_lookup_grpc", "shard_update_grpc"), ("redis_mget", "redis_mset")]
    x = np.arange(2)
    width = 0.27
    for k, (label, names, color) in enumerate(zip(labels, series, ["tab:green", "tab:olive", "tab:gray"])):
        bars = ax_rate.bar(x + (k - 1) * width, [ctx(f"{n}_keys_per_s") for n in names], width, label=label, color=color)
        ax_rate.bar_label(bars, fmt="%.3g")
    ax_rate.set_xticks(x, ["lookup", "update (Adagrad; Redis: plain MSET)"])
    ax_rate.set_ylabel("keys/s (best pass)")
    ax_rate.set_title("throughput, batch 512, 2 client threads, one shard on loopback")
    ax_rate.legend()

    names = ["shard_lookup_vs_redis", "shard_update_vs_redis"]
    values = [report.figures[n]["value"] for n in names] + [ctx("shard_lookup_grpc_vs_redis"), ctx("shard_update_grpc_vs_redis")]
    colors = ["tab:green" if goals[n]["met"] else "tab:red" for n in names] + ["tab:olive"] * 2
    xr = np.arange(4)
    bars = ax_ratio.bar(xr, values, color=colors)
    ax_ratio.bar_label(bars, fmt="%.3g")
    ax_ratio.hlines([goals[n]["target"] for n in names], xr[:2] - 0.4, xr[:2] + 0.4, colors="black",
                    linestyles="dashed", label="goal")
    ax_ratio.axhline(1.0, color="gray", linewidth=0.8)
    ax_ratio.set_xticks(xr, ["lookup", "update", "lookup\n(gRPC)", "update\n(gRPC)"])
    ax_ratio.set_title("embps ÷ Redis (green: goal met)")
    ax_ratio.legend()

    lat = {"embps": ("shard_lookup_p50_ms", "shard_lookup_p99_ms"), "Redis": ("redis_mget_p50_ms", "redis_mget_p99_ms")}
    xl = np.arange(2)
    for k, (pct, color) in enumerate([("p50", "tab:blue"), ("p99", "tab:orange")]):
        bars = ax_lat.bar(xl + (k - 0.5) * 0.4, [ctx(v[k]) for v in lat.values()], 0.4, label=pct, color=color)
        ax_lat.bar_label(bars, fmt="%.2f")
    loads = [ctx(f"{n}_half_peak_load_keys_per_s") for n in ("shard_lookup", "redis_mget")]
    ax_lat.set_xticks(xl, [f"{name}\nat {load:.3g} keys/s" for name, load in zip(lat, loads)])
    ax_lat.set_ylabel("ms")
    ax_lat.set_title("lookup latency at half of own peak")
    ax_lat.legend()

    save_figure(fig, path)


def write_results(report: Report, cfg: Config, wall_seconds: float) -> None:
    timing = (f"throughput: best of {cfg.reps} timed passes after one warm-up pass, alternating contenders; "
              f"a pass is details.calls_per_pass batches of {cfg.batch} keys (cycling over {cfg.n_batches} "
              f"pre-generated ones; sized for ~{cfg.pass_seconds:g} s) split over {cfg.threads} threads. "
              f"latency: {cfg.latency_reps} paced passes of {cfg.latency_seconds:g} s per side at half its best "
              f"throughput, alternating; the pass with the lowest p99 is reported")
    save_results(report, RESULTS_DIR, cfg.results_name, "shard", cfg, timing, environment(), wall_seconds,
                 lambda g, path: plot(report, g, path))


def main() -> None:
    started = time.perf_counter()
    cfg = parse_args()
    print(f"shard bench: {cfg.rows:,} rows x dim {cfg.dim}, batch {cfg.batch}, Zipf {cfg.zipf_theta}, "
          f"{cfg.threads} client threads, {cfg.n_batches} distinct batches, {cfg.reps} passes of ~{cfg.pass_seconds:g} s",
          flush=True)
    with pm_directory(cfg.data_dir) as data_dir:
        report = run(dataclasses.replace(cfg, data_dir=data_dir), started)
    if not cfg.redis_only:
        write_results(report, cfg, time.perf_counter() - started)
    print(f"shard bench took {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
