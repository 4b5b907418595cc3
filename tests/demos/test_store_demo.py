"""`embps store-demo` end to end at small sizes, as `make demo` runs it (through a fresh interpreter)."""

import subprocess
import sys

import numpy as np

from embps import cli
from embps.demos import process_crash
from embps.store import Store


def test_store_demo_passes_its_verifications(tmp_path):
    cmd = [sys.executable, "-m", "embps.cli", "store-demo", "--data-dir", str(tmp_path / "demo"),
           "--rows", "50000", "--seconds", "0.3", "--crash-pool", "20000", "--crash-batch-rows", "4096",
           "--crash-acks", "10", "--power-rows", "5000", "--power-trials", "3", "--seed", "1"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All verifications passed." in result.stdout
    assert "FAIL" not in result.stdout
    assert (tmp_path / "demo" / "store" / "embeddings.table").exists()


def test_cli_lists_the_store_demo():
    result = subprocess.run([sys.executable, "-m", "embps.cli", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0
    assert "store-demo" in result.stdout


def test_store_demo_fails_when_a_row_changes_behind_its_back(tmp_path, monkeypatch, capsys):
    """The verification is not vacuous: one pool row changed after the kill must fail the demo."""
    kill = process_crash._stream_and_kill

    def kill_then_tamper(plan, kill_after, rng):
        acks, check = kill(plan, kill_after, rng)
        with Store(plan.store) as store:
            table = store.table(plan.table)
            table.update(np.load(plan.pool_file)[:1], np.ones((1, table.dim), np.float32))
        return acks, check

    monkeypatch.setattr(process_crash, "_stream_and_kill", kill_then_tamper)
    code = cli.main(["store-demo", "--data-dir", str(tmp_path), "--rows", "20000", "--seconds", "0.1",
                     "--crash-pool", "10000", "--crash-batch-rows", "2048", "--crash-acks", "4",
                     "--power-rows", "2000", "--power-trials", "1", "--seed", "2"])
    assert code == 1
    assert "VERIFICATION FAILED: acknowledged writes survive exactly" in capsys.readouterr().out
