"""The generated Python in services/embps/v1 is what `make proto` makes of protos/embps/v1 today."""

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_current(tmp_path):
    protos = sorted(str(p.relative_to(ROOT / "protos")) for p in (ROOT / "protos").rglob("*.proto"))
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-Iprotos", f"--python_out={tmp_path}",
                    f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", *protos], cwd=ROOT, check=True)
    generated = sorted(p.name for p in (tmp_path / "embps" / "v1").iterdir())
    committed = sorted(p.name for p in (ROOT / "services" / "embps" / "v1").iterdir() if p.name.endswith(("_pb2.py", "_pb2.pyi",
                                                                                                  "_grpc.py")))
    assert generated == committed, "run `make proto`: the set of generated files differs"
    stale = [name for name in generated
             if not filecmp.cmp(tmp_path / "embps" / "v1" / name, ROOT / "services" / "embps" / "v1" / name, shallow=False)]
    assert not stale, f"run `make proto`: {stale} are stale"
