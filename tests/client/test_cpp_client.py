"""A C++ client (examples/cpp_client) against a real shard: the gRPC API works outside Python.

The test builds the client with Debian's protoc, grpc_cpp_plugin and libgrpc++ (the project
Makefile installs them), runs it against a shard started by LocalShard, and reads the rows it
wrote back through the Python client.
"""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "cpp_client"
BINARY = ROOT / "build" / "cpp_client" / "lookup_update"
DIM = 8


def _missing_tools():
    missing = [tool for tool in ("g++", "make", "protoc", "grpc_cpp_plugin", "pkg-config")
               if shutil.which(tool) is None]
    if shutil.which("pkg-config") and subprocess.run(
            ["pkg-config", "--exists", "grpc++", "protobuf"]).returncode != 0:
        missing.append("pkg-config grpc++/protobuf (libgrpc++-dev)")
    return missing


@pytest.fixture(scope="module")
def cpp_client():
    missing = _missing_tools()
    if missing:
        pytest.skip("C++ client toolchain missing: " + ", ".join(missing)
                    + " (apt: g++ make pkg-config libgrpc++-dev protobuf-compiler-grpc)")
    result = subprocess.run(["make", "-C", str(EXAMPLE), "-j4"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, "building the C++ client failed:\n" + result.stdout + result.stderr
    assert BINARY.exists()
    return BINARY


def _run(binary, address):
    return subprocess.run([str(binary), address], capture_output=True, text=True, timeout=60)


def _expected_rows(keys):
    """What the C++ program leaves behind: assigned k*0.25 + j*0.01, then SGD (lr 0.5) steps."""
    shift = {1: 0.0, 2: -1.0, 3: -0.5}
    rows = np.zeros((len(keys), DIM), np.float32)
    for i, key in enumerate(keys):
        if key in shift:
            rows[i] = (np.float32(key * 0.25) + np.arange(DIM, dtype=np.float32) * np.float32(0.01)
                       + np.float32(shift[key]))
    return rows


def test_cpp_client_against_a_shard(cpp_client, tmp_path):
    from embps.client import ClusterConfig, PSClient
    from embps.common.local_cluster import LocalShard

    with LocalShard(tmp_path / "shard0") as shard:
        result = _run(cpp_client, shard.address)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "cpp client: OK" in result.stdout

        # CreateTable(if_not_exists) and Assign make the program repeatable against the same shard.
        again = _run(cpp_client, shard.address)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "cpp client: OK" in again.stdout

        client = PSClient(ClusterConfig.from_addresses([shard.address]))
        try:
            keys = np.array([1, 2, 3, 99], np.uint64)
            rows = client.lookup("cpp_demo", keys)
        finally:
            client.close()
    assert rows.dtype == np.float32 and rows.shape == (4, DIM)
    np.testing.assert_allclose(rows, _expected_rows([1, 2, 3, 99]), rtol=0, atol=1e-6)


def test_cpp_client_reports_failure(cpp_client):
    """Exit status 1 (not a crash, not OK) when the server cannot be reached."""
    result = _run(cpp_client, "127.0.0.1:1")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "cpp client: OK" not in result.stdout
    assert "CreateTable failed" in result.stderr
