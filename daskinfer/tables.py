"""Table inputs: one document per row of JSONL, CSV or Parquet files, locally or through
fsspec (read as lazy dask DataFrames by table_reading.py).

A record's `filepath` is `<table URI>#<row number>`, the row counted from 0 in its file.
A file is read in partitions (Parquet row groups gathered up to partition_bytes, JSON-lines
blocks, a CSV whole). The driver learns each partition's length once it is read, and cuts
the rows of all the tables, in order, into units of about as many rows as a folder's
partition holds documents: a big partition spreads over every worker, and small ones (row groups of a few
rows, small tables) are gathered into one scoring task, whose batches then find similar
lengths as a big table's do.
"""

from __future__ import annotations

import bisect
import itertools
import numbers
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from daskinfer import csv_reading, reading, records, storage
from daskinfer.errors import ConfigError
from daskinfer.folder_walk import file_version

if TYPE_CHECKING:
    from daskinfer.predict import Scored, Settings, Text

DEFAULT_GLOBS = {"files": "*.txt", "jsonl": "*.jsonl", "csv": "*.csv", "parquet": "*.parquet"}


@dataclass(frozen=True)
class Columns:
    """The columns a run reads: the text, and optionally an id and a true label."""

    text: str
    id: Optional[str] = None
    label: Optional[str] = None

    def names(self) -> List[str]:
        return list(dict.fromkeys(c for c in (self.text, self.id, self.label) if c))


def check_listed_once(docs: Iterable[Any]) -> None:
    """A manifest's table listed again is refused: its rows have no entries of their own to
    report the repeat in, and would be scored twice."""
    repeated = next((doc for doc in docs if doc.error), None)  # a manifest's only flag
    if repeated is not None:
        raise ConfigError(f"inference.input_manifest: the table {repeated.uri} is {repeated.error.split(';')[0]}: "
                          "list each table once")


def versions(uris: Sequence[str], storage_options: Mapping[str, Any]) -> Dict[str, List[int]]:
    """Each table's size and version (folder_walk.file_version) now: a resume continues only into
    the same tables, as their rows are known by number."""
    found = {}
    for uri in uris:
        fs, path = storage.filesystem(uri, storage_options)
        with storage.storage_errors(uri):
            info = fs.info(path)
        found[uri] = [info.get("size") or 0, file_version(fs, path, info)]
    return found


def output_types(frames: Sequence[Any], columns: Columns) -> Dict[str, Any]:
    """The Parquet output's id column type, one for the whole file: the tables' own where
    they agree (a slice whose ids are all missing included), text where they do not, None
    where no head tells (the rows will: parquet_stream takes the first type that comes)."""
    if not columns.id:
        return {}
    import pandas as pd
    import pyarrow

    kinds = {pyarrow.Schema.from_pandas(pd.DataFrame({"id": pd.Series(dtype=frame.dtypes[columns.id])}),
                                        preserve_index=False).field("id").type for frame in frames}
    kinds -= {pyarrow.null()}  # a head whose ids are all missing (typed null or object) decides nothing
    if not kinds:
        return {"id": None}
    return {"id": kinds.pop() if len(kinds) == 1 else pyarrow.string()}


def take_rows(part, start: int, stop: int):
    """Rows [start, stop) of a partition (a pandas DataFrame): what one scoring task receives."""
    return part.iloc[start:stop]


class Rows(NamedTuple):
    """A slice of a table's rows as a scoring task's piece: which table, the file's row
    number of its first row, rows done before a resume (left out), and the columns."""

    uri: str
    first_row: int
    skip: Tuple[int, ...]
    columns: Columns

    def texts(self, settings: Settings, out: Scored, rows, offset: int = 0) -> List[Text]:
        """On the worker: the rows' texts, at positions from offset in the task. A null or
        empty text, or one above max_document_bytes, becomes an error entry."""
        from daskinfer.predict import Text

        columns = self.columns
        texts = _values(rows, columns.text)
        ids = _values(rows, columns.id) if columns.id else None
        labels = _values(rows, columns.label) if columns.label else None
        skipped = set(self.skip)
        ready = []
        for i, text in enumerate(texts):
            number, position = self.first_row + i, offset + i
            if number in skipped:
                continue
            key = records.row_key(self.uri, number)
            if isinstance(text, csv_reading.BadLine):
                out.fail(position, key, ValueError(text.reason))
                continue
            if isinstance(text, bytes):  # a binary column (Parquet BYTE_ARRAY without a string type)
                text = reading.decode(text, settings.encoding)
                if isinstance(text, Exception):
                    out.fail(position, key, text)
                    continue
            ident = ids[i] if ids is not None else None
            if isinstance(ident, bytes):  # a binary id column: its text, as a binary text column's (not "b'...'")
                ident = ident.decode(settings.encoding, csv_reading.DECODE_ERRORS)
            problem = (_undecodable((text, ident, labels and labels[i]), columns, settings.encoding)
                       or _text_problem(text, columns.text, settings.max_document_bytes))
            if problem:
                out.fail(position, key, ValueError(problem))
                continue
            extra = {"id": ident} if ids is not None else {}
            label = _label(labels[i], settings.labels) if labels is not None else None
            ready.append(Text(key, str(text), position, label, extra))
        return ready



