"""The placement file: a Placement on disk, versioned and checksummed, refused whole when it does not fit.

Layout (little-endian):
    prefix   magic b"EMBPSPLC" | format version u32 | reserved u32 (0) | payload length u64 | sha256 of payload
    payload  header length u32 | JSON header (hosts, dataset, seed, counts), space-padded to 8-byte alignment
             | row_keys u64[rows] | mirror keys u64[sum of mirror counts], host 0 first
             | row_owner u16[rows] | sample_host u16[samples]
The 64-bit arrays come first so that every array lies aligned in the loaded buffer and is used in place.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np

from .spec import Placement

MAGIC = b"EMBPSPLC"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sIIQ32s")
_HEADER_LENGTH = struct.Struct("<I")
_HEADER_FIELDS = ("hosts", "dataset", "seed", "rows", "samples", "mirrors")


class PlacementFileError(ValueError):
    """A placement file that cannot be used: not one, truncated, corrupt, or of an unknown version."""


class PlacementMismatchError(PlacementFileError):
    """A sound placement file made for another cluster or dataset than the one asking."""


def save_placement(path: str | os.PathLike, placement: Placement) -> None:
    """Writes atomically: a reader sees the old file or the whole new one, never a part."""
    arrays = _arrays_of(placement)
    header = _header_bytes(placement)
    digest = hashlib.sha256(header)
    for array in arrays:
        digest.update(array.data.cast("B"))
    length = len(header) + sum(array.nbytes for array in arrays)
    path = Path(path)
    staging = path.with_name(path.name + ".tmp")
    with open(staging, "wb") as out:
        out.write(_PREFIX.pack(MAGIC, FORMAT_VERSION, 0, length, digest.digest()))
        out.write(header)
        for array in arrays:
            out.write(array.data.cast("B"))
        out.flush()
        os.fsync(out.fileno())
    os.replace(staging, path)


def load_placement(path: str | os.PathLike, *, hosts: int | None = None, dataset: str | None = None) -> Placement:
    """The placement in `path`; with `hosts` or `dataset` given, refuses a file made for others."""
    data = np.fromfile(path, dtype=np.uint8)
    payload = _checked_payload(data, path)
    header_length = _HEADER_LENGTH.unpack_from(payload.data, 0)[0] if len(payload) >= _HEADER_LENGTH.size else None
    if header_length is None or _HEADER_LENGTH.size + header_length > len(payload):
        raise PlacementFileError(f"placement file {path}: header length runs past the payload")
    header = _parsed_header(bytes(payload[_HEADER_LENGTH.size:_HEADER_LENGTH.size + header_length]), path)
    _check_fits(header, path, hosts, dataset)
    return _placement_from(header, payload[_HEADER_LENGTH.size + header_length:], path)


def _arrays_of(placement: Placement) -> list[np.ndarray]:
    return [np.ascontiguousarray(a, a.dtype.newbyteorder("<"))
            for a in (placement.row_keys, *placement.mirrors, placement.row_owner, placement.sample_host)]


def _header_bytes(placement: Placement) -> bytes:
    fields = {"hosts": placement.hosts, "dataset": placement.dataset, "seed": int(placement.seed),
              "rows": len(placement.row_keys), "samples": len(placement.sample_host),
              "mirrors": [len(m) for m in placement.mirrors]}
    text = json.dumps(fields, sort_keys=True).encode()
    text += b" " * (-(_HEADER_LENGTH.size + len(text)) % 8)
    return _HEADER_LENGTH.pack(len(text)) + text


def _checked_payload(data: np.ndarray, path) -> np.ndarray:
    if len(data) < _PREFIX.size:
        raise PlacementFileError(f"placement file {path}: truncated ({len(data)} bytes, shorter than its "
                                 f"{_PREFIX.size}-byte prefix)")
    magic, version, _reserved, length, checksum = _PREFIX.unpack_from(data.data, 0)
    if magic != MAGIC:
        raise PlacementFileError(f"placement file {path}: not a placement file (magic {magic!r}, "
                                 f"expected {MAGIC!r})")
    if version != FORMAT_VERSION:
        raise PlacementFileError(f"placement file {path}: format version {version}, this build reads "
                                 f"version {FORMAT_VERSION}")
    if len(data) - _PREFIX.size != length:
        kind = "truncated" if len(data) - _PREFIX.size < length else "has trailing bytes"
        raise PlacementFileError(f"placement file {path}: {kind} (payload is {len(data) - _PREFIX.size} "
                                 f"bytes, its prefix says {length})")
    payload = data[_PREFIX.size:]
    if hashlib.sha256(payload.data).digest() != checksum:
        raise PlacementFileError(f"placement file {path}: corrupt (sha256 of the payload does not match "
                                 f"the checksum in its prefix)")
    return payload


def _parsed_header(text: bytes, path) -> dict:
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PlacementFileError(f"placement file {path}: unreadable header ({e})") from None
    if not isinstance(header, dict) or sorted(header) != sorted(_HEADER_FIELDS):
        raise PlacementFileError(f"placement file {path}: header must hold exactly {list(_HEADER_FIELDS)}")
    counts = [header[name] for name in ("hosts", "seed", "rows", "samples")]
    if (not isinstance(header["dataset"], str) or not isinstance(header["mirrors"], list)
            or not all(type(n) is int and n >= 0 for n in counts + header["mirrors"])):
        raise PlacementFileError(f"placement file {path}: header holds a field of the wrong type: {header}")
    return header


def _check_fits(header: dict, path, hosts: int | None, dataset: str | None) -> None:
    if hosts is not None and header["hosts"] != hosts:
        raise PlacementMismatchError(f"placement file {path} places rows over {header['hosts']} hosts, "
                                     f"this cluster has {hosts}")
    if dataset is not None and header["dataset"] != dataset:
        raise PlacementMismatchError(f"placement file {path} was made for dataset {header['dataset']!r}, "
                                     f"this job trains on {dataset!r}")


def _placement_from(header: dict, body: np.ndarray, path) -> Placement:
    rows, samples, mirror_counts = header["rows"], header["samples"], header["mirrors"]
    sizes = [8 * rows, *(8 * n for n in mirror_counts), 2 * rows, 2 * samples]
    if sum(sizes) != len(body):
        raise PlacementFileError(f"placement file {path}: header counts need {sum(sizes)} bytes of arrays, "
                                 f"the payload holds {len(body)}")
    bounds = np.cumsum([0, *sizes])
    parts = [body[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]
    wide = [part.view("<u8").astype(np.uint64, copy=False) for part in parts[:-2]]
    narrow = [part.view("<u2").astype(np.uint16, copy=False) for part in parts[-2:]]
    try:
        return Placement(hosts=header["hosts"], row_keys=wide[0], row_owner=narrow[0], sample_host=narrow[1],
                         mirrors=tuple(wide[1:]), dataset=header["dataset"], seed=header["seed"])
    except ValueError as e:
        raise PlacementFileError(f"placement file {path}: not a valid placement ({e})") from None
