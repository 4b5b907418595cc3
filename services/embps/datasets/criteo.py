"""Criteo click logs: a fast TSV -> raw-array preprocessing step, and a memmap reader of its output.

Input: the Kaggle / Terabyte layout, one sample a line, 40 tab-separated fields -- the 0/1 label,
13 integer features I1..I13, 26 hexadecimal categorical features C1..C26 -- any field but the label
may be empty.

Preprocessing (the DLRM conventions):
  dense     log(x + 1) as float32, with negative and empty integers taken as 0
  sparse    int(hex, 16) modulo the table's size (an empty field is 0, so id 0); the table sizes
            default to the Kaggle ones capped at `max_table_size` (1,000,000)
  labels    uint8
Output: a directory of raw little-endian arrays read back with np.memmap, so a reader touches only
the pages of the batches it reads:
  dense.f32 [n, 13]   sparse.i32 (.i64 if a table has > 2**31 rows) [n, 26]   labels.u8 [n]
  meta.json: n_samples, table_sizes, sparse_dtype, source (written last: no meta, no data set).

Parsing is vectorised numpy over 16 MiB chunks of whole lines (no per-line Python, no pandas), a
few chunks at once on threads: find the separators, check every line has exactly 40 fields, fetch
each field's first 8 bytes as one uint64 and convert all 8 characters at once with SWAR bit
arithmetic.  Fields longer than 8 bytes or with a stray character send the chunk down an exact
digit-by-digit path, which reads up to 18 decimal or 16 hex digits and reports the first bad
field with its line number.

Split: samples are kept in file order (Criteo files are in time order); the last `eval_fraction`
(10%, rounded down) of them are the eval split, the rest train.  Batches are read in that order,
every epoch the same, so batch k is samples [k*B, (k+1)*B) of its split.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import (CRITEO_KAGGLE_TABLE_SIZES, CRITEO_N_DENSE, Batch, DatasetInfo, batches_per_epoch,
               iterate_batches)

N_FIELDS = 1 + CRITEO_N_DENSE + len(CRITEO_KAGGLE_TABLE_SIZES)
DEFAULT_MAX_TABLE_SIZE = 1_000_000
CHUNK_BYTES = 16 << 20
FORMAT_VERSION = 1
TAB, NEWLINE, MINUS = ord("\t"), ord("\n"), ord("-")

# Digit value of every byte, 255 for "not a digit" (the exact path).
_DECIMAL = np.full(256, 255, np.uint8)
_DECIMAL[b"0"[0]:b"9"[0] + 1] = np.arange(10)
_HEX = _DECIMAL.copy()
_HEX[b"a"[0]:b"f"[0] + 1] = _HEX[b"A"[0]:b"F"[0] + 1] = np.arange(10, 16)
_LOW_BYTES = np.array([(1 << (8 * k)) - 1 for k in range(9)], np.uint64)   # [k]: a mask of the low k bytes


class CriteoFormatError(ValueError):
    """A line that is not in the Criteo layout; `line` is 1-based."""

    def __init__(self, line: int, problem: str, path: str | os.PathLike | None = None):
        self.line, self.problem = line, problem
        super().__init__(f"{path or '<criteo tsv>'}: line {line}: {problem}")


def default_table_sizes(max_table_size: int = DEFAULT_MAX_TABLE_SIZE) -> tuple[int, ...]:
    return tuple(min(size, max_table_size) for size in CRITEO_KAGGLE_TABLE_SIZES)


def _column_name(column: int) -> str:
    return "label" if column == 0 else f"I{column}" if column <= CRITEO_N_DENSE else f"C{column - CRITEO_N_DENSE}"


def parse_lines(data: bytes, table_sizes: Sequence[int], first_line: int = 1
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parses complete lines (`data` ends with a newline) into (dense float32 [n, 13], sparse int64
    [n, 26], labels uint8 [n]); raises CriteoFormatError naming the line, counted from first_line."""
    buf = np.frombuffer(data, np.uint8)
    seps = np.flatnonzero((buf == TAB) | (buf == NEWLINE))
    is_newline = buf[seps] == NEWLINE
    n = int(is_newline.sum())
    if len(seps) != n * N_FIELDS or is_newline.reshape(n, N_FIELDS)[:, :-1].any():
        fields = np.bincount(np.cumsum(is_newline) - is_newline, minlength=n)
        line = int(np.flatnonzero(fields != N_FIELDS)[0])
        raise CriteoFormatError(first_line + line, f"expected {N_FIELDS} tab-separated fields, got {fields[line]}")
    ends = seps.reshape(n, N_FIELDS)
    starts = np.empty_like(ends)
    starts.flat[0], starts.flat[1:] = 0, seps[:-1] + 1
    lengths = ends - starts

    def fail(column_of_line: np.ndarray, what: str) -> None:
        line, column = np.argwhere(column_of_line)[0]
        text = bytes(buf[starts[line, column]:ends[line, column]]).decode(errors="replace")
        raise CriteoFormatError(first_line + int(line),
                                f"field {column + 1} ({_column_name(column)}) {text!r} is not {what}")

    labels = buf[starts[:, 0]] - np.uint8(b"0"[0])
    bad_label = (lengths[:, 0] != 1) | (labels > 1)
    if bad_label.any():
        fail(bad_label[:, None], "a 0/1 label")

    # The fast path reads fields of up to 8 bytes with no stray byte; anything else takes the exact one.
    words = _windows(buf)
    columns = slice(1, 1 + CRITEO_N_DENSE)
    ints = _decimal8(words, starts[:, columns], lengths[:, columns])
    if ints is None:
        ints, bad = _fold(buf, starts[:, columns], lengths[:, columns], _DECIMAL, 18, True)
        if bad.any():
            fail(np.pad(bad, ((0, 0), (1, 0))), "an integer (at most 18 digits)")
    dense = np.log1p(np.maximum(ints, 0)).astype(np.float32)

    columns = slice(1 + CRITEO_N_DENSE, N_FIELDS)
    hashes = _hex8(words, starts[:, columns], lengths[:, columns])
    if hashes is None:
        hashes, bad = _fold(buf, starts[:, columns], lengths[:, columns], _HEX, 16, False)
        if bad.any():
            fail(np.pad(bad, ((0, 0), (1 + CRITEO_N_DENSE, 0))), "a hexadecimal number (at most 16 digits)")
    sparse = (hashes % np.asarray(table_sizes, np.uint64)).astype(np.int64)
    return dense, sparse, labels


