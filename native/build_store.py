"""cffi build script for the native store (API mode): `pip install` runs it through setup.py."""

import hashlib
import os
import re
from pathlib import Path

import cffi

NATIVE = Path(__file__).resolve().parent
HEADERS = [NATIVE / "embps_store.h", NATIVE / "embps_data_server.h", NATIVE / "embps_data_client.h",
           NATIVE / "embps_partitioner.h", NATIVE / "embps_key_router.h"]
SOURCES = sorted(NATIVE.glob("*.c"))
# Hidden by default: only the declarations marked EMBPS_API (and cffi's PyInit) are exported.
# -fno-math-errno: the core never reads errno after a math call, and without it sqrtf must stay a
# scalar call (it may set errno), which keeps the optimizer's loops from vectorizing.  Results are
# the same bits: sqrt and the arithmetic are correctly rounded either way, in the same order.
COMPILE_ARGS = ["-std=c11", "-O3", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-fno-strict-aliasing",
                "-fno-math-errno", "-fvisibility=hidden"]


INT_DEFINE = re.compile(r"#define (EMBPS_\w+) (0x[0-9a-fA-F]+|[0-9]+)u?$")


def public_declarations() -> str:
    """The headers are the one source of truth: their C declarations and integer constants, minus
    comments, static assertions, the export macro and the rest of the preprocessor."""
    text = "\n".join(header.read_text() for header in HEADERS)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"_Static_assert\s*\(.*?\);", "", text, flags=re.S)
    lines = []
    for line in text.splitlines():
        line = line.strip()
        if match := INT_DEFINE.match(line):
            lines.append(f"#define {match[1]} {match[2]}")
        elif line and not line.startswith("#"):
            lines.append(re.sub(r"\bEMBPS_API\s+", "", line))
    return "\n".join(lines) + "\n#define EMBPS_RESERVED_KEY ...\n"


def native_version(declarations: str) -> str:
    """The stamp compiled into the extension: it changes with every change of the public
    declarations (not with comments or line breaks), and embps.store refuses an extension with
    another."""
    return "abi-" + hashlib.sha256(" ".join(declarations.split()).encode()).hexdigest()[:16]


DECLARATIONS = public_declarations()
ffibuilder = cffi.FFI()
ffibuilder.cdef(DECLARATIONS)
ffibuilder.set_source(
    "embps.store._native",
    "".join(f'#include "{header.name}"\n' for header in HEADERS),
    sources=[os.path.relpath(src) for src in SOURCES],
    include_dirs=[os.path.relpath(NATIVE)],
    define_macros=[("EMBPS_NATIVE_VERSION", f'"{native_version(DECLARATIONS)}"')],
    libraries=["pmem2", "m"],
    extra_compile_args=COMPILE_ARGS,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
