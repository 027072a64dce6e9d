"""Incremental runs: a complete, ordered result of the inputs as they are now, scoring only
what is new or changed since a previous run (inference.incremental_from).

What changed is decided on the driver before any work, from the previous run's ledger
(ledger.py): a document whose size and version (modification time, ETag) are as recorded
keeps its previous lines, copied byte for byte from the previous results and errors as
its turn in the output comes (carrying.py); everything else is scored.
"""

from __future__ import annotations

import collections
import json
import posixpath
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from daskinfer import ledger, outputs, storage
from daskinfer.errors import ConfigError, RunFailed
from daskinfer.listing import Listing

CARRIED = 4  # in a document's plan: its lines come from the previous run (with ledger flags)
COMPARED = ("model_output", "threshold", "labels", "all_scores", "encoding", "input_format", "text_column", "id_column",
            "max_document_bytes")  # summary.json settings that change what a record says


@dataclass
class Previous:
    """A finished earlier run: its results, errors, ledger and summary."""

    results: str
    errors: str
    ledger: str
    summary: Dict[str, Any]


def locate(uri: str, storage_options: Mapping[str, Any]) -> Previous:
    """The run whose results file, or run folder, uri names; one line when there is none."""
    fs, path = storage.filesystem(uri, storage_options)
    with storage.storage_errors(uri, "inference.incremental_from "):
        if fs.isdir(path):
            entries = fs.ls(path, detail=False)
            found = [p for p in entries if p.endswith(outputs.SIDECARS["summary"])]
            if not found:
                _refuse_unfinished(uri, [p for p in entries if p.endswith(".partial")])
            if len(found) != 1:
                what = "no summary.json" if not found else "the summaries of several runs"
                raise FileNotFoundError(f"inference.incremental_from: {uri} holds {what}; name the results file")
            summary_path = found[0]
            results = posixpath.join(posixpath.dirname(summary_path),
                                     posixpath.basename(_read_summary(fs, summary_path, uri)["output"]))
        elif fs.isfile(path):
            results, summary_path = path, _summary_of(fs, path, uri)
        else:
            _refuse_unfinished(uri, [path + ".partial"] if fs.exists(path + ".partial") else [])
            raise FileNotFoundError(f"inference.incremental_from not found: {uri}")
        summary = _read_summary(fs, summary_path, uri)
        sidecars = _sidecars_like(summary_path, results)
        if results.endswith(".parquet"):
            raise ConfigError(f"inference.incremental_from: {uri} holds Parquet results; "
                              "incremental runs carry JSONL results")
        if not fs.isfile(sidecars["ledger"]):
            raise FileNotFoundError(f"inference.incremental_from: {uri} has no ledger (made by an earlier "
                                    "daskinfer): score everything once without inference.incremental_from")
    full = lambda p: storage.full_uri(fs, p)  # noqa: E731
    return Previous(full(results), full(sidecars["errors"]), full(sidecars["ledger"]), summary)


def _refuse_unfinished(uri: str, partials: List[str]) -> None:
    """An interrupted run named as the previous one: what to do, rather than "not found"."""
    if partials:
        raise FileNotFoundError(
            f"inference.incremental_from: {uri} is a run that did not finish ({posixpath.basename(partials[0])}): "
            "finish it first with inference.resume=true, or name a finished run")


def _summary_of(fs: Any, results: str, uri: str) -> str:
    """The summary beside a results file: the plain summary.json when it is this file's,
    else the one named after the file."""
    folder, name = posixpath.dirname(results), posixpath.basename(results)
    plain = posixpath.join(folder, outputs.SIDECARS["summary"])
    if fs.isfile(plain) and posixpath.basename(_read_summary(fs, plain, uri).get("output", "")) == name:
        return plain
    named = posixpath.join(folder, f"{name.rsplit('.', 1)[0]}.{outputs.SIDECARS['summary']}")
    if fs.isfile(named):
        return named
    raise FileNotFoundError(f"inference.incremental_from: no summary.json beside {uri}; was that run finished?")


