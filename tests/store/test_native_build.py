"""The built extension: its exports and the wire structs Python packs."""

import struct
import subprocess

import pytest

from embps.store import _native, data_server
from embps.store._native import ffi, lib


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
