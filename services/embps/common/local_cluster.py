"""Local processes: shards started with `embps ps-shard` and other `embps` subcommands, for the demo,
tests and benchmarks, on loopback or on a LocalHost (e.g. a network namespace of embps.testing's
harness).  Each process gets its own data directory and config file; ports are picked by the kernel
at first start and kept across restarts, so a client survives a restart of its shard."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .addresses import split_host_port
from .cluster_config import ClusterConfig
from .health import wait_serving
from .security import NO_SECURITY, Security

START_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class LocalHost:
    """Where a local process runs: the address its servers listen on and the argv prefix that runs a
    command there (none: this machine; e.g. `ip netns exec NS` for a network namespace)."""
    name: str = "loopback"
    address: str = "127.0.0.1"
    enter: tuple[str, ...] = ()


LOOPBACK = LocalHost()


def embps_command(host: LocalHost, argv: list[str]) -> list[str]:
    """The command line of `embps ARGV` on host, run by this Python (so children run this checkout)."""
    return [*host.enter, sys.executable, "-m", "embps.cli", *argv]


class LocalShard:
    def __init__(self, data_dir: str | os.PathLike, shard_id: str = "shard-0", security: Security = NO_SECURITY,
                 host: LocalHost = LOOPBACK, **settings):
        """settings: extra [shard] config values (see embps.ps_shard.config.ShardConfig)."""
        self.dir = Path(data_dir)
        self.security = security
        self.host = host
        self.dir.mkdir(parents=True, exist_ok=True)
        self.settings = {"id": shard_id, "data_dir": str(self.dir / "store"), "listen": f"{host.address}:0",
                         "data_listen": f"{host.address}:0", "metrics_listen": f"{host.address}:0",
                         "ready_file": str(self.dir / "ready.json"), **settings}
        self.process: subprocess.Popen | None = None
        self.addresses: dict = {}
        self.start()

    @property
    def address(self) -> str:
        return self.addresses["grpc"]

    @property
    def ports(self) -> set[int]:
        """Every port the shard listens on."""
        return {split_host_port(a)[1] for a in self.addresses.values() if isinstance(a, str) and ":" in a}

    @property
    def cluster_config(self) -> ClusterConfig:
        return ClusterConfig.from_addresses([self.address], security=self.security)

    def start(self) -> None:
        ready = Path(self.settings["ready_file"])
        ready.unlink(missing_ok=True)
        config = self.dir / "shard.toml"
        config.write_text("[shard]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in self.settings.items())
                          + "[security]\n" + "".join(f"{k} = {json.dumps(v)}\n"
                                                     for k, v in self.security.to_table().items()))
        log = open(self.dir / "shard.log", "ab")
        self.process = subprocess.Popen(embps_command(self.host, ["ps-shard", "--config", str(config)]),
                                        stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not ready.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"shard exited with {self.process.returncode}; see {self.dir / 'shard.log'}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"shard did not start within {START_TIMEOUT_SECONDS} s")
            time.sleep(0.02)
        self.addresses = json.loads(ready.read_text())
        # Restarts reuse the ports, so clients keep their addresses.
        self.settings["listen"] = self.addresses["grpc"]
        if "tcp" in self.addresses:
            self.settings["data_listen"] = f"{self.host.address}:{split_host_port(self.addresses['tcp'])[1]}"
        if "metrics" in self.addresses:
            self.settings["metrics_listen"] = self.addresses["metrics"]
        try:
            wait_serving(self.address, deadline - time.monotonic(), self.security)
        except BaseException:
            self.kill()   # a shard that never became healthy must not outlive the attempt
            raise

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait for a clean exit; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL: a crash, as far as the store is concerned."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> LocalShard:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class LocalCluster:
    """n shards as separate processes (shard i on hosts[i], default loopback), and the cluster config
    that names them."""

    def __init__(self, data_dir: str | os.PathLike, n_shards: int, security: Security = NO_SECURITY,
                 hosts: tuple[LocalHost, ...] = (), **settings):
        if hosts and len(hosts) != n_shards:
            raise ValueError(f"{n_shards} shards need {n_shards} hosts, got {len(hosts)}")
        self.shards: list[LocalShard] = []
        self.security = security
        try:
            for i in range(n_shards):
                self.shards.append(LocalShard(Path(data_dir) / f"shard-{i}", f"shard-{i}", security,
                                              hosts[i] if hosts else LOOPBACK, **settings))
        except BaseException:
            self.stop()
            raise

    @property
    def config(self) -> ClusterConfig:
        return ClusterConfig.from_addresses([s.address for s in self.shards], security=self.security)

    def stop(self) -> None:
        for shard in self.shards:
            shard.stop()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class LocalProcess:
    """An `embps` subcommand as a child process on host, its output in a log file."""

    def __init__(self, name: str, argv: list[str], log_path: Path, host: LocalHost = LOOPBACK):
        self.name, self.log_path = name, log_path
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(embps_command(host, argv), stdout=log, stderr=log)

    def exited(self) -> int | None:
        return self.process.poll()

    def stop(self, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def free_ports(n: int, avoid: Iterable[int] = ()) -> list[int]:
    """n distinct ports free right now on loopback (the kernel's picks, all held open together so no
    two are the same; another process could still take one first), none of them in avoid (ports
    taken on another host, e.g. a network namespace this process cannot see into)."""
    avoid = set(avoid)
    with contextlib.ExitStack() as held:
        sockets = [held.enter_context(socket.socket()) for _ in range(n + len(avoid))]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [port for port in (s.getsockname()[1] for s in sockets) if port not in avoid][:n]


def free_port() -> int:
    return free_ports(1)[0]
