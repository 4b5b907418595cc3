"""Runs a whole training job on this machine: shards, the oracle cacher, one gateway and one trainer per
rank, each its own process, on loopback or on the hosts of a JobLayout (e.g. the network namespaces of
embps.testing.netns_hosts).  If any process fails, the others are stopped and the failure is reported
with the tail of its log; nothing is left running.

The trainers may be external: a program of the user's (a Bagpipe trainer script on
embps.compat.bagpipe, say) that starts them itself and finds the job through EMBPS_JOB."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from embps.common.addresses import split_host_port
from embps.common.job_config import Addresses, JobConfig
from embps.common.health import wait_serving
from embps.common.job_messages import GATEWAY_MODES
from embps.common.local_cluster import LOOPBACK, LocalCluster, LocalHost, LocalProcess, free_ports
from embps.compat.job_env import ENV_JOB
from embps.v1 import training_pb2 as pb
from embps.v1 import training_pb2_grpc as pb_grpc


class JobFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class JobLayout:
    """Where a local job's processes run: shard i on shards[i], trainer i and its gateway on trainers[i],
    the oracle cacher on oracle.  With `hosts`, shard i and trainer i share host i (the job's
    [addresses] hosts are their names)."""
    shards: tuple[LocalHost, ...]
    trainers: tuple[LocalHost, ...]
    oracle: LocalHost = LOOPBACK
    hosts: bool = False

    @classmethod
    def on_hosts(cls, hosts: Sequence[LocalHost], oracle: LocalHost = LOOPBACK) -> JobLayout:
        """Host h runs shard h and trainer h with its gateway."""
        return cls(tuple(hosts), tuple(hosts), oracle, hosts=True)

    @classmethod
    def loopback(cls, n_shards: int, trainers: int) -> JobLayout:
        return cls((LOOPBACK,) * n_shards, (LOOPBACK,) * trainers)

    @classmethod
    def loopback_hosts(cls, n: int) -> JobLayout:
        """n hosts on loopback, named host-0 .. host-<n-1>: the hosts concept without a network."""
        return cls.on_hosts([LocalHost(name=f"host-{h}") for h in range(n)])

    def check(self, job: JobConfig) -> None:
        if len(self.trainers) != job.trainers:
            raise ValueError(f"the job has {job.trainers} trainers, the layout places {len(self.trainers)}")
        if self.hosts and len({h.name for h in self.shards}) != len(self.shards):
            raise ValueError("every host of a layout needs its own name")


@dataclass
class JobResult:
    job: JobConfig
    metrics: dict            # what trainer 0 wrote: losses, step times, gateways' traffic, eval
    seconds: float
    out: Path


def _addresses(job: JobConfig, layout: JobLayout, cluster: LocalCluster) -> Addresses:
    """Ports the kernel picks on loopback, none that a shard took on its host."""
    oracle, rendezvous, *gateways = free_ports(2 + job.trainers, avoid=set().union(*(s.ports for s in cluster.shards)))
    return Addresses(oracle=f"{layout.oracle.address}:{oracle}",
                     gateways=tuple(f"{host.address}:{port}" for host, port in zip(layout.trainers, gateways)),
                     shards=tuple(s.address for s in cluster.shards),
                     trainers=f"{layout.trainers[0].address}:{rendezvous}",
                     hosts=tuple(h.name for h in layout.shards) if layout.hosts else ())


class ExternalTrainers(LocalProcess):
    """The user's trainer program, in a process group of its own: it may start the trainers as its
    children (Bagpipe's trainer_simple.py does), and stopping it stops them too."""

    def __init__(self, argv: list[str], job_file: Path, log_path: Path):
        self.name, self.log_path = "external trainers", log_path
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True,
                                            env={**os.environ, ENV_JOB: str(job_file)})

    def stop(self, timeout: float = 20.0) -> int:
        self._signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        self._signal_group(signal.SIGKILL)   # children that outlived their parent
        return self.process.wait()

    def _signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass


def _wait_started(process: LocalProcess, address: str, job: JobConfig, timeout: float = 60.0) -> None:
    """Until the process serves at address; JobFailed, with its log, as soon as it exits instead."""
    deadline = time.monotonic() + timeout
    while True:
        _raise_if_failed([process])
        try:
            return wait_serving(address, 1.0, job.security)
        except TimeoutError:
            if time.monotonic() > deadline:
                raise


@contextmanager
def local_services(job: JobConfig, data_dir: Path, n_shards: int = 2,
                   layout: JobLayout | None = None,
                   oracle_flags: tuple[str, ...] = (),
                   on_ports: Callable[[set[int]], None] | None = None) -> Iterator[tuple[JobConfig, list]]:
    """Shards with a fresh table, the oracle cacher (with oracle_flags) and the gateways, all serving, on
    their hosts (default: n_shards shards and the job's trainers on loopback); yields the job (with its
    addresses, also saved as data_dir/job.toml) and the processes, and stops them all on exit.  on_ports,
    if given, is called with every port the services listen on before any of them talks to another."""
    layout = layout or JobLayout.loopback(n_shards, job.trainers)
    layout.check(job)
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    processes: list[LocalProcess] = []
    # Every run starts from the initializer (the oracle creates the table afresh), so an earlier run's
    # stores go, even ones an older build wrote in a layout this one cannot open.
    shutil.rmtree(data_dir / "shards", ignore_errors=True)
    with LocalCluster(data_dir / "shards", len(layout.shards), security=job.security, hosts=layout.shards) as cluster:
        job = dataclasses.replace(job, addresses=_addresses(job, layout, cluster))
        job_file = data_dir / "job.toml"
        job.save(job_file)
        if on_ports:
            on_ports(service_ports(job, cluster))
        try:
            processes.append(LocalProcess("oracle", ["oracle-cacher", "--job", str(job_file), *oracle_flags],
                                          logs / "oracle.log", layout.oracle))
            _wait_started(processes[-1], job.addresses.oracle, job)
            for i in range(job.trainers):
                processes.append(LocalProcess(f"gateway {i}", ["trainer-gateway", "--job", str(job_file),
                                                               "--trainer", str(i)], logs / f"gateway-{i}.log",
                                              layout.trainers[i]))
            for address in job.addresses.gateways:
                wait_serving(address, 60, job.security)
            yield job, processes
        finally:
            for process in reversed(processes):
                process.stop()