def _sidecars_like(summary_path: str, results: str) -> Dict[str, str]:
    folder = posixpath.dirname(summary_path)
    prefix = posixpath.basename(summary_path)[: -len(outputs.SIDECARS["summary"])]
    return {kind: posixpath.join(folder, prefix + name) for kind, name in outputs.SIDECARS.items()}


def _read_summary(fs: Any, path: str, uri: str) -> Dict[str, Any]:
    """The summary.json at path, checked to have what an incremental run reads of it (an edited
    or foreign one is refused in one line, as one that is not JSON at all)."""
    try:
        with fs.open(path, "rb") as f:
            summary = json.loads(f.read())
    except ValueError:
        summary = None
    if not (isinstance(summary, dict) and isinstance(summary.get("output"), str)
            and all(isinstance(summary.get(key, {}), dict) for key in ("model", "settings"))):
        raise RunFailed(f"inference.incremental_from: {path} is not a daskinfer summary")
    return summary


def check_same_predictions(previous: Previous, model_sha256: Optional[str], settings: Mapping[str, Any],
                           uri: str) -> None:
    """Refuse, in one line, to carry records another model or other settings made."""
    before = previous.summary.get("model", {}).get("sha256")
    if before and model_sha256 and before != model_sha256:
        raise ConfigError(f"inference.incremental_from: {uri} was scored by another model (sha256 {before[:12]}, "
                          f"now {model_sha256[:12]}); set inference.incremental_rescore=true to score everything again")
    old = previous.summary.get("settings", {})
    changed = [f"inference.{key}={old[key]} now {settings[key]}" for key in COMPARED
               if key in old and key in settings and old[key] != settings[key]]
    if changed:
        raise ConfigError(f"inference.incremental_from: {uri} was scored with other settings ({', '.join(changed)}); "
                          "set inference.incremental_rescore=true to score everything again")


def check_carriable(previous: Previous, storage_options: Mapping[str, Any], uri: str) -> None:
    """Both files the lines are carried from are there (a run always leaves both, errors.jsonl
    empty when nothing failed): one deleted since fails now, not once the cluster has scored."""
    for kind, found in (("results", previous.results), ("errors", previous.errors)):
        fs, path = storage.filesystem(found, storage_options)
        with storage.storage_errors(found, "the previous run's "):
            if not fs.isfile(path):
                raise FileNotFoundError(
                    f"inference.incremental_from: {uri} lacks its {kind} file {posixpath.basename(path)} (deleted or "
                    "moved since?): nothing can be carried from it; set inference.incremental_rescore=true to score "
                    "everything again")


@dataclass
class Plan:
    """Per current document, in source order: 0 to score it, else CARRIED | its ledger flags."""

    carry: np.ndarray
    carried: int = 0
    removed: int = 0
    retried: int = 0

    @property
    def to_score(self) -> int:
        return len(self.carry) - self.carried


def plan(docs: Sequence[Any], read_previous: Callable[[], Iterator[ledger.Row]], retry: Optional[Mapping[str, int]],
         sorted_docs: bool) -> Plan:
    """Which documents keep their previous lines. docs: the source's documents (with uri,
    size, version, error), in output order; read_previous: the previous ledger's rows, in
    the previous output order; retry: documents whose error entries are to be tried again,
    with their number (a table's rows that failed).

    Sorted inputs (a listing) are joined with the ledger as two sorted streams, in flat
    memory; others (a manifest) through a dict of the ledger. A carried document must come
    after the one carried before it in the previous output too, so that the previous files
    are read front to back: a manifest entry that moved is scored again."""
    carry = np.zeros(len(docs), dtype=np.int8)
    counts = _Counts()
    try:
        if not sorted_docs:
            raise _Unsorted
        if isinstance(docs, Listing):
            _merge_listing(carry, docs, read_previous(), retry, counts)
        else:
            _choose(carry, _merge_join(docs, map(ledger.Row._make, read_previous()), counts), retry, counts)
    except _Unsorted:  # a ledger in another order than the listing's: join it as a dict
        carry[:], counts = 0, _Counts()
        _choose(carry, _dict_join(docs, map(ledger.Row._make, read_previous()), counts), retry, counts)
    return Plan(carry, int(np.count_nonzero(carry)), counts.previous - counts.matched, counts.retried)


