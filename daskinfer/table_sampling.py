"""What a plan reads of the tables, on the driver: their rows counted (or estimated from a
few), and a sample of their first rows, read as a run reads them."""

from __future__ import annotations

import contextlib
import csv
import io
from typing import TYPE_CHECKING, Any, Iterator, List, Mapping, Optional, Sequence, Tuple

from daskinfer import csv_reading, jsonl_reading, storage, table_reading, tables
from daskinfer.errors import RunFailed, root_cause

if TYPE_CHECKING:
    import pandas as pd

    from daskinfer.predict import Scored, Settings, Text

COUNTED = 32  # tables a plan counts the rows of; more are estimated from these
COUNTED_FOOTERS = 512  # Parquet files: a footer is a small read, and exact
ESTIMATE_BYTES = 4 * 2**20  # of a CSV or JSON-lines file, read to estimate its rows


def estimate_rows(uris: Sequence[str], sizes: Optional[Sequence[int]], fmt: str, options: Mapping[str, Any],
                  encoding: str) -> Tuple[int, bool]:
    """All the tables' rows, and whether the figure is exact: each table counted (count_rows),
    or, above COUNTED tables (COUNTED_FOOTERS Parquet files), that many of them spread
    evenly, scaled by their bytes (by their number when the sizes are not known)."""
    step = max(1, -(-len(uris) // (COUNTED_FOOTERS if fmt == "parquet" else COUNTED)))
    chosen = range(0, len(uris), step)
    counts = [count_rows(uris[i], fmt, options, encoding) for i in chosen]
    rows, exact = sum(n for n, _ in counts), all(whole for _, whole in counts)
    if step == 1:
        return rows, exact
    known = sizes is not None and all(size > 0 for size in sizes)
    counted = sum(sizes[i] for i in chosen) if known else len(chosen)
    return round(rows * (sum(sizes) if known else len(uris)) / max(counted, 1)), False


class Sampled:
    """A plan's sample of rows, held on the driver and sent whole, as a piece a worker
    scores. Its records' keys are not the rows' own: a plan writes nothing."""

    def __init__(self, rows: tables.Rows, frame: Any):
        self.rows, self.frame = rows, frame

    def __len__(self) -> int:
        return len(self.frame)

    def __getitem__(self, part: slice) -> "Sampled":
        return Sampled(self.rows, self.frame.iloc[part])

    def texts(self, settings: Settings, out: Scored) -> List[Text]:
        return self.rows.texts(settings, out, self.frame)


def sample(uris: Sequence[str], fmt: str, columns: tables.Columns, options: Mapping[str, Any], encoding: str,
           n: int) -> Optional[Sampled]:
    """Up to n rows for a plan, the first ones of the first tables."""
    import pandas as pd

    heads = []
    for uri in uris:
        if n <= 0:
            break
        heads.append(head_rows(uri, fmt, columns, options, encoding, n))
        n -= len(heads[-1])
    return Sampled(tables.Rows(uris[0], 0, (), columns), pd.concat(heads, ignore_index=True)) if heads else None


def count_rows(uri: str, fmt: str, options: Mapping[str, Any], encoding: str) -> Tuple[int, bool]:
    """A table's rows for a plan, and whether the count is exact: a Parquet file's footer
    says; a CSV or JSON-lines file's records are counted, scaled from its first 4 MiB when
    it is bigger."""
    fs, path = storage.filesystem(uri, options)
    with _read_errors(uri, fmt, options), fs.open(path, "rb") as f:
        if fmt == "parquet":
            import pyarrow.parquet

            return pyarrow.parquet.ParquetFile(f).metadata.num_rows, True
        block = f.read(ESTIMATE_BYTES + 1)
    whole = len(block) <= ESTIMATE_BYTES
    if not whole:
        block = block[:block.rfind(b"\n") + 1]
    seen = _csv_records(block, encoding) if fmt == "csv" else _json_lines(block, encoding)
    return (seen, True) if whole else (round(seen * fs.size(path) / max(len(block), 1)), False)


def _json_lines(block: bytes, encoding: str) -> int:
    """The lines that are not blank (in UTF-16, a newline is two bytes, and 0x0a may be half
    of another character)."""
    if table_reading.newline_is_one_byte(encoding):
        return sum(1 for line in block.split(b"\n") if line.strip())
    return sum(1 for line in block.decode(encoding, "ignore").split("\n") if line.strip())


def _csv_records(block: bytes, encoding: str) -> int:
    """The records after the header, as csv reads them: a quoted field may hold newlines."""
    reader = csv.reader(io.StringIO(block.decode(encoding, errors="replace"), newline=""))
    seen = 0
    with contextlib.suppress(csv.Error):  # a block cut inside a quoted field: what came before counts
        for row in reader:
            seen += bool(row)
    return max(0, seen - 1)


def head_rows(uri: str, fmt: str, columns: tables.Columns, options: Mapping[str, Any], encoding: str,
              n: int) -> pd.DataFrame:
    """A table's first n rows, its columns as a run reads them: a plan's sample."""
    import pandas as pd

    names = columns.names()
    fs, path = storage.filesystem(uri, options)
    with _read_errors(uri, fmt, options), fs.open(path, "rb") as f:
        if fmt == "parquet":
            import pyarrow.parquet

            batch = next(pyarrow.parquet.ParquetFile(f).iter_batches(batch_size=n, columns=names), None)
            return batch.to_pandas() if batch is not None else pd.DataFrame(columns=names)
        if fmt == "csv":
            return csv_reading.read(f, columns, encoding, nrows=n)[names]
        return jsonl_reading.read_rows(table_reading.head_lines(f, encoding, n), names)


@contextlib.contextmanager
def _read_errors(uri: str, fmt: str, options: Mapping[str, Any]) -> Iterator[None]:
    """Storage errors as storage_errors maps them; anything else (a malformed line, a file
    that is no table of this format) as one line, as a run says it."""
    try:
        with storage.storage_errors(uri):
            yield
    except (OSError, ConnectionError):
        raise
    except Exception as exc:
        raise RunFailed(f"cannot read {uri} as {fmt}: {table_reading.explain(root_cause(exc), uri, fmt, options)}") from None