def service_ports(job: JobConfig, cluster: LocalCluster) -> set[int]:
    """The ports of the job's shards (all of each: gRPC and data paths), oracle and gateways; not the
    trainers' rendezvous, which is torch.distributed's."""
    addresses = (job.addresses.oracle, *job.addresses.gateways)
    return set().union(*(s.ports for s in cluster.shards)) | {split_host_port(a)[1] for a in addresses}


def run_local_job(job: JobConfig, data_dir: Path, n_shards: int = 2, show_progress: bool = True,
                  layout: JobLayout | None = None, oracle_flags: tuple[str, ...] = (),
                  on_ports: Callable[[set[int]], None] | None = None) -> JobResult:
    """The job's services and trainers (see local_services), until the trainers are done."""
    layout = layout or JobLayout.loopback(n_shards, job.trainers)
    out = data_dir / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "progress.jsonl").unlink(missing_ok=True)
    with local_services(job, data_dir, n_shards, layout, oracle_flags, on_ports) as (job, processes):
        started = time.perf_counter()
        trainers = [LocalProcess(f"trainer {r}", ["trainer", "--job", str(data_dir / "job.toml"), "--rank", str(r),
                                                  "--out", str(out)], data_dir / "logs" / f"trainer-{r}.log",
                                 layout.trainers[r])
                    for r in range(job.trainers)]
        processes += trainers
        _watch(job, processes, trainers, out / "progress.jsonl", show_progress)
        seconds = time.perf_counter() - started
    return JobResult(job, json.loads((out / "metrics.json").read_text()), seconds, out)


def run_external_job(job: JobConfig, data_dir: Path, trainers_argv: list[str], n_shards: int = 2,
                     oracle_flags: tuple[str, ...] = ()) -> JobResult:
    """The job's services, and trainers_argv in place of its trainers: it runs with EMBPS_JOB naming the
    job's file, and when it has exited every gateway must have served the job's steps (else JobFailed:
    the trainers died or stopped early).  metrics: each gateway's stats."""
    out = data_dir / "out"
    out.mkdir(parents=True, exist_ok=True)
    with local_services(job, data_dir, n_shards, oracle_flags=oracle_flags) as (job, processes):
        started = time.perf_counter()
        trainers = ExternalTrainers(trainers_argv, data_dir / "job.toml", data_dir / "logs" / "trainers.log")
        processes.append(trainers)
        _watch(job, processes, [trainers], out / "progress.jsonl", show=False)
        seconds = time.perf_counter() - started
        stats = [_gateway_stats(job, address) for address in job.addresses.gateways]
    short = [(i, s["steps"]) for i, s in enumerate(stats) if s["steps"] != job.steps]
    if short:
        raise JobFailed(f"the external trainers exited with gateways {short} (gateway, steps) short of the job's "
                        f"{job.steps} steps; the last lines of {trainers.log_path}:\n{trainers.log_tail()}")
    metrics = {"gateways": stats}
    (out / "metrics.json").write_text(json.dumps(metrics))
    return JobResult(job, metrics, seconds, out)


def _gateway_stats(job: JobConfig, address: str) -> dict:
    with job.security.channel(address) as channel:
        stats = pb_grpc.TrainerGatewayStub(channel).GetGatewayStats(pb.GetGatewayStatsRequest(),
                                                                     timeout=job.timeout_seconds)
    return {**{f.name: v for f, v in stats.ListFields()}, "steps": stats.steps,
            "mode": GATEWAY_MODES.from_message(stats.mode)}


def _watch(job: JobConfig, processes: list[LocalProcess], trainers: list[LocalProcess], progress_file: Path,
           show: bool) -> None:
    """Shows trainer 0's progress until every trainer has exited; raises if any process failed."""
    columns = (TextColumn("[bold]training[/bold] {task.fields[what]}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn())
    with Progress(*columns, disable=not show, transient=False) as bar:
        task = bar.add_task("", total=job.steps, what=f"{job.model} {job.mode}", loss="-")
        seen = 0
        while any(t.exited() is None for t in trainers):
            _raise_if_failed(processes)
            if progress_file.exists():
                lines = progress_file.read_text().splitlines()
                if len(lines) > seen:
                    last = json.loads(lines[-1])
                    bar.update(task, completed=last["step"], loss=f"{last['loss']:.4f}")
                    seen = len(lines)
            time.sleep(0.1)
        _raise_if_failed(trainers)


def _raise_if_failed(processes: list[LocalProcess]) -> None:
    for p in processes:
        code = p.exited()
        if code not in (None, 0):
            raise JobFailed(f"{p.name} exited with code {code}; the last lines of {p.log_path}:\n{p.log_tail()}")
