"""Table inputs: one document per row of JSONL, CSV or Parquet files, read by dask's own
readers (dask.dataframe.read_json / read_csv / read_parquet), locally or through fsspec.

A record's `filepath` is `<table URI>#<row number>`, the row counted from 0 in its file.
Dask reads a file in partitions (Parquet row groups, JSONL blocks; a CSV whole, since a
quoted field may hold newlines that a block boundary would cut). The driver learns each
partition's length once it is read, and cuts it into slices of rows: a slice is one
scoring task, so a file read as one partition still spreads over every worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from daskinfer import reading, records, storage
from daskinfer.errors import ConfigError, RunFailed, first_line, root_cause
from daskinfer.listing import version_of

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
    """Each table's size and version (listing.version_of) now: a resume continues only into
    the same tables, as their rows are known by number."""
    found = {}
    for uri in uris:
        fs, path = storage.filesystem(uri, storage_options)
        with storage.storage_errors(uri):
            info = fs.info(path)
        found[uri] = [info.get("size") or 0, version_of(info)]
    return found


# Integer columns with a missing value stay integers (pandas would make them floats: an id
# 1 written as 1.0, 12345678901234567 as 1.2345678901234568e+16 in a CSV).
NULLABLE = {"dtype_backend": "numpy_nullable"}


def frame(uri: str, fmt: str, columns: Columns, storage_options: Mapping[str, Any], blocksize: int,
          encoding: str = "utf-8"):
    """A lazy dask DataFrame of one table file, holding only the columns the run needs; a
    CSV or JSON-lines file is read in the given text encoding (Parquet's strings are UTF-8).

    Reads the schema (a Parquet footer, the head of a CSV or JSONL file) and checks the
    columns are there: a missing one is a one-line error before any work.
    """
    import dask.dataframe as dd

    options = dict(storage_options)
    try:
        with storage.storage_errors(uri):
            if fmt == "parquet":
                table = dd.read_parquet(uri, split_row_groups=True, storage_options=options)
            elif fmt == "csv":  # only an empty field is missing: a review may well read "NA" or "null"
                table = dd.read_csv(uri, blocksize=None, storage_options=options, keep_default_na=False,
                                    na_values=[""], encoding=encoding, **NULLABLE)
            else:
                table = dd.read_json(uri, lines=True, orient="records", blocksize=blocksize, storage_options=options,
                                     encoding=encoding, **NULLABLE)
    except (OSError, ConnectionError):
        raise
    except Exception as exc:  # not a table of this format: pyarrow's, pandas' or dask's own errors
        root = root_cause(exc)
        raise RunFailed(f"cannot read {uri} as {fmt}: {explain(root, uri, fmt, storage_options)}") from None
    missing = [c for c in columns.names() if c not in table.columns]
    if missing:
        raise ConfigError(
            f"{uri} has no column {', '.join(repr(c) for c in missing)} (inference.text_column, id_column or "
            f"labels_from); its columns: {', '.join(map(str, table.columns))}"
        )
    return table[columns.names()]


def explain(exc: BaseException, uri: str, fmt: str, storage_options: Mapping[str, Any]) -> str:
    """Why a table could not be read, in one line; for JSON lines, which line is malformed
    (pandas does not say), found by reading the file again on this failure path only."""
    reason = f"{type(exc).__name__}: {first_line(exc)}"
    if fmt != "jsonl":
        return reason
    import json

    try:
        fs, path = storage.filesystem(uri, storage_options)
        with fs.open(path, "rb") as lines:
            for number, line in enumerate(lines, 1):
                if line.strip():
                    try:
                        json.loads(line)
                    except ValueError as bad:
                        return f"line {number} is not valid JSON ({first_line(bad)})"
    except Exception:  # the explanation is a courtesy: the reason stands without it
        pass
    return reason


def slices(n_rows: int, rows_per_slice: int) -> List[range]:
    return [range(start, min(start + rows_per_slice, n_rows)) for start in range(0, n_rows, rows_per_slice)]


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

    def texts(self, settings: Settings, out: Scored, rows) -> List[Text]:
        """On the worker: the rows' texts. A null or empty text, or one above
        max_document_bytes, becomes an error entry."""
        from daskinfer.predict import Text

        columns = self.columns
        texts = _values(rows, columns.text)
        ids = _values(rows, columns.id) if columns.id else None
        labels = _values(rows, columns.label) if columns.label else None
        skipped = set(self.skip)
        ready = []
        for i, text in enumerate(texts):
            number = self.first_row + i
            if number in skipped:
                continue
            key = records.row_key(self.uri, number)
            if isinstance(text, bytes):  # a binary column (Parquet BYTE_ARRAY without a string type)
                text = reading.decode(text, settings.encoding)
                if isinstance(text, Exception):
                    out.fail(i, key, text)
                    continue
            problem = _text_problem(text, columns.text, settings.max_document_bytes)
            if problem:
                out.fail(i, key, ValueError(problem))
                continue
            extra = {"id": ids[i]} if ids is not None else {}
            label = _label(labels[i], settings.labels) if labels is not None else None
            ready.append(Text(key, str(text), i, label, extra))
        return ready


def _values(rows, column: str) -> List[Any]:
    """A column of the slice as Python values, None where missing (NaN, NA, None alike),
    decided for the whole column at once rather than row by row."""
    values = rows[column]
    return values.astype(object).where(values.notna(), None).tolist()


def _text_problem(text: Any, column: str, max_bytes: int) -> Optional[str]:
    if text is None:
        return f"null text in column '{column}'"
    size = len(str(text).encode("utf-8"))
    if not size:
        return "empty document"
    if size > max_bytes:
        return f"document is {size} bytes, above inference.max_document_bytes={max_bytes}"
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
