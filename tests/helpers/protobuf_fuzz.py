"""Bad protobuf bytes for a message type: random bytes, mutations of a valid message (flipped, cut,
extended bytes) and breakage at the wire-format level (truncated varints, wrong wire types, field 0,
huge length prefixes, invalid UTF-8), each with a label saying what it is."""

from __future__ import annotations

import numpy as np
from google.protobuf.descriptor import Descriptor, FieldDescriptor

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5
MAX_FIELD = 2**29 - 1
# Not UTF-8: a lone continuation byte, a cut 2-byte sequence, an overlong '/', a surrogate, beyond U+10FFFF.
BAD_UTF8 = (b"\x80", b"ab\xc3", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xff\xfe")
_WIRE_TYPES = {FieldDescriptor.TYPE_FIXED64: I64, FieldDescriptor.TYPE_SFIXED64: I64, FieldDescriptor.TYPE_DOUBLE: I64,
               FieldDescriptor.TYPE_FIXED32: I32, FieldDescriptor.TYPE_SFIXED32: I32, FieldDescriptor.TYPE_FLOAT: I32,
               FieldDescriptor.TYPE_STRING: LEN, FieldDescriptor.TYPE_BYTES: LEN, FieldDescriptor.TYPE_MESSAGE: LEN}


def varint(n: int) -> bytes:
    """n as a base-128 varint; negative n as its 64-bit two's complement (as protobuf sends int32 -1)."""
    n &= 2**64 - 1
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def tag(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


def length_delimited(field: int, data: bytes) -> bytes:
    return tag(field, LEN) + varint(len(data)) + data


def _wire_type(field: FieldDescriptor) -> int:
    return _WIRE_TYPES.get(field.type, VARINT)


def _payload(wire_type: int) -> bytes:
    """A well-formed value of wire_type."""
    return {VARINT: varint(1), I64: bytes(8), LEN: varint(3) + b"abc", I32: bytes(4)}[wire_type]


def structural(descriptor: Descriptor, base: bytes) -> list[tuple[str, bytes]]:
    """Deterministic breakage of a valid encoding `base` of descriptor, field by field."""
    cases = [
        ("tag varint cut", base + b"\x80"),
        ("tag varint of 11 bytes", base + b"\xff" * 10 + b"\x01"),
        ("field 0 varint", base + tag(0, VARINT) + b"\x01"),
        ("field 0 length-delimited", base + tag(0, LEN) + b"\x01x"),
        ("field 0 first", tag(0, I32) + bytes(4) + base),
        ("wire type 6", base + tag(1, 6) + b"\x01"),
        ("wire type 7", base + tag(1, 7) + b"\x01"),
        ("group never ended", base + tag(1, SGROUP)),
        ("group end without start", base + tag(1, EGROUP)),
        ("field number above the maximum", base + tag(MAX_FIELD + 1, VARINT) + b"\x01"),
        ("unknown field at the maximum number", base + tag(MAX_FIELD, VARINT) + b"\x01"),
        ("unknown group, well formed", base + tag(99, SGROUP) + tag(1, VARINT) + b"\x01" + tag(99, EGROUP)),
        ("message twice", base + base),
        ("only a tag", tag(1, LEN)),
    ]
    for field in descriptor.fields:
        n, wire_type = field.number, _wire_type(field)
        name = f"field {n} ({field.name})"
        for other in (VARINT, I64, LEN, I32):
            if other != wire_type:
                cases.append((f"{name} as wire type {other}", base + tag(n, other) + _payload(other)))
        if wire_type == VARINT:
            cases += [(f"{name} varint cut", base + tag(n, VARINT) + b"\xff\xff"),
                      (f"{name} varint of 11 bytes", base + tag(n, VARINT) + b"\xff" * 10 + b"\x01"),
                      (f"{name} = 2^64-1", base + tag(n, VARINT) + varint(2**64 - 1))]
        elif wire_type in (I64, I32):
            cases.append((f"{name} cut", base + tag(n, wire_type) + b"\x01\x02"))
        else:
            cases += [(f"{name} length 2^32-1", base + tag(n, LEN) + varint(2**32 - 1) + b"abc"),
                      (f"{name} length 2^63", base + tag(n, LEN) + varint(2**63) + b"abc"),
                      (f"{name} length 2^64-1", base + tag(n, LEN) + varint(2**64 - 1) + b"abc"),
                      (f"{name} length past the end", base + tag(n, LEN) + varint(1000) + b"abc"),
                      (f"{name} length varint cut", base + tag(n, LEN) + b"\x80\x80")]
        if field.type == FieldDescriptor.TYPE_STRING:
            cases += [(f"{name} invalid UTF-8 {bad!r}", base + length_delimited(n, bad)) for bad in BAD_UTF8]
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            inner = field.message_type
            cases += [(f"{name} holding {label}", base + length_delimited(n, data))
                      for label, data in structural(inner, b"")[:8]]
            cases += [(f"{name} holding {inner.fields[0].name} invalid UTF-8", base + length_delimited(
                n, length_delimited(inner.fields[0].number, b"\xff")))] if (
                inner.fields and inner.fields[0].type == FieldDescriptor.TYPE_STRING) else []
    return cases


def mutations(base: bytes, rng: np.random.Generator, count: int) -> list[tuple[str, bytes]]:
    """count random mutations of base: flipped, cut, extended, inserted or removed bytes."""
    cases = []
    for i in range(count):
        data = bytearray(base)
        kind = ("flip", "truncate", "extend", "insert", "remove", "duplicate")[i % 6]
        if kind == "flip" and data:
            for pos in rng.integers(0, len(data), int(rng.integers(1, 4))):
                data[pos] ^= int(rng.integers(1, 256))
        elif kind == "truncate" and len(data) > 1:
            del data[int(rng.integers(1, len(data))):]
        elif kind == "extend":
            data += rng.bytes(int(rng.integers(1, 17)))
        elif kind == "insert":
            pos = int(rng.integers(0, len(data) + 1))
            data[pos:pos] = rng.bytes(int(rng.integers(1, 5)))
        elif kind == "remove" and data:
            pos = int(rng.integers(0, len(data)))
            del data[pos:pos + int(rng.integers(1, 5))]
        elif data:
            start = int(rng.integers(0, len(data)))
            data += data[start:start + int(rng.integers(1, 17))]
        cases.append((f"mutation {i} ({kind})", bytes(data)))
    return cases


def random_messages(rng: np.random.Generator, count: int, max_len: int = 96) -> list[tuple[str, bytes]]:
    return [(f"random {i}", rng.bytes(int(rng.integers(1, max_len)))) for i in range(count)]
