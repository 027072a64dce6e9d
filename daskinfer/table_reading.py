"""Table files as lazy dask DataFrames, one per file, holding only the columns a run needs.

The driver reads a file's head only (a Parquet footer, the first lines of a CSV or JSON-lines
file): the columns are checked before any work, and the head's types stand for the file's.
A partition (Parquet row groups gathered up to partition_bytes, a block of JSON lines, a
whole CSV file, since a quoted field may hold newlines that a block boundary would cut) is
then read on a worker and typed by itself: ids that are numbers for a while and then words
are read as written, where dask's own CSV and JSON readers stop the run with a "metadata
mismatch". A CSV's fields are read as written, not typed by pandas (csv_reading.py).
"""

from __future__ import annotations

import codecs
import collections
import itertools
import json
import logging
import os
import re
import stat
from typing import TYPE_CHECKING, Any, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

from daskinfer import csv_reading, folder_walk, jsonl_reading, storage
from daskinfer.csv_reading import DECODE_ERRORS, python_strings
from daskinfer.errors import ConfigError, RunFailed, first_line, root_cause

if TYPE_CHECKING:
    import pandas as pd

    from daskinfer.tables import Columns

log = logging.getLogger("daskinfer")
HEAD_LINES = 100  # of a CSV or JSON-lines file, read on the driver for its columns and types


def frame(uri: str, fmt: str, columns: Columns, storage_options: Mapping[str, Any], blocksize: int,
          encoding: str = "utf-8"):
    """A lazy dask DataFrame of one table file; a CSV or JSON-lines file read in the given
    text encoding (Parquet's strings are UTF-8). None for a CSV or JSON-lines file that holds
    nothing (a shard its writer left empty). A missing column is a one-line error."""
    import dask
    import dask.dataframe as dd

    options = dict(storage_options)
    try:
        with storage.storage_errors(uri):
            _check_local_file(uri, fmt, options)
            if fmt == "parquet":
                # numpy_nullable: an int64 column with a null stays integers (pandas would make 2**53 + 1 a float)
                table = dd.read_parquet(uri, split_row_groups="adaptive", blocksize=blocksize, storage_options=options,
                                        dtype_backend="numpy_nullable")
                _check_columns(uri, table.columns, columns)
                return table[columns.names()]
            head = _head(uri, fmt, columns, options, encoding)
            if head is None or not len(head):  # a CSV file of a header alone included
                log.info("%s holds no rows", uri)
                return None
            _check_columns(uri, head.columns, columns)
            meta = head[columns.names()].iloc[:0]
            if columns.id and head[columns.id].dtype == object and head[columns.id].notna().any():
                # ids of mixed kinds ("007" and 12): text, which an empty object column cannot
                # tell from ids all missing (tables.output_types: the Parquet id column's type)
                meta = meta.astype({columns.id: "string"})
            with dask.config.set({"dataframe.convert-string": False}):  # which writes a JSON list as Python would
                if fmt == "csv":
                    return dd.from_map(read_csv, [uri], args=(columns, options, encoding), meta=meta,
                                       enforce_metadata=False)
                return _jsonl_frame(uri, columns.names(), options, encoding, blocksize, meta)
    except FileNotFoundError:
        raise FileNotFoundError(f"table not found: {uri}") from None
    except OSError as exc:
        if exc.errno is None and not storage.is_connection_error(exc):  # pyarrow's: a damaged Parquet footer
            raise RunFailed(f"cannot read {uri} as {fmt}: {explain(root_cause(exc), uri, fmt, options)}") from None
        raise
    except (ConnectionError, ConfigError):
        raise
    except Exception as exc:  # not a table of this format: pyarrow's, pandas' or dask's own errors
        raise RunFailed(f"cannot read {uri} as {fmt}: {explain(root_cause(exc), uri, fmt, options)}") from None


def _check_local_file(uri: str, fmt: str, options: Mapping[str, Any]) -> None:
    """A local table is a file: a FIFO would hang the driver reading its head, and a folder
    (but a Parquet dataset's) or a symbolic link loop would end the run with a traceback."""
    fs, path = storage.filesystem(uri, options)
    if not storage.is_local(fs):
        return
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise RunFailed(f"cannot read the table {uri}: {exc.strerror}") from None
    if stat.S_ISDIR(mode) and fmt == "parquet":
        return
    if stat.S_ISDIR(mode):
        raise RunFailed(f"cannot read the table {uri}: it is a folder (inference.input_data_dir lists one)")
    if not stat.S_ISREG(mode):
        raise RunFailed(f"cannot read the table {uri}: not a regular file ({folder_walk.kind_of(mode)})")


