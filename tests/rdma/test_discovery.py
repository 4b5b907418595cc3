"""Device discovery and the data-path choice: the fallback here (no device), the rules with a device
present, and that the package imports without pyverbs."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from embps.rdma import discovery
from embps.rdma.discovery import DataPathChoice, RdmaProbe, RdmaUnavailable, choose_data_path, probe_rdma


@pytest.fixture
def reset_fallback_log():
    discovery._logged.clear()
    yield
    discovery._logged.clear()


def test_no_rdma_device_here_and_the_fallback_is_chosen_and_logged_once(caplog, reset_fallback_log):
    probe = probe_rdma()
    if probe.devices:
        pytest.skip(f"this machine has RDMA devices {list(probe.devices)}: the no-device fallback cannot be observed")
    assert probe.devices == () and probe.reason   # e.g. "device listing failed: Failed to get devices list"
    with caplog.at_level(logging.INFO, logger="embps.rdma"):
        first = choose_data_path("auto", memcached="127.0.0.1:11211", role="shard")
        second = choose_data_path("auto", memcached="127.0.0.1:11211", role="shard")
    assert first == second and first.kind == "fallback" and not first.rdma and first.device is None
    assert first.reason == probe.reason
    messages = [r.getMessage() for r in caplog.records if r.name == "embps.rdma"]
    assert messages == [f"no RDMA device ({probe.reason}); using the TCP/gRPC path"]
    assert caplog.records[-1].rdma_reason == probe.reason
    with pytest.raises(RdmaUnavailable, match="RDMA required"):
        choose_data_path("on", memcached="127.0.0.1:11211")


def test_pyverbs_imports_in_the_venv():
    """Debian's pyverbs (python3-pyverbs) is made visible to the venv by a .pth file (Makefile)."""
    if not Path("/usr/lib/python3/dist-packages/pyverbs").is_dir():
        pytest.skip("python3-pyverbs is not installed (apt-get install python3-pyverbs)")
    import sysconfig

    import pyverbs.device
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    assert list(Path(pyverbs.device.__file__).parent.glob(f"device{suffix}")), \
        f"pyverbs extension modules do not carry this interpreter's ABI tag {suffix}"
    import numpy
    assert "dist-packages" not in numpy.__file__   # only pyverbs comes from Debian


def test_choice_rules_with_a_device_present(caplog, reset_fallback_log):
    present = RdmaProbe(("mlx5_0", "mlx5_1"))
    assert choose_data_path("auto", "", "10.0.0.1:11211", probe=present) == DataPathChoice("rdma", "mlx5_0", "")
    assert choose_data_path("auto", "mlx5_1", "10.0.0.1:11211", probe=present).device == "mlx5_1"
    with caplog.at_level(logging.INFO, logger="embps.rdma"):
        missing = choose_data_path("auto", "mlx5_9", "10.0.0.1:11211", probe=present, role="client")
        no_memcached = choose_data_path("auto", "", "", probe=present, role="client")
        off = choose_data_path("off", probe=present, role="client")
    assert not missing.rdma and "mlx5_9" in missing.reason and "mlx5_0, mlx5_1" in missing.reason
    assert not no_memcached.rdma and "memcached" in no_memcached.reason
    assert not off.rdma and "disabled" in off.reason
    assert len(caplog.records) == 3 and all("using the TCP/gRPC path" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="rdma mode"):
        choose_data_path("maybe")


def test_every_module_imports_without_pyverbs_and_the_probe_says_why():
    """pyverbs is imported only where verbs are used: with it unimportable, the whole package (and the
    shard and client that use it) still imports, and discovery names the reason."""
    modules = ["config", "discovery", "exchange", "wire", "planner", "verbs", "server", "client"]
    script = "\n".join([
        "import sys",
        "sys.modules['pyverbs'] = None   # any import of pyverbs now raises ImportError",
        *[f"import embps.rdma.{name}" for name in modules],
        "import embps.ps_shard.server, embps.client.ps_client",
        "from embps.rdma.discovery import probe_rdma, choose_data_path",
        "probe = probe_rdma()",
        "assert probe.devices == () and probe.reason.startswith('pyverbs not importable'), probe",
        "assert not choose_data_path('auto', memcached='127.0.0.1:1').rdma",
        "print('ok')",
    ])
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=os.environ, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
