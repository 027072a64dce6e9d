"""A CSV file's rows as a run reads them: every field as written, a malformed row an error
entry of its own.

pandas would type each column for the whole file: a file of numeric reviews would be scored
as numbers ("0123" as 123), and an id of "007" would lose its zeros. And with `usecols` its
fast parser drops a row's extra fields without a word, so a review holding an unquoted comma
would be scored cut short. So every column is read as text and all are parsed, which checks
each row's field count; a file with a row of too many fields is read again by pandas' Python
parser, which hands such rows over, and each becomes a `BadLine` keeping its place.
"""

from __future__ import annotations

import re
import warnings
from typing import TYPE_CHECKING, Any, Dict, List, NamedTuple

if TYPE_CHECKING:
    import pandas as pd

    from daskinfer.tables import Columns

# Only an empty CSV field is missing: a review may well read "NA" or "null". Bytes the
# encoding cannot decode are kept as lone surrogates (DECODE_ERRORS), for their row alone to
# become an error entry (tables.Rows), not the whole table.
DECODE_ERRORS = "surrogateescape"
CSV_OPTIONS: Dict[str, Any] = {"keep_default_na": False, "na_values": [""], "dtype": str,
                               "encoding_errors": DECODE_ERRORS}
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?")
_TOO_MANY_FIELDS = re.compile(r"Expected \d+ fields in line \d+, saw \d+")  # the C parser's words
_BAD = "\x00daskinfer: malformed row "  # a marker no CSV writer puts in a field


class BadLine(NamedTuple):
    """A row that cannot be read (a JSON line that is no JSON object, a CSV row of too many
    fields), in place of its row's text: it becomes an error entry of its own, and the rest of
    the table is scored."""

    reason: str


def read(f: Any, columns: Columns, encoding: str, nrows: Any = None) -> pd.DataFrame:
    """The CSV's rows, every column as text; the id and label as written (a number where
    JSON writes it the same way: 1, -3, 0.5; else its text: "007", "1.50"), so one value does
    not decide the others' type; a row of too many fields a BadLine in the text column."""
    import pandas as pd

    start = f.tell()
    with python_strings():
        try:
            rows = pd.read_csv(f, encoding=encoding, nrows=nrows, **CSV_OPTIONS)
        except pd.errors.ParserError as exc:
            if not _TOO_MANY_FIELDS.search(str(exc)):
                raise
            f.seek(start)
            rows = _read_with_bad_rows(f, columns, encoding, nrows)
    for column in (columns.id, columns.label):
        if column and column in rows.columns:
            rows[column] = pd.Series([_as_written(v) for v in rows[column].tolist()], index=rows.index, dtype=object)
    return rows


def named_twice(f: Any, columns: Columns, encoding: str) -> List[str]:
    """The columns a run reads that the CSV's header names more than once (pandas would read
    the first and rename the others "text.1", ...: which one a user meant cannot be told)."""
    import pandas as pd

    start = f.tell()
    try:
        header = pd.read_csv(f, header=None, nrows=1, encoding=encoding, **CSV_OPTIONS).iloc[0].tolist()
    except pd.errors.EmptyDataError:
        return []
    finally:
        f.seek(start)
    return [column for column in columns.names() if header.count(column) > 1]


def _read_with_bad_rows(f: Any, columns: Columns, encoding: str, nrows: Any) -> pd.DataFrame:
    """The slow parser, for a file with rows of too many fields: each such row is kept as a
    row of markers (pandas drops the extra ones, warning), then made a BadLine."""
    import pandas as pd

    seen: List[int] = []

    def marked(fields: List[str]) -> List[str]:
        seen.append(len(fields))
        return [f"{_BAD}{len(seen) - 1}"] * len(fields)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pd.errors.ParserWarning)
        rows = pd.read_csv(f, encoding=encoding, nrows=nrows, engine="python", on_bad_lines=marked, **CSV_OPTIONS)
    if columns.text not in rows.columns:
        return rows  # the caller names the missing column
    texts = rows[columns.text].astype(object)
    bad = texts.str.startswith(_BAD, na=False).to_numpy()
    reasons = [BadLine(f"holds {seen[int(t[len(_BAD):])]} fields where the header names {len(rows.columns)} "
                       "(a field holding a comma must be quoted)") for t in texts[bad]]
    rows = rows.astype(object)
    rows.loc[bad, :] = None
    rows.loc[bad, columns.text] = pd.Series(reasons, index=rows.index[bad], dtype=object)
    return rows


def _as_written(value: Any) -> Any:
    """A CSV field as JSON would write it: a number when its digits are a number's own."""
    if not isinstance(value, str):
        return None  # missing: an empty field
    if not _NUMBER.fullmatch(value):
        return value
    number = float(value) if "." in value else int(value)
    return number if repr(number) == value else value


def python_strings():
    """pandas' string columns held as Python strings, not Arrow's: a byte the encoding could not
    decode (a lone surrogate, DECODE_ERRORS) is no UTF-8, and would fail the whole table."""
    import pandas as pd

    return pd.option_context("mode.string_storage", "python")