def _windows(buf: np.ndarray) -> np.ndarray:
    """words[i] = bytes buf[i:i + 8] as a little-endian uint64 (zero-padded at the end): an overlapping
    view, so one gather fetches a field's first 8 bytes and SWAR arithmetic handles them at once."""
    padded = np.zeros(len(buf) + 8, np.uint8)
    padded[:len(buf)] = buf
    return np.ndarray((len(buf) + 1,), "<u8", padded, strides=(1,))


def _each(byte: int) -> np.uint64:
    return np.uint64(byte * 0x0101010101010101)


def _lanes(bits: int, value: int) -> np.uint64:
    """value in the low half of every 2*bits-bit lane."""
    return np.uint64(sum(value << shift for shift in range(0, 64, 2 * bits)))


_U4, _U5, _U6, _U8 = np.uint64(4), np.uint64(5), np.uint64(6), np.uint64(8)
_PAIRS, _QUADS, _HALF = _lanes(8, 0xFF), _lanes(16, 0xFFFF), np.uint64(0xFFFFFFFF)


def _decimal8(words: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray | None:
    """Signed decimals of at most 8 bytes, each field's digits right-aligned in a uint64 and combined
    in pairs, quads and octets; None if a field is longer or has a byte that is not a digit (after an
    optional leading minus)."""
    if lengths.max(initial=0) > 8:
        return None
    word = words[starts]
    negative = ((word & np.uint64(0xFF)) == np.uint64(MINUS)) & (lengths > 0)
    sign = negative.astype(np.uint64)
    n_digits = lengths.astype(np.uint64) - sign
    region = _LOW_BYTES[lengths] & ~_LOW_BYTES[sign]
    low = word & _each(0x0F)
    not_digit = ((word & _each(0xF0)) ^ _each(0x30)) | ((low + _each(0x06)) & _each(0x10))
    if (not_digit & region).any() or (negative & (n_digits == 0)).any():
        return None
    x = ((low & region) >> (_U8 * sign)) << (_U8 * (_U8 - n_digits))   # last digit in the top byte
    x = (x & _PAIRS) * np.uint64(10) + ((x >> _U8) & _PAIRS)
    x = (x & _QUADS) * np.uint64(100) + ((x >> np.uint64(16)) & _QUADS)
    x = ((x & _HALF) * np.uint64(10000) + (x >> np.uint64(32))).astype(np.int64)
    return np.where(negative, -x, x)


def _hex8(words: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray | None:
    """Hex numbers of at most 8 digits: every byte's nibble at once, then packed pairwise; None if a
    field is longer or has a byte that is not a hex digit."""
    if lengths.max(initial=0) > 8:
        return None
    word = words[starts]
    region = _LOW_BYTES[lengths]
    letter = (word >> _U6) & _each(0x01)                       # 1 in the bytes of 'A'-'F' and 'a'-'f'
    nibble = (word & _each(0x0F)) + letter * np.uint64(9)
    # A byte is valid if it is the character its nibble spells ('0'-'9', or 'a'-'f' up to case).
    above_9 = ((nibble + _each(0x06)) >> _U4) & _each(0x01)
    spelled = nibble + _each(0x30) + above_9 * np.uint64(0x27)
    if ((((word | (letter << _U5)) ^ spelled) | (nibble & _each(0xF0))) & region).any():
        return None
    x = nibble & region
    x = ((x & _PAIRS) << _U4) | ((x >> _U8) & _PAIRS)
    x = ((x & _QUADS) << _U8) | ((x >> np.uint64(16)) & _QUADS)
    x = ((x & _HALF) << np.uint64(16)) | (x >> np.uint64(32))           # digit 0 in the top nibble of 32 bits
    return x >> (_U4 * (_U8 - lengths.astype(np.uint64)))


def _fold(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray, digits: np.ndarray, max_digits: int,
          signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """The exact path: the numbers in fields [starts, starts + lengths) of buf ([lines, columns] each)
    -> (values, bad).  The fields' bytes are gathered into a [lines, columns, width] matrix and folded
    in digit by digit, skipping the padding past each field's end and a leading minus sign."""
    base = np.int64(10) if signed else np.uint64(16)
    values = np.zeros(lengths.shape, base.dtype)
    bad = lengths > max_digits + signed               # also bounds the gather below
    width = int(lengths.max(initial=0))
    if width == 0 or bad.any():
        return values, bad
    chars = buf[np.minimum(starts[..., None] + np.arange(width), len(buf) - 1)]
    negative = (chars[..., 0] == MINUS) & (lengths > 0) if signed else np.zeros(lengths.shape, bool)
    digit_count = lengths - negative
    bad |= (digit_count > max_digits) | (negative & (digit_count == 0))
    for k in range(width):
        use = (k < lengths) & ~(negative & (k == 0))
        digit = digits[chars[..., k]]
        bad |= use & (digit == 255)
        values = np.where(use, values * base + digit.astype(base.dtype), values)
    return (np.where(negative, -values, values) if signed else values), bad


@dataclass(frozen=True)
class PreprocessStats:
    n_samples: int
    n_bytes: int
    seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.n_samples / max(self.seconds, 1e-9)


def preprocess_criteo(tsv_path: str | os.PathLike, out_dir: str | os.PathLike, *,
                      max_table_size: int = DEFAULT_MAX_TABLE_SIZE, table_sizes: Sequence[int] | None = None,
                      chunk_bytes: int = CHUNK_BYTES, workers: int | None = None,
                      progress: bool | None = None) -> PreprocessStats:
    """TSV -> out_dir (see the module docstring), streaming in chunks of about chunk_bytes parsed by
    `workers` threads (default: one per core, at most 4).  progress: draw a bar on stderr (None: only
    when stderr is a terminal)."""
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    tsv_path, out_dir = Path(tsv_path), Path(out_dir)
    sizes = tuple(int(s) for s in (table_sizes or default_table_sizes(max_table_size)))
    if len(sizes) != len(CRITEO_KAGGLE_TABLE_SIZES) or min(sizes) < 1:
        raise ValueError(f"need {len(CRITEO_KAGGLE_TABLE_SIZES)} table sizes >= 1, got {sizes}")
    sparse_dtype = np.dtype(np.int32 if max(sizes) <= 2**31 else np.int64)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "meta.json").unlink(missing_ok=True)   # an interrupted run leaves no valid data set
    for stale in out_dir.glob("sparse.i*"):
        stale.unlink()
    stat = tsv_path.stat()
    workers = workers or min(4, os.cpu_count() or 1)
    console = Console(stderr=True)
    bar = Progress(TextColumn(f"preprocessing {tsv_path.name}"), BarColumn(), DownloadColumn(),
                   TransferSpeedColumn(), TimeRemainingColumn(), console=console,
                   disable=not (console.is_terminal if progress is None else progress))
    started, n = time.perf_counter(), 0
    with bar, open(tsv_path, "rb") as source, open(out_dir / "dense.f32", "wb") as dense_out, \
            open(out_dir / f"sparse.i{sparse_dtype.itemsize * 8}", "wb") as sparse_out, \
            open(out_dir / "labels.u8", "wb") as labels_out, ThreadPoolExecutor(workers) as pool:
        task = bar.add_task("", total=stat.st_size)
        pending: deque = deque()                # (parse future, chunk size), in file order

        def write_oldest() -> int:
            future, size = pending.popleft()
            try:
                dense, sparse, labels = future.result()
            except CriteoFormatError as error:
                raise CriteoFormatError(error.line, error.problem, tsv_path) from None
            dense_out.write(dense.tobytes())
            sparse_out.write(sparse.astype(sparse_dtype).tobytes())
            labels_out.write(labels.tobytes())
            bar.update(task, advance=size)
            return len(labels)

        for data, first_line in _line_chunks(source, chunk_bytes):
            pending.append((pool.submit(parse_lines, data, sizes, first_line), len(data)))
            if len(pending) > workers:          # numpy drops the GIL: `workers` chunks parse at once
                n += write_oldest()
        while pending:
            n += write_oldest()
    meta = {"format": FORMAT_VERSION, "n_samples": n, "n_dense": CRITEO_N_DENSE, "table_sizes": list(sizes),
            "sparse_dtype": sparse_dtype.name, "source": _source_id(tsv_path)}
    (out_dir / "meta.json.tmp").write_text(json.dumps(meta, indent=1))
    (out_dir / "meta.json.tmp").replace(out_dir / "meta.json")
    return PreprocessStats(n, stat.st_size, time.perf_counter() - started)


def _line_chunks(source, chunk_bytes: int) -> Iterator[tuple[bytes, int]]:
    """(whole lines of about chunk_bytes, the 1-based number of their first line)."""
    tail, first_line = b"", 1
    while True:
        chunk = source.read(chunk_bytes)
        data = tail + chunk
        cut = data.rfind(b"\n") + 1 if chunk else len(data)
        data, tail = data[:cut], data[cut:]
        if data:
            if not data.endswith(b"\n"):
                data += b"\n"                    # the last line had no newline
            yield data, first_line
            first_line += data.count(b"\n")
        if not chunk:
            return


def _source_id(path: Path) -> dict:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


class CriteoDataset:
    """A preprocessed directory, memory-mapped: the last eval_fraction of samples are eval."""

    def __init__(self, directory: str | os.PathLike, eval_fraction: float = 0.1):
        directory = Path(directory)
        meta_path = directory / "meta.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{directory} has no meta.json: not a finished `embps preprocess-criteo` output")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"{directory}: format {meta.get('format')}, this reader reads {FORMAT_VERSION}")
        if not 0 <= eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
        self.meta, n, sizes = meta, meta["n_samples"], tuple(meta["table_sizes"])
        n_eval = int(n * eval_fraction)
        self.info = DatasetInfo(f"criteo({directory})", meta["n_dense"], sizes, n - n_eval, n_eval)
        sparse_dtype = np.dtype(meta["sparse_dtype"])

        def mapped(name: str, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
            return np.memmap(directory / name, dtype, "r", shape=shape) if n else np.zeros(shape, dtype)

        self._dense = mapped("dense.f32", np.dtype(np.float32), (n, meta["n_dense"]))
        self._sparse = mapped(f"sparse.i{sparse_dtype.itemsize * 8}", sparse_dtype, (n, len(sizes)))
        self._labels = mapped("labels.u8", np.dtype(np.uint8), (n,))

    def batches_per_epoch(self, batch_size: int, split: str = "train") -> int:
        return batches_per_epoch(self.info, batch_size, split)

    def batches(self, batch_size: int, split: str = "train", start_batch: int = 0,
                epochs: int | None = None) -> Iterator[Batch]:
        offset = 0 if split == "train" else self.info.n_train
        return iterate_batches(self.info, batch_size, split, start_batch, epochs,
                               lambda _epoch, j: self.rows(offset + j * batch_size, offset + (j + 1) * batch_size))

    def rows(self, start: int, stop: int) -> Batch:
        """Samples [start, stop) in file order, across both splits."""
        return Batch(np.array(self._dense[start:stop]), self._sparse[start:stop].astype(np.int64),
                     self._labels[start:stop].astype(np.float32))


def open_criteo(path: str | os.PathLike, *, eval_fraction: float = 0.1, cache_dir: str | os.PathLike | None = None,
                max_table_size: int = DEFAULT_MAX_TABLE_SIZE, table_sizes: Sequence[int] | None = None,
                progress: bool | None = None) -> CriteoDataset:
    """A preprocessed directory is read as is.  A TSV file is preprocessed into cache_dir (default:
    '<file>.embps' beside it) unless that already holds it with the same table sizes."""
    path = Path(path)
    if path.is_dir():
        return CriteoDataset(path, eval_fraction)
    if not path.is_file():
        raise FileNotFoundError(f"no Criteo TSV file or preprocessed directory at {path}")
    cache = Path(cache_dir) if cache_dir is not None else path.with_name(path.name + ".embps")
    sizes = list(table_sizes or default_table_sizes(max_table_size))
    try:
        meta = json.loads((cache / "meta.json").read_text())
        fresh = meta["source"] == _source_id(path) and meta["table_sizes"] == sizes
    except (OSError, ValueError, KeyError):
        fresh = False
    if not fresh:
        stats = preprocess_criteo(path, cache, table_sizes=sizes, progress=progress)
        print(f"preprocessed {stats.n_samples:,} Criteo samples into {cache} "
              f"({stats.rows_per_second:,.0f} rows/s)", file=sys.stderr)
    return CriteoDataset(cache, eval_fraction)
