"""Fixtures of the RDMA tests: a real memcached on loopback (the queue-pair exchange) and a store."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from embps.common.local_cluster import free_port
from embps.store import Store


@pytest.fixture(scope="module")
def memcached():
    """A private memcached on a free loopback port (TCP only), stopped afterwards."""
    binary = shutil.which("memcached") or ("/usr/bin/memcached" if Path("/usr/bin/memcached").exists() else None)
    if binary is None:
        pytest.skip("memcached is not installed (apt-get install memcached)")
    port = free_port()
    cmd = [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0"]
    if os.geteuid() == 0:
        cmd += ["-u", "root"]   # memcached refuses to run as root without naming the user
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"memcached did not start: {proc.stderr.read().decode(errors='replace')}") from None
            time.sleep(0.02)
    yield f"127.0.0.1:{port}"
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "store") as s:
        yield s
