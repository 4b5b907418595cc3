"""cffi build script for the native store (API mode): `pip install` runs it through setup.py."""

import os
import re
from pathlib import Path

import cffi

NATIVE = Path(__file__).resolve().parent
HEADER = NATIVE / "embps_store.h"
SOURCES = sorted(NATIVE.glob("*.c"))
COMPILE_ARGS = ["-std=c11", "-O3", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-fno-strict-aliasing"]


INT_DEFINE = re.compile(r"#define (EMBPS_\w+) (0x[0-9a-fA-F]+|[0-9]+)u?$")


def public_declarations() -> str:
    """The header is the one source of truth: its C declarations and integer constants, minus
    comments and the rest of the preprocessor."""
    text = re.sub(r"/\*.*?\*/", "", HEADER.read_text(), flags=re.S)
    lines = []
    for line in text.splitlines():
        line = line.strip()
        if match := INT_DEFINE.match(line):
            lines.append(f"#define {match[1]} {match[2]}")
        elif not line.startswith("#"):
            lines.append(line)
    return "\n".join(lines) + "\n#define EMBPS_RESERVED_KEY ...\n"


ffibuilder = cffi.FFI()
ffibuilder.cdef(public_declarations())
ffibuilder.set_source(
    "embps.store._native",
    '#include "embps_store.h"',
    sources=[os.path.relpath(src) for src in SOURCES],
    include_dirs=[os.path.relpath(NATIVE)],
    libraries=["pmem2", "m"],
    extra_compile_args=COMPILE_ARGS,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