def _check_columns(uri: str, found: Iterable[Any], columns: Columns) -> None:
    found = [str(name) for name in found]
    named = (("inference.text_column", columns.text), ("inference.id_column", columns.id),
             ("inference.labels_from", columns.label))
    missing = [f"{column!r} ({', '.join(key for key, value in named if value == column)})"
               for column in columns.names() if column not in found]
    if missing:
        raise ConfigError(f"{uri} has no column {', '.join(missing)}; its columns: {', '.join(map(repr, found))}")


def _head(uri: str, fmt: str, columns: Columns, options: Mapping[str, Any], encoding: str) -> Optional[pd.DataFrame]:
    """The file's first rows, typed as pandas types them (a CSV's text and id as a run reads
    them, the id typed by its values: integers for an integer column); None when it holds
    nothing but white space."""
    import pandas as pd

    fs, path = storage.filesystem(uri, options)
    with fs.open(path, "rb") as f:
        _refuse_compressed(uri, f)
        if fmt == "csv":
            twice = csv_reading.named_twice(f, columns, encoding)
            if twice:
                raise ConfigError(f"{uri} names the column {', '.join(map(repr, twice))} more than once in its "
                                  "header: rename the others, so that the run reads the one you mean")
            try:
                head = csv_reading.read(f, columns, encoding, nrows=HEAD_LINES)
            except pd.errors.EmptyDataError:
                return None
            if columns.id in head.columns:
                head[columns.id] = head[columns.id].convert_dtypes(dtype_backend="numpy_nullable")
            return head
        lines = head_lines(f, encoding, HEAD_LINES)
    if not lines:
        return None
    rows = [jsonl_reading.row_or_bad(line, columns.names()) for line in lines]
    if not any(isinstance(row, dict) for row in rows):  # no JSON lines at all: not a bad row, a bad table
        jsonl_reading.row(lines[0])
    with python_strings():  # the head types the columns: a bad line's row is an error entry when read
        return pd.DataFrame.from_records([row for row in rows if isinstance(row, dict)]).convert_dtypes(
            dtype_backend="numpy_nullable")


def read_csv(uri: str, wanted: Columns, options: Mapping[str, Any], encoding: str) -> pd.DataFrame:
    """On a worker: a CSV file's columns (not named `columns`: dask's from_map would pass its
    own to a parameter of that name)."""
    fs, path = storage.filesystem(uri, options)
    with storage.storage_errors(uri), fs.open(path, "rb") as f:
        return csv_reading.read(f, wanted, encoding)[wanted.names()]


# The first bytes of the compressed files tables come as: none is text a table starts with
# (bzip2's "BZh" is, so its block size digit and its first block's or end's magic count too).
COMPRESSED = {rb"\x1f\x8b": "gzip", rb"BZh[1-9](?:1AY&SY|\x17rE8P\x90)": "bzip2", rb"\xfd7zXZ\x00": "xz",
              rb"\x28\xb5\x2f\xfd": "zstd", rb"PK\x03\x04": "zip"}


def _refuse_compressed(uri: str, f: Any) -> None:
    """A compressed CSV or JSON-lines file is one line: its rows are cut into byte ranges to
    read in parallel, which a compressed stream has not (and read as text, it is noise)."""
    start = f.tell()
    magic = f.read(10)
    f.seek(start)
    kind = next((name for prefix, name in COMPRESSED.items() if re.match(prefix, magic)), None)
    if kind:
        raise ConfigError(f"{uri} is compressed ({kind}): daskinfer reads CSV and JSON-lines tables uncompressed; "
                          "decompress it first, or write the table as Parquet (its compression is read)")


