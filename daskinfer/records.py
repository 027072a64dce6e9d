"""The output record, in one place: its keys, how a table row is named, how a record and
an error entry are written (JSON lines, or columns for Parquet), and what a scoring task
sends back to the driver."""

from __future__ import annotations

import itertools
import json
import math
import time
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Tuple, Union

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"  # UTC, as the original script wrote it
KEYS = ("time", "filepath", "logit_prob", "sentiment")  # every prediction has exactly these (and extras asked for)
PARQUET_TYPES = (("time", "string"), ("filepath", "string"), ("logit_prob", "float64"), ("sentiment", "string"))


def now() -> str:
    return time.strftime(TIME_FORMAT, time.gmtime())


def row_key(table_uri: str, row: int) -> str:
    """What a record calls a table row: `<table URI>#<row number>`, rows counted from 0."""
    return f"{table_uri}#{row}"


def error_entry(key: str, reason: str, transient: bool = False) -> Dict[str, Any]:
    """A line of errors.jsonl. transient: the failure may pass (a storage outage, a lost
    worker), so a later run should try the document again."""
    entry = {"time": now(), "filepath": key, "error": reason}
    if transient:
        entry["transient"] = True
    return entry


class PartitionResult(NamedTuple):
    """What a task sends back to the driver: small, ready to write. results is JSONL bytes,
    or a pyarrow Table for Parquet output (None when nothing was predicted)."""

    results: Union[bytes, Any, None]
    errors: bytes
    n_results: int
    n_errors: int
    tally: Any
    worker: str
    stats: Optional[Dict[str, Any]] = None  # for the run report: score histogram, labels, errors by kind
    carried: int = 0  # of documents, those whose lines an incremental run copied from the previous one
    tables: Tuple[str, ...] = ()  # of a table's rows: the tables the results are rows of
    read_as: Tuple[Tuple[str, int, int], ...] = ()  # (uri, size, version) of files read otherwise than listed

    @property
    def documents(self) -> int:
        return self.n_results + self.n_errors


def merged(parts: List[PartitionResult]) -> PartitionResult:
    """The results of one unit's pieces, in order, as the unit's own (a unit whose workers
    died, scored a document at a time: scheduling.Runner)."""
    results = [part.results for part in parts if part.results is not None]
    if results and not isinstance(results[0], bytes):
        import pyarrow

        joined = pyarrow.concat_tables(results, promote_options="default")
    else:
        joined = b"".join(results) if results else None
    tallies = [part.tally for part in parts if part.tally is not None]
    for tally in tallies[1:]:
        tallies[0].merge(tally)
    by_worker: Dict[str, int] = {}
    for part in parts:
        if part.worker:  # a document whose workers died has none
            by_worker[part.worker] = by_worker.get(part.worker, 0) + part.documents
    return PartitionResult(
        joined, b"".join(part.errors for part in parts), sum(part.n_results for part in parts),
        sum(part.n_errors for part in parts), tallies[0] if tallies else None,
        max(by_worker, key=by_worker.get) if by_worker else "",
        _merged_stats([part.stats for part in parts if part.stats]),
        read_as=tuple(found for part in parts for found in part.read_as),
    )


