"""Carrying an incremental run's unchanged documents: their lines from the previous run's
results and errors, copied byte for byte as their turn in the output comes. Both previous
files are read once, front to back, beside the output being written: the driver never
holds them whole."""

from __future__ import annotations

import json
from typing import Any, Container, Dict, List, Mapping, Optional, Sequence, Tuple

from daskinfer import evaluation, ledger, records, storage
from daskinfer.errors import RunFailed
from daskinfer.incremental import Previous


Lines = List[Tuple[bytes, Dict[str, Any]]]


def _by_key(scored: Optional[records.PartitionResult]) -> Dict[str, List[Tuple[bytes, Dict[str, Any], bool]]]:
    """A worker's result as {filepath: [(line, record, whether an error entry)]}: a path a
    manifest lists twice has its record and the repeat's error entry. Keyed by the name as
    Parquet holds it (records.utf8_name), which the name in a JSONL line also gives."""
    found: Dict[str, List[Tuple[bytes, Dict[str, Any], bool]]] = {}
    if scored is None:
        return found
    if isinstance(scored.results, bytes):
        for line in scored.results.splitlines(keepends=True):
            record = json.loads(line)
            found.setdefault(records.utf8_name(record["filepath"]), []).append((line, record, False))
    elif scored.results is not None:  # Parquet output: the records as columns
        for record in scored.results.to_pylist():
            found.setdefault(record["filepath"], []).append((b"", record, False))
    for line in (scored.errors or b"").splitlines(keepends=True):
        entry = json.loads(line)
        found.setdefault(records.utf8_name(entry["filepath"]), []).append((line, entry, True))
    return found


class _Record(dict):
    """A line of the previous output, read only as far as asked: the filepath, the score and
    the label are cut from the line as daskinfer writes it, several times faster than
    json.loads; anything else (or a line written otherwise) parses it whole."""

    def __init__(self, raw: bytes):
        super().__init__()
        self.text = raw.decode("utf-8")

    def __missing__(self, key: str) -> Any:
        try:
            if key in ("filepath", "sentiment"):
                start = self.text.index(f'"{key}": "') + len(key) + 5
                value: Any = _scanstring(self.text, start)[0]
            elif key == "logit_prob":
                start = self.text.index('"logit_prob": ') + 14
                value = float(self.text[start:self.text.index(",", start)])
            else:
                raise ValueError(key)
        except ValueError:
            self.update(json.loads(self.text))
            return dict.__getitem__(self, key)
        self[key] = value
        return value

    def whole(self) -> Dict[str, Any]:
        return json.loads(self.text)


_scanstring = json.decoder.scanstring  # what json.loads reads a string with (C)


class Carrier:
    """The previous run's lines of the carried documents, in output order: both previous
    files are read once, front to back, skipping the lines of what is scored anew."""

    def __init__(self, previous: Previous, storage_options: Mapping[str, Any], tables: bool,
                 labels: Sequence[str], labels_from: Optional[str], output_format: str):
        self.results = _Lines(previous.results, storage_options, tables)
        self.errors = _Lines(previous.errors, storage_options, tables)
        self.tables, self.labels, self.labels_from = tables, tuple(labels), labels_from
        self.output_format = output_format

    def take(self, span: Sequence[Tuple[str, int]], scored: Optional[records.PartitionResult],
             done: Container[str] = ()) -> Tuple[records.PartitionResult, int]:
        """A unit's output: its documents ((uri, plan flags) each, in order) with the lines of
        the carried ones copied and those of the scored ones (flags 0) from scored, the
        worker's result; and how many lines it left out as already in the output (done, on a
        resume: a carried table's rows, which the unit did not count as done)."""
        fresh = _by_key(scored)
        predicted: Lines = []
        failed: Lines = []
        carried: List[Dict[str, Any]] = []
        for uri, flags in span:
            if not flags:
                line, record, error = fresh[records.utf8_name(uri)].pop(0)
                (failed if error else predicted).append((line, record))
                continue
            found = self.results.take(uri) if flags & ledger.IN_RESULTS else []
            predicted += found
            failed += self.errors.take(uri) if flags & ledger.IN_ERRORS else []
            carried += [record for _, record in found]
        before = len(predicted) + len(failed)
        if done:
            predicted = [line for line in predicted if line[1]["filepath"] not in done]
            failed = [line for line in failed if line[1]["filepath"] not in done]
            carried = [record for record in carried if record["filepath"] not in done]
        n_scored = scored.documents if scored is not None else 0
        tally = scored.tally if scored is not None else None
        if self.labels_from and not self.tables:  # a table's labels are in its rows, not read again
            tally = tally or evaluation.Tally(self.labels)
            for record in carried:
                tally.add(evaluation.true_label(record["filepath"], self.labels, self.labels_from), record["sentiment"])
        records_ = [record for _, record in predicted]
        results = b"".join(line for line, _ in predicted)
        if self.output_format == "parquet":
            whole = [record.whole() if isinstance(record, _Record) else record for record in records_]
            results = records.parquet_table(whole) if whole else None
        return records.PartitionResult(
            results, b"".join(line for line, _ in failed), len(predicted), len(failed), tally,
            scored.worker if scored is not None else "", records.stats(records_, [entry for _, entry in failed]),
            carried=len(predicted) + len(failed) - n_scored, read_as=scored.read_as if scored is not None else ()
        ), before - len(predicted) - len(failed)

    def close(self) -> None:
        self.results.close()
        self.errors.close()


class _Lines:
    """A JSONL file of the previous run, read forward a document at a time."""

    def __init__(self, uri: str, storage_options: Mapping[str, Any], tables: bool):
        self.uri, self.tables = uri, tables
        fs, path = storage.filesystem(uri, storage_options)
        with storage.storage_errors(uri, "the previous run's "):
            self.file = fs.open(path, "rb") if fs.exists(path) else None
        self.ahead: Optional[Tuple[bytes, Dict[str, Any], str]] = None

    def take(self, doc: str) -> List[Tuple[bytes, Dict[str, Any]]]:
        """The lines of doc: the next line of it (a document file has one), or the next run
        of lines of it (a table's rows); the lines before it are of documents not carried."""
        while True:
            line = self._peek()
            if line is None:
                raise RunFailed(f"the previous results {self.uri} do not hold {doc}, which their ledger lists: "
                                "they were changed after that run; set inference.incremental_rescore=true")
            if line[2] == doc:
                break
            self.ahead = None
        taken = []
        while line is not None and line[2] == doc:
            taken.append(line[:2])
            self.ahead = None
            if not self.tables:
                break
            line = self._peek()
        return taken

    def _peek(self) -> Optional[Tuple[bytes, Dict[str, Any], str]]:
        if self.ahead is None and self.file is not None:
            raw = self.file.readline()
            if raw:
                if not raw.endswith(b"\n"):  # the last line: whole, or cut short by whatever changed the file
                    raw += b"\n"
                    try:
                        json.loads(raw)
                    except ValueError:
                        raise RunFailed(f"the previous results {self.uri} end in a line cut short: they were "
                                        "changed after that run; set inference.incremental_rescore=true") from None
                record = _Record(raw)
                self.ahead = (raw, record, ledger.doc_of(record["filepath"], self.tables))
        return self.ahead

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
