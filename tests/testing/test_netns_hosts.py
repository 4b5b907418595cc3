"""The hosts-on-one-machine harness (embps.testing.netns_hosts): a 2-host job (each host a shard and a
trainer with its gateway, the oracle cacher on a third host) trains a few steps across links shaped by
tc, and the kernel's counters on those links see at least the rows each host read from the other's
shard, counted as the services' traffic, and DDP's allreduce of the dense gradients apart; a harness whose owner died leaves nothing behind once the next one starts.

Needs root and iproute2; skipped with the reason otherwise.  Untimed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from embps.client import jump_hash
from embps.common.job_config import JobConfig, feature_keys
from embps.datasets import open_dataset
from embps.models import build_model
from embps.testing.netns_hosts import OTHER, LinkShape, NamespacesUnavailable, NetnsHosts, unavailable_reason
from embps.trainer.local_job import JobLayout, run_local_job

HOSTS = ("host-0", "host-1")


@pytest.fixture
def netns_hosts():
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    try:
        with NetnsHosts([*HOSTS, "oracle"], LinkShape(rate_mbit=200)) as hosts:
            yield hosts
    except NamespacesUnavailable as error:
        pytest.skip(str(error))


def remote_row_bytes(job: JobConfig) -> dict[str, int]:
    """Bytes of the rows each host's gateway reads from the other host's shard in direct mode: the
    distinct keys of its trainer's slice of every batch that jump hash puts on the other shard."""
    dataset = open_dataset(job.dataset, **job.dataset_options)
    totals = dict.fromkeys(HOSTS, 0)
    for _, batch in zip(range(job.steps), dataset.batches(job.global_batch, "train")):
        for h, host in enumerate(HOSTS):
            keys = np.unique(feature_keys(batch.sparse[h * job.local_batch:(h + 1) * job.local_batch]))
            totals[host] += int(np.count_nonzero(jump_hash(keys, len(HOSTS)) != h)) * job.dim * 4
    return totals


def test_a_two_host_job_trains_across_shaped_links(netns_hosts, tmp_path):
    job = JobConfig(dataset="synthetic", dataset_options={"scale": 0.0005}, mode="direct", trainers=2,
                    global_batch=128, steps=4, eval_batches=1, dim=8, lookahead=4, timeout_seconds=60)
    layout = JobLayout.on_hosts([netns_hosts.host(h) for h in HOSTS], oracle=netns_hosts.host("oracle"))
    before = netns_hosts.counters()
    result = run_local_job(job, tmp_path, layout=layout, show_progress=False,
                           on_ports=lambda ports: netns_hosts.classify_ports({"services": ports}))
    after = netns_hosts.counters()
    by_class = netns_hosts.class_counters()
    crossed = {name: after[name] - before[name] for name in after}
    print(netns_hosts.latency_note, {name: (c.tx_bytes, c.rx_bytes) for name, c in crossed.items()})

    assert len(result.metrics["losses"]) == job.steps
    assert result.job.addresses.hosts == HOSTS
    for h, host in enumerate(HOSTS):   # every process of host h listened on host h's own address
        address = netns_hosts.address(host)
        assert result.job.addresses.shards[h].startswith(f"{address}:")
        assert result.job.addresses.gateways[h].startswith(f"{address}:")
    assert result.job.addresses.oracle.startswith(f"{netns_hosts.address('oracle')}:")
    assert all(c.tx_bytes > 0 and c.rx_bytes > 0 for c in crossed.values()), crossed
    for host, payload in remote_row_bytes(job).items():
        assert payload > 0
        assert crossed[host].rx_bytes >= payload, f"{host} received {crossed[host].rx_bytes} B, its remote rows are {payload} B"
        other = HOSTS[1 - HOSTS.index(host)]   # whose shard sent them
        assert by_class[other]["services"] >= payload, by_class
    # With 2 ranks, each step's allreduce has each trainer send about one copy of the dense gradients.
    info = open_dataset(job.dataset, **job.dataset_options).info
    dense = 4 * sum(p.numel() for p in build_model(job.model, info.n_dense, len(info.table_sizes), job.dim).parameters())
    for host in HOSTS:
        assert by_class[host][OTHER] >= job.steps * dense // 2, (by_class, dense)
        assert by_class[host]["services"] + by_class[host][OTHER] <= crossed[host].tx_bytes
    switch = netns_hosts.switch_counters()   # the other end of each link agrees on what crossed it
    for host in HOSTS:
        assert switch[host].tx_bytes >= crossed[host].rx_bytes and switch[host].rx_bytes >= crossed[host].tx_bytes


ORPHAN = """
import json, os, signal, subprocess, sys
from embps.testing.netns_hosts import NetnsHosts
hosts = NetnsHosts(["a", "b"]).__enter__()
sleeper = subprocess.Popen([*hosts.host("a").enter, "sleep", "600"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(json.dumps({"namespaces": [hosts.switch, *hosts.namespaces.values()], "link": hosts.control_link,
                  "sleeper": sleeper.pid}), flush=True)
os.kill(os.getpid(), signal.SIGKILL)   # a crash: no teardown
"""


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def test_a_dead_owners_hosts_are_removed_at_the_next_start(netns_hosts):
    crashed = subprocess.run([sys.executable, "-c", ORPHAN], capture_output=True, text=True, timeout=60,
                             env={**os.environ})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    left = json.loads(crashed.stdout)
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert all(ns in namespaces for ns in left["namespaces"]) and running(left["sleeper"])

    with NetnsHosts(["next"]):
        namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
        assert not any(ns in namespaces for ns in left["namespaces"]), namespaces
        assert f" {left['link']}:" not in links and f" {left['link']}@" not in links
        deadline = time.monotonic() + 10
        while running(left["sleeper"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not running(left["sleeper"]), "the crashed harness's process survived"
    # The fixture's own hosts (a live owner: this process) are untouched by the cleanup.
    assert netns_hosts.counters()