def _merged_stats(many: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    if not many:
        return None
    total = {"hist": [0] * len(many[0]["hist"]), "labels": {}, "errors": {}}
    for one in many:
        add_stats(total, one)
    return total


def add_stats(total: Dict[str, Any], part: Dict[str, Any]) -> None:
    """Add a partition's stats to total (the run's, or a unit's scored in pieces)."""
    total["hist"] = [a + b for a, b in zip(total["hist"], part["hist"])]
    for key in ("labels", "errors"):
        for name, n in part[key].items():
            total[key][name] = total[key].get(name, 0) + n


def stats(predicted: List[Dict[str, Any]], errors: List[Dict[str, Any]], bins: int = 20) -> Dict[str, Any]:
    """What the run report needs of a partition, counted where the records are made: a
    histogram of logit_prob over [0, 1] (outside it: the edge bins), labels, errors by kind."""
    hist, labels, kinds = [0] * bins, {}, {}
    for record in predicted:
        hist[min(bins - 1, max(0, int(record["logit_prob"] * bins)))] += 1
        labels[record["sentiment"]] = labels.get(record["sentiment"], 0) + 1
    for entry in errors:
        kind = entry["error"].split(":", 1)[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    return {"hist": hist, "labels": labels, "errors": kinds}


def stats_of_jsonl(lines: Iterable[bytes], errors: bool = False) -> Dict[str, Any]:
    """stats of a JSONL file's records (errors: of its error entries), read 10,000 lines at a
    time, never held whole; lines that are no record with a score are not counted."""
    total, lines = stats([], []), iter(lines)
    while True:
        rows = [json.loads(line) for line in itertools.islice(lines, 10_000)]
        if not rows:
            return total
        add_stats(total, stats([], rows) if errors else stats([r for r in rows if "logit_prob" in r], []))


def encode(records: List[Dict[str, Any]], output_format: str) -> Union[bytes, Any, None]:
    """A partition's predictions as the output wants them: JSONL bytes, or a pyarrow Table."""
    if output_format == "parquet":
        return parquet_table(records) if records else None
    return jsonl(records)


def jsonl(rows: List[Dict[str, Any]]) -> bytes:
    text = "".join([line(r) for r in rows])
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # A file name that is not valid UTF-8 reaches Python as a lone surrogate
        # (surrogateescape); written as an escape (\udce9), it stays valid JSON and
        # json.loads gives back the very name.
        return "".join([_line_ascii(r) for r in rows]).encode("utf-8")


def line(record: Dict[str, Any]) -> str:
    """A record as one JSON line. A plain prediction, the bulk of every output, is formatted
    directly: the same text as the encoder's, in a third of the time."""
    if tuple(record) == KEYS and math.isfinite(record["logit_prob"]):
        return (
            f'{{"time": {_quote(record["time"])}, "filepath": {_quote(record["filepath"])}, '
            f'"logit_prob": {record["logit_prob"]!r}, "sentiment": {_quote(record["sentiment"])}}}\n'
        )
    return _ENCODER.encode(record) + "\n"


def _line_ascii(record: Dict[str, Any]) -> str:
    text = line(record)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return _ASCII_ENCODER.encode(record) + "\n"


def parquet_table(records: List[Dict[str, Any]]):
    """Records as columns: fixed types for the keys every record has; extras (id, scores)
    inferred, or written as text when a column mixes types."""
    import pyarrow

    try:
        table = _columns(records)
    except UnicodeEncodeError:  # a file name that is not valid UTF-8
        table = _columns([{**r, "filepath": utf8_name(r["filepath"])} for r in records])
    for name, kind in PARQUET_TYPES:
        index = table.schema.get_field_index(name)
        table = table.set_column(index, name, table.column(name).cast(getattr(pyarrow, kind)()))
    return table


def _columns(records: List[Dict[str, Any]]):
    """A column per key; one whose values mix types (an id column of numbers and words) as
    text, its missing values still missing."""
    import pyarrow

    names = list(dict.fromkeys(key for record in records for key in record))
    columns = []
    for name in names:
        values = [record.get(name) for record in records]
        try:
            columns.append(pyarrow.array(values))
        except (pyarrow.ArrowInvalid, pyarrow.ArrowTypeError, TypeError, OverflowError):  # an id above 2**63
            columns.append(pyarrow.array([as_text(v) for v in values], pyarrow.string()))
    return pyarrow.table(columns, names=names)


def conform(table: Any, schema: Any):
    """table in the output's schema (Parquet output has one for the whole file): a column
    that cannot be cast, as in a file carried from an older run, is written as text when the
    schema says text."""
    import pyarrow

    try:
        return table.cast(schema)
    except (pyarrow.ArrowInvalid, pyarrow.ArrowNotImplementedError):
        for index, field in enumerate(schema):
            if field.type == pyarrow.string() and table.schema.field(field.name).type != field.type:
                values = [as_text(v) for v in table.column(field.name).to_pylist()]
                table = table.set_column(index, field.name, pyarrow.array(values, pyarrow.string()))
        return table.cast(schema)


def as_text(value: Any) -> Optional[str]:
    """A value of a column that mixes types, as text: as the JSONL writes it (true, 1.5,
    {"a": 1}), a string as itself, a date or decimal as str() gives it; missing stays so."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float, list, tuple, dict)):
        return _ENCODER.encode(value)
    return str(value)


def utf8_name(name: str) -> str:
    """A file name as a Parquet string can hold it. A name that is not valid UTF-8 reaches
    Python with lone surrogates (surrogateescape), which Parquet's UTF-8 strings cannot hold
    (JSONL writes them as escapes that json.loads turns back into the very name); here its
    undecodable bytes are written as Python shows them: caf\\xe9.txt."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def parquet_schema():
    import pyarrow

    return pyarrow.schema([(name, getattr(pyarrow, kind)()) for name, kind in PARQUET_TYPES])


# One encoder for every record (json.dumps with options builds a new one per call).
# default=str: an id column may hold dates or decimals, which JSON has no type for.
_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str)
_ASCII_ENCODER = json.JSONEncoder(ensure_ascii=True, default=str)
_quote = json.encoder.encode_basestring  # what that encoder does to a string

