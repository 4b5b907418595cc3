"""Shards on separate "hosts": each shard runs in its own network namespace with its own 10.x address,
linked to the root namespace (the client host) by a veth pair.  Lookups and updates cross the links on
both data paths; cutting a link makes calls to that shard fail within the client's deadline (no hang)
while the other shard keeps serving; healing it resumes service with no acknowledged update lost.

Needs root and iproute2 (`ip`); skipped with the reason otherwise.  Namespaces, links and processes are
removed by the fixture's finalizer, even when a test fails."""

import json
import os
import shutil
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest

from embps.api import InitializerSpec, OptimizerSpec, TableSpec
from embps.client import ClusterConfig, PSClient, ShardError, jump_hash
from embps.common.health import wait_serving
from embps.store import initial_rows

N_SHARDS = 2
GRPC_PORT, DATA_PORT = 50051, 50061
DEADLINE = 2.0
DIM, LR, EPS = 8, 0.1, 1e-8
SPEC = TableSpec(dim=DIM, capacity=100_000, optimizer=OptimizerSpec("adagrad", lr=LR, eps=EPS),
                 initializer=InitializerSpec("uniform", 0.05, seed=5))
FAILED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def _free_subnet(seed: int) -> int:
    """X such that no address or route of this host is in 10.X.0.0/16 (so a leftover can never collide)."""
    taken = ip("-4", "addr").stdout + ip("-4", "route").stdout
    for offset in range(100):
        x = 100 + (seed + offset) % 100
        if f"10.{x}." not in taken:
            return x
    raise RuntimeError("no free 10.X.0.0/16 subnet for the test links")