class _Unsorted(Exception):
    pass


@dataclass
class _Counts:
    previous: int = 0  # rows of the previous ledger
    matched: int = 0  # of them, documents still there
    retried: int = 0


def _choose(carry: np.ndarray, pairs: Iterator[Tuple[int, Any, ledger.Row, int]], retry: Optional[Mapping[str, int]],
            counts: _Counts) -> None:
    last = -1
    for i, doc, row, position in pairs:
        if doc.error or row.size != doc.size or (row.version and doc.version and row.version != doc.version):
            continue  # changed, or an error entry made on the driver (cheap to make again)
        if row.flags & ledger.NOT_FOUND:
            continue  # not there then: it may be now
        if retry is not None and doc.uri in retry:
            counts.retried += retry[doc.uri]
            continue
        if position > last:
            carry[i] = CARRIED | row.flags
            last = position


def _merge_listing(carry: np.ndarray, listing: Listing, rows: Iterator[ledger.Row], retry: Optional[Mapping[str, int]],
                   counts: _Counts) -> None:
    """_choose(_merge_join(...)) for a listing, on its columns: no Document per file, which
    would cost more than everything else here."""
    listing.sized()
    names, prefix, errors = listing.names, listing.prefix, listing.errors
    sizes, versions = listing.sizes, memoryview(np.ascontiguousarray(listing.versions))
    i, n, before = 0, len(names), None
    for path, size, version, flags in rows:
        if before is not None and path <= before:
            raise _Unsorted
        before = path
        counts.previous += 1
        if not path.startswith(prefix):
            continue
        name = path[len(prefix):]
        while i < n and names[i] < name:
            i += 1
        if i == n or names[i] != name:
            continue
        counts.matched += 1
        if (errors and name in errors) or sizes[i] != size or (version and versions[i] and versions[i] != version):
            continue
        if retry is not None and path in retry:
            counts.retried += retry[path]
            continue
        carry[i] = CARRIED | flags


def _merge_join(docs: Sequence[Any], rows: Iterator[ledger.Row], counts: _Counts):
    """(index, document, its previous row, the row's position) of the documents in both
    sorted streams; every previous row is read, to count those gone."""
    row = next(rows, None)
    for i, doc in enumerate(docs):
        while row is not None and row.filepath < doc.uri:
            row = _advance(rows, row, counts)
        if row is not None and row.filepath == doc.uri:
            counts.matched += 1
            yield i, doc, row, counts.previous
            row = _advance(rows, row, counts)
    while row is not None:
        row = _advance(rows, row, counts)


def _advance(rows: Iterator[ledger.Row], row: ledger.Row, counts: _Counts) -> Optional[ledger.Row]:
    counts.previous += 1
    following = next(rows, None)
    if following is not None and following.filepath <= row.filepath:
        raise _Unsorted
    return following


def _dict_join(docs: Sequence[Any], rows: Iterator[ledger.Row], counts: _Counts):
    index: Dict[str, Tuple[int, ledger.Row]] = {}
    for position, row in enumerate(rows):
        index.setdefault(row.filepath, (position, row))
    counts.previous = len(index)
    for i, doc in enumerate(docs):
        found = index.pop(doc.uri, None)
        if found is not None:
            counts.matched += 1
            yield i, doc, found[1], found[0]


def failed_documents(previous: Previous, storage_options: Mapping[str, Any], tables: bool) -> Dict[str, int]:
    """The documents of the previous run's error entries (a table: any of its rows), to
    score again with inference.retry_errors, each with its number of entries: what the
    summary's `retried` counts."""
    fs, path = storage.filesystem(previous.errors, storage_options)
    with storage.storage_errors(previous.errors, "the previous run's "):
        if not fs.exists(path):
            return {}
        with fs.open(path, "rb") as f:
            return dict(collections.Counter(ledger.doc_of(json.loads(line)["filepath"], tables)
                                            for line in f if line.strip()))
