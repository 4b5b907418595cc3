"""The built extension: its version stamp (a stale build refuses to load), its exports and the wire
structs Python packs."""

import importlib.util
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from embps.store import _native, data_server, store
from embps.store._native import ffi, lib

ROOT = Path(__file__).resolve().parents[2]


def build_script():
    spec = importlib.util.spec_from_file_location("build_store", ROOT / "native" / "build_store.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_binding_expects_the_version_of_the_headers():
    build = build_script()
    assert store.NATIVE_VERSION == build.native_version(build.public_declarations()), \
        "the public headers changed: set NATIVE_VERSION in embps/store/store.py to their new stamp"


def test_extension_carries_the_version_of_its_build():
    assert ffi.string(lib.embps_version()).decode() == store.NATIVE_VERSION


def test_stamp_ignores_comments_and_line_breaks():
    build = build_script()
    declarations = build.public_declarations()
    assert build.native_version(declarations.replace(", ", ",\n    ")) == build.native_version(declarations)
    assert build.native_version(declarations + "int embps_new_call(void);") != build.native_version(declarations)


def test_a_stale_extension_fails_to_import(tmp_path):
    """An extension built from other headers than the package's: the import names the problem and the fix."""
    shutil.copytree(ROOT / "native", tmp_path / "native")
    shutil.copytree(ROOT / "services" / "embps", tmp_path / "services" / "embps",
                    ignore=shutil.ignore_patterns("__pycache__", "_native*"))
    header = tmp_path / "native" / "embps_store.h"
    text, guard_end, rest = header.read_text().rpartition("#endif")
    header.write_text(text + "enum { EMBPS_SINCE_CHANGED = 1 };\n" + guard_end + rest)
    build = ("import sys; sys.path.insert(0, '../native'); from build_store import ffibuilder; "
             "ffibuilder.compile(tmpdir='.')")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "services")}
    subprocess.run([sys.executable, "-c", build], cwd=tmp_path / "services", env=env, check=True, capture_output=True)
    child = subprocess.run([sys.executable, "-c", "import embps.store"], cwd=tmp_path, env=env,
                           capture_output=True, text=True)
    assert child.returncode != 0
    assert "ImportError: the native core _native" in child.stderr and "is stale" in child.stderr, child.stderr
    assert f"this source expects {store.NATIVE_VERSION}; rebuild: pip install -e ." in child.stderr


def test_check_refuses_an_unstamped_build():
    with pytest.raises(ImportError, match=r"built as unstamped, .*rebuild: pip install -e \."):
        store.check_native_version("unstamped")


def test_only_the_api_is_exported():
    listing = subprocess.run(["nm", "-D", "--defined-only", _native.__file__], capture_output=True, text=True,
                             check=True)
    exported = {line.split()[-1] for line in listing.stdout.splitlines() if line.strip()}
    assert "PyInit__native" in exported and "embps_table_lookup" in exported
    assert {name for name in exported if not name.startswith("embps_")} == {"PyInit__native"}
    assert not exported & {"fail", "mix64", "slab_alloc", "table_open", "pethash_get"}


def test_wire_structs_match_what_python_packs():
    assert (ffi.sizeof("embps_wire_request"), ffi.sizeof("embps_wire_reply")) == (16, 16)
    data_server.check_wire_layout("embps_wire_request", data_server.WIRE_REQUEST, data_server.WIRE_REQUEST_FIELDS)
    data_server.check_wire_layout("embps_wire_reply", data_server.WIRE_REPLY, data_server.WIRE_REPLY_FIELDS)


@pytest.mark.parametrize("packer, fields, what", [
    (struct.Struct("<IIQ"), ("msg_len", "status", "payload_bytes"), "fields swapped"),
    (struct.Struct("<IIII"), ("status", "msg_len", "payload_bytes"), "a field too short"),
    (struct.Struct("<IIQI"), ("status", "msg_len", "payload_bytes"), "a field too many"),
])
def test_wire_check_catches_a_layout_mismatch(packer, fields, what):
    with pytest.raises(ImportError, match="in the native core, but Python packs"):
        data_server.check_wire_layout("embps_wire_reply", packer, fields)