def head_lines(f: Any, encoding: str, n: int) -> List[str]:
    """The first n lines of a file that are not blank, decoded (a byte the encoding cannot
    decode escaped, DECODE_ERRORS)."""
    if not newline_is_one_byte(encoding):  # UTF-16 (PowerShell's): a line ends at "\n\x00"
        decoder, text, lines = codecs.getincrementaldecoder(encoding)(DECODE_ERRORS), "", []
        while len(lines) < n:
            chunk = f.read(2**16)
            text += decoder.decode(chunk, final=not chunk)
            *whole, text = text.split("\n")
            lines += [line for line in whole if line.strip()]
            if not chunk:
                lines += [text] if text.strip() else []
                break
        return lines[:n]
    lines = []
    while len(lines) < n:
        line = f.readline()
        if not line:
            break
        if line.strip():
            lines.append(line.decode(encoding, DECODE_ERRORS))
    return lines


def newline_is_one_byte(encoding: str) -> bool:
    """Whether "\n" is the byte 0x0a in text of this encoding (UTF-8 and Latin-1 among them,
    not UTF-16): then a file can be cut into blocks of lines before it is decoded."""
    encoder = codecs.getincrementalencoder(encoding)()
    encoder.encode("{")  # a byte-order mark, if the encoding writes one, comes first
    return encoder.encode("\n") == b"\n"


def _jsonl_frame(uri: str, names: List[str], options: Mapping[str, Any], encoding: str, blocksize: int, meta):
    """Blocks of whole lines, one dask partition each (the whole file for an encoding whose
    newline is not one byte)."""
    import dask.dataframe as dd

    fs, path = storage.filesystem(uri, options)
    size = fs.size(path)
    if not newline_is_one_byte(encoding):
        blocksize = size + 1
    offsets = list(range(0, size, blocksize)) or [0]
    return dd.from_map(read_jsonl_part, offsets, args=(uri, names, options, encoding, blocksize), meta=meta,
                       enforce_metadata=False)


def read_jsonl_part(offset: int, uri: str, names: Sequence[str], options: Mapping[str, Any], encoding: str,
                    blocksize: int) -> pd.DataFrame:
    """On a worker: the lines that end within [offset, offset + blocksize), the one cut at
    offset left to the block before (fsspec's read_block, as dask's read_bytes cuts)."""
    from fsspec.utils import read_block

    fs, path = storage.filesystem(uri, options)
    with storage.storage_errors(uri), fs.open(path, "rb") as f:
        block = read_block(f, offset, blocksize, delimiter=b"\n")
    return jsonl_reading.read_block(block, names, encoding)


def read_ahead(client: Any, frames: List[Tuple[str, Any]], depth: int = 1) -> Iterator[Tuple[str, Any, Any]]:
    """(uri, future of a partition's rows, future of their number) for every dask partition of
    every table, in order, with `depth` more partitions being read while this one is cut and
    scored: many small row groups are bound by each read's round trip (41 Parquet files of
    20-row groups: 21.6 s at two per thread against 24.2 s at one, medians of 4 interleaved
    runs). The number is asked for with the read, not when the driver comes to it."""
    def read(part: Any) -> Tuple[Any, Any]:
        rows = client.compute(part)
        return rows, client.submit(len, rows)

    reads = ((uri, *read(part)) for uri, frame in frames for part in frame.to_delayed())
    pending = collections.deque(itertools.islice(reads, depth))
    for following in reads:
        yield pending.popleft()
        pending.append(following)
    yield from pending


def explain(exc: BaseException, uri: str, fmt: str, storage_options: Mapping[str, Any]) -> str:
    """Why a table could not be read, in one line; for JSON lines, which line is malformed,
    found by reading the file again on this failure path only (as Latin-1, which any bytes
    are: JSON's own characters are ASCII in every encoding a run may name)."""
    reason = f"{type(exc).__name__}: {first_line(exc)}"
    if isinstance(exc, UnicodeDecodeError):
        return f"{reason} (inference.encoding names the file's text encoding)"
    if fmt != "jsonl":
        return reason
    try:
        fs, path = storage.filesystem(uri, storage_options)
        with fs.open(path, "rb") as lines:
            for number, line in enumerate(lines, 1):
                if line.strip():
                    try:
                        jsonl_reading.row(line.decode("latin-1"))
                    except json.JSONDecodeError as bad:
                        return f"line {number} is not valid JSON ({first_line(bad)})"
                    except ValueError as bad:
                        return f"line {number} holds {bad}"
    except Exception:  # the explanation is a courtesy: the reason stands without it
        pass
    return reason