class Slices(NamedTuple):
    """Consecutive slices of rows, of one table or several, as one scoring task's piece:
    each slice's Rows and its number of rows, the task's data being their frames in order."""

    parts: Tuple[Rows, ...]
    counts: Tuple[int, ...]

    def texts(self, settings: Settings, out: Scored, *frames) -> List[Text]:
        ready: List[Text] = []
        for rows, offset, frame in zip(self.parts, itertools.accumulate(self.counts, initial=0), frames):
            ready += rows.texts(settings, out, frame, offset)
        return ready

    def tables_with_results(self, positions: Iterable[int]) -> Tuple[str, ...]:
        """The tables that records at these positions (in the task) are rows of."""
        ends = list(itertools.accumulate(self.counts))
        return tuple(dict.fromkeys(self.parts[bisect.bisect_right(ends, p)].uri for p in sorted(positions)))


class Gathered:
    """Slices of rows gathered on the driver until they make a unit of target rows: (rows,
    how many, the future of the slice's frame, None when every row was done before a resume)."""

    def __init__(self) -> None:
        self.slices: List[Tuple[Rows, int, Any]] = []
        self.rows = self.skipped = self.target = 0

    def __bool__(self) -> bool:
        return bool(self.slices)

    def add(self, rows: Rows, count: int, frame: Any) -> None:
        self.slices.append((rows, count, frame))
        self.rows += count
        self.skipped += len(rows.skip)

    def take(self) -> Tuple[Optional[Slices], Tuple[Any, ...], int, int]:
        """(piece or None, its data, rows, rows done before) of what was gathered; empty again."""
        scored = [(rows, count, frame) for rows, count, frame in self.slices if frame is not None]
        piece = Slices(tuple(r for r, _, _ in scored), tuple(c for _, c, _ in scored)) if scored else None
        taken = piece, tuple(frame for _, _, frame in scored), self.rows, self.skipped
        self.slices, self.rows, self.skipped = [], 0, 0
        return taken

def _values(rows, column: str) -> List[Any]:
    """A column of the slice as Python values, None where missing (NaN, NA, None alike),
    decided for the whole column at once rather than row by row."""
    values = rows[column]
    return values.astype(object).where(values.notna(), None).tolist()


def _text_problem(text: Any, column: str, max_bytes: int) -> Optional[str]:
    if text is None:
        return f"null text in column '{column}'"
    # a JSON list, object or true (which Python would print "True"), a Parquet list
    if isinstance(text, bool) or not isinstance(text, (str, numbers.Number)):
        kind = "list" if type(text).__name__ == "ndarray" else type(text).__name__  # a Parquet list, as pandas reads it
        return f"the text in column '{column}' is a {kind}, not a string"
    size = len(str(text).encode("utf-8"))
    if not size:
        return "empty document"
    if size > max_bytes:
        return f"document is {size} bytes, above inference.max_document_bytes={max_bytes}"
    return None


_ESCAPED = re.compile("[\udc80-\udcff]")  # a byte the encoding could not decode (csv_reading.DECODE_ERRORS)


def _undecodable(values: Tuple[Any, ...], columns: Columns, encoding: str) -> Optional[str]:
    """Why a row's text, id or label cannot be read in the encoding, if it cannot."""
    for value, column in zip(values, (columns.text, columns.id, columns.label)):
        bad = _ESCAPED.search(value) if isinstance(value, str) else None
        if bad:
            return (f"not valid {encoding} in column '{column}': byte 0x{ord(bad.group()) - 0xDC00:02x} at character "
                    f"{bad.start()} (inference.encoding names the file's text encoding)")
    return None


def _label(value: Any, labels: Sequence[str]) -> Optional[str]:
    """A true label from a column: a label's name, or its index in inference.labels."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer():
        value = int(value)  # a column with nulls holds 1.0 for 1
        if str(value) not in labels and 0 <= value < len(labels):
            return labels[value]
    return str(value)