class Hosts:
    """Namespaces, veth pairs and shard processes; everything it made is undone by cleanup()."""

    def __init__(self, root):
        tag = f"{os.getpid() % 100000}"
        self.subnet = 0
        self.root = root
        self.namespaces: list[str] = []
        self.links: list[str] = []          # root-side veth names (deleting one deletes its peer)
        self.processes: list[subprocess.Popen] = []
        self.names = [(f"embps-t{tag}-{i}", f"ve{tag}r{i}", f"ve{tag}s{i}") for i in range(N_SHARDS)]

    def address(self, i: int) -> str:
        return f"10.{self.subnet}.{i}.2"

    def build(self) -> None:
        self.subnet = _free_subnet(os.getpid())
        for i, (ns, root_side, shard_side) in enumerate(self.names):
            ip("netns", "add", ns)
            self.namespaces.append(ns)
            ip("link", "add", root_side, "type", "veth", "peer", "name", shard_side)
            self.links.append(root_side)
            ip("link", "set", shard_side, "netns", ns)
            ip("addr", "add", f"10.{self.subnet}.{i}.1/30", "dev", root_side)
            ip("link", "set", root_side, "up")
            ip("-n", ns, "addr", "add", f"{self.address(i)}/30", "dev", shard_side)
            ip("-n", ns, "link", "set", shard_side, "up")
            ip("-n", ns, "link", "set", "lo", "up")

    def start_shards(self) -> None:
        for i, (ns, _, _) in enumerate(self.names):
            folder = self.root / f"shard-{i}"
            folder.mkdir()
            settings = {"id": f"shard-{i}", "data_dir": str(folder / "store"),
                        "listen": f"{self.address(i)}:{GRPC_PORT}", "data_listen": f"{self.address(i)}:{DATA_PORT}",
                        "metrics_listen": "", "ready_file": str(folder / "ready.json"), "log_format": "text"}
            config = folder / "shard.toml"
            config.write_text("[shard]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()))
            with open(folder / "shard.log", "ab") as log:
                # `ip netns exec` enters the namespace and execs the command: the pid is the shard's.
                self.processes.append(subprocess.Popen(
                    ["ip", "netns", "exec", ns, sys.executable, "-m", "embps.cli", "ps-shard", "--config", str(config)],
                    stdout=log, stderr=log, cwd=self.root))
        for i, process in enumerate(self.processes):
            ready = self.root / f"shard-{i}" / "ready.json"
            deadline = time.monotonic() + 60
            while not ready.exists():
                if process.poll() is not None:
                    log = (self.root / f"shard-{i}" / "shard.log").read_text(errors="replace")
                    raise RuntimeError(f"shard {i} exited with {process.returncode}:\n{log[-2000:]}")
                assert time.monotonic() < deadline, f"shard {i} did not start"
                time.sleep(0.05)
            wait_serving(f"{self.address(i)}:{GRPC_PORT}", 30)

    def set_link(self, i: int, up: bool) -> None:
        """The shard host's side of its link (as if its NIC or cable failed)."""
        ns, _, shard_side = self.names[i]
        ip("-n", ns, "link", "set", shard_side, "up" if up else "down")

    def cleanup(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for ns in self.namespaces:
            for pid in ip("netns", "pids", ns, check=False).stdout.split():   # nothing of ours may survive
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
        for link in self.links:
            ip("link", "del", link, check=False)
        for ns in self.namespaces:
            ip("netns", "del", ns, check=False)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory, request):
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("`ip` not found: install iproute2 (apt-get install iproute2)")
    hosts = Hosts(tmp_path_factory.mktemp("netns"))
    request.addfinalizer(hosts.cleanup)
    try:
        hosts.build()
    except subprocess.CalledProcessError as error:
        pytest.skip(f"cannot create network namespaces or veth links ({' '.join(error.cmd)}: "
                    f"{error.stderr.strip()})")
    hosts.start_shards()
    return hosts


def cluster(hosts: Hosts, data_path: str) -> ClusterConfig:
    return ClusterConfig.from_addresses([f"{hosts.address(i)}:{GRPC_PORT}" for i in range(N_SHARDS)],
                                        deadline_seconds=DEADLINE, data_path=data_path)


class Reference:
    """Rows and Adagrad state of every key after all acknowledged updates, in numpy."""

    def __init__(self, keys: np.ndarray):
        self.rows = dict(zip(keys.tolist(), initial_rows(SPEC, keys)))
        self.state = {k: np.zeros(DIM, np.float32) for k in keys.tolist()}

    def update(self, keys: np.ndarray, grads: np.ndarray) -> None:
        for k, g in zip(keys.tolist(), grads):
            self.state[k] = self.state[k] + g * g
            self.rows[k] = self.rows[k] - np.float32(LR) * g / (np.sqrt(self.state[k]) + np.float32(EPS))

    def after(self, keys: np.ndarray, grads: np.ndarray) -> "Reference":
        """A copy with one more update applied (an update whose outcome is unknown)."""
        other = Reference.__new__(Reference)
        other.rows, other.state = dict(self.rows), dict(self.state)
        other.update(keys, grads)
        return other

    def check(self, client: PSClient, keys: np.ndarray) -> None:
        rows, state, _ = client.lookup("emb", keys, with_state=True)
        np.testing.assert_allclose(rows, [self.rows[k] for k in keys.tolist()], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(state, [self.state[k] for k in keys.tolist()], rtol=1e-5, atol=1e-6)


def test_lookups_and_updates_across_hosts_survive_a_cut_link(hosts):
    rng = np.random.default_rng(3)
    keys = np.unique(rng.integers(0, 2**64, 4000, dtype=np.uint64))
    owner = jump_hash(keys, N_SHARDS)
    on0, on1 = keys[owner == 0], keys[owner == 1]
    limbo = on1[:200]                     # touched only by the update that fails during the cut
    on1 = on1[200:]
    reference = Reference(keys)
    clients = {path: PSClient(cluster(hosts, path)) for path in ("tcp", "grpc")}
    try:
        clients["grpc"].create_table("emb", SPEC)
        assert clients["tcp"].data_path_kinds() == ["tcp"] * N_SHARDS
        assert clients["grpc"].data_path_kinds() == ["grpc"] * N_SHARDS
        assert [s.shard_id for s in clients["grpc"].stats()] == [f"shard-{i}" for i in range(N_SHARDS)]

        def acknowledged_update(client, batch):
            batch = np.unique(batch)
            grads = rng.normal(0, 1, (len(batch), DIM)).astype(np.float32)
            client.update("emb", batch, grads)          # returned: acknowledged, persistent on both hosts
            reference.update(batch, grads)

        # Both hosts, both data paths: every write is read back through the other path too.
        live = np.concatenate([on0, on1])
        for _ in range(4):
            for client in clients.values():
                acknowledged_update(client, rng.choice(live, 1500))
        for client in clients.values():
            reference.check(client, keys)
        assert sum(s.tables[0].rows for s in clients["grpc"].stats()) > 0

        # Cut shard 1's link: calls that need it fail within about the deadline, shard 0 keeps serving.
        hosts.set_link(1, up=False)
        for path, client in clients.items():
            started = time.monotonic()
            with pytest.raises(ShardError) as failure:
                client.lookup("emb", keys)
            elapsed = time.monotonic() - started
            print(f"{path}: lookup over the cut link failed after {elapsed:.2f} s: {failure.value}")
            assert failure.value.code in FAILED, f"{path}: {failure.value}"
            assert elapsed < 3 * DEADLINE, f"{path}: lookup took {elapsed:.1f} s with a {DEADLINE} s deadline"
            acknowledged_update(client, rng.choice(on0, 500))   # shard 0 is fine
            reference.check(client, on0)
        # An update of shard 1's rows now fails (never retried); it may or may not land after the heal.
        grads = rng.normal(0, 1, (len(limbo), DIM)).astype(np.float32)
        started = time.monotonic()
        with pytest.raises(ShardError) as failure:
            clients["tcp"].update("emb", limbo, grads)
        print(f"update over the cut link failed after {time.monotonic() - started:.2f} s: {failure.value}")
        assert failure.value.code in FAILED and time.monotonic() - started < 3 * DEADLINE
        maybe = reference.after(limbo, grads)

        # Heal: service resumes within a few retransmission timeouts, every acknowledged update is there.
        hosts.set_link(1, up=True)
        healed = time.monotonic()
        for path, client in clients.items():
            deadline = time.monotonic() + 60
            while True:
                try:
                    client.lookup("emb", keys)
                    break
                except ShardError as error:
                    assert error.code in FAILED and time.monotonic() < deadline, f"{path}: {error}"
            print(f"{path}: serving again {time.monotonic() - healed:.2f} s after the heal")
            reference.check(client, np.concatenate([on0, on1]))
            acknowledged_update(client, rng.choice(live, 1500))
        for client in clients.values():
            reference.check(client, np.concatenate([on0, on1]))
            rows, state, _ = client.lookup("emb", limbo, with_state=True)
            outcomes = [np.allclose(rows, [r.rows[k] for k in limbo.tolist()], rtol=1e-5, atol=1e-6)
                        and np.allclose(state, [r.state[k] for k in limbo.tolist()], rtol=1e-5, atol=1e-6)
                        for r in (reference, maybe)]
            assert any(outcomes), "the failed update must be applied entirely or not at all"
    finally:
        for client in clients.values():
            client.close()
