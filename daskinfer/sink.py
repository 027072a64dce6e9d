"""Output on the driver: results and errors appended unit by unit, in input order, visible
under their final names only when the run completes.

Locally the files grow under a `.partial` name, flushed and fsynced as each unit is
written, and are renamed at the end; on object stores (s3://) fsspec's multipart upload
is completed only at commit (a Parquet file grows in a local spool file, uploaded then:
see parquet_stream). The commit publishes the sidecars first and the results last, so a
published results file always has its summary beside it.
"""

from __future__ import annotations

import json
import os
from typing import Any, Container, Dict, Iterable, Iterator, Mapping, Optional, Set, Tuple

from daskinfer import ledger, records, storage
from daskinfer.outputs import Claim
from daskinfer.parquet_stream import ParquetStream


class OrderedSink:
    """Appends each unit's results and errors in order; commit() publishes them.

    With resume=True it picks up what an interrupted run left: the filepaths already
    written are in `done`, and new units are appended.
    """

    def __init__(self, held: Claim, storage_options: Mapping[str, Any], resume: bool = False,
                 output_format: str = "jsonl", tables: bool = False,
                 column_types: Optional[Mapping[str, Any]] = None):
        self.claim, self.uri = held, held.output_uri
        self.fs, self.path = storage.filesystem(held.output_uri, storage_options)
        self.local = storage.is_local(self.fs)
        errors_path = storage.path_on(held.sidecars["errors"])
        stream = _LocalStream if self.local else _RemoteStream
        if output_format == "parquet":
            self.results: Any = ParquetStream(self.fs, self.path, self.local, column_types or {})
        else:
            self.results = stream(self.fs, self.path, resume)
        self.errors = stream(self.fs, errors_path, resume)
        self.done = self.results.filepaths | self.errors.filepaths
        self.notes = ledger.Notes(tables)  # where each document's lines went, for the ledger
        self.notes.add_keys(self.results.filepaths, self.errors.filepaths)

    def score_again(self, changed: Set[str]) -> None:
        """After a resume: forget what was written of documents changed since (their lines
        are dropped at once, so a later resume cannot mistake them for done)."""
        if not changed:
            return
        for stream in (self.results, self.errors):
            if isinstance(stream, _LocalStream):
                stream.forget(changed)
        self.done -= changed
        self.notes.errors -= changed
        self.notes.missing -= changed

    def write(self, part: records.PartitionResult, tables_with_results: Iterable[str] = ()) -> None:
        self.results.write(part.results, part.n_results)
        self.errors.write(part.errors, part.n_errors)
        self.notes.add(part.errors, tables_with_results, part.read_as)

    @property
    def written(self) -> int:
        return self.results.written + self.errors.written

    def settle(self, current: Container[str], in_sorted_order: bool) -> None:
        """After a resume: leave out what is no longer an input, and put the documents of
        both runs back in sorted order (each run's part is sorted already: one merge)."""
        if self.done and self.local:
            for stream in (self.results, self.errors):
                if isinstance(stream, _LocalStream):
                    stream.settle(current, in_sorted_order)

    def stats_of_all(self) -> Optional[Dict[str, Any]]:
        """After a resume that kept earlier lines (settled): records.stats of everything the
        output holds, for the drift and the report; None otherwise, where the scoring's own
        stats cover the whole output."""
        if not (self.done and isinstance(self.results, _LocalStream)):
            return None
        total = records.stats([], [])
        for stream in (self.results, self.errors):
            stream._open().flush()
            with open(stream.partial, "rb") as f:
                records.add_stats(total, records.stats_of_jsonl(f, errors=stream is self.errors))
        return total

    def commit(self, summary: Dict[str, Any], config_yaml: str, report_html: Optional[str] = None,
               ledger: Optional[bytes] = None) -> None:
        """Publish: the sidecars (written whole, then renamed), the results last."""
        sidecars = self.claim.sidecars
        self._put(sidecars["config"], config_yaml.encode("utf-8"))
        if report_html is not None and "report" in sidecars:
            self._put(sidecars["report"], report_html.encode("utf-8"))
        if ledger is not None and "ledger" in sidecars:  # a run claimed by an older daskinfer has none
            self._put(sidecars["ledger"], ledger)
        self._put(sidecars["summary"], (json.dumps(summary, indent=2) + "\n").encode())
        self.errors.publish()
        self.results.publish()
        self.claim.release(keep=False)

    def abandon(self) -> bool:
        """Stop without publishing; True when what was written stays there to resume from."""
        keep = self.local and isinstance(self.results, _LocalStream) and bool(
            self.done or self.results.began or self.errors.began)
        self.results.abandon(keep)
        self.errors.abandon(keep)
        self.claim.release(keep)
        return keep

    def _put(self, uri: str, data: bytes) -> None:
        path = storage.path_on(uri)
        if self.local:
            _write_whole(path, data)
        else:
            self.fs.pipe_file(path, data)


def _write_whole(path: str, data: bytes) -> None:
    """A file that appears whole or not at all (a full disk fails before the rename)."""
    staging = f"{path}.tmp"
    try:
        with open(staging, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(staging, path)
    except BaseException:
        if os.path.exists(staging):
            os.unlink(staging)
        raise


class _LocalStream:
    """A file growing under `<name>.partial`, renamed to its name when published."""

    def __init__(self, fs, path: str, resume: bool):
        self.path, self.partial = path, path + ".partial"
        if resume and not os.path.exists(self.partial) and os.path.exists(path):
            os.replace(path, self.partial)  # a finished run: append to it what is new
        self.filepaths, self.resumed_at = _recover(self.partial) if resume else (set(), 0)
        self.count = len(self.filepaths)
        self.written = 0
        self.began = False  # True from the first write on, before it is counted in written
        self.file = None

    def write(self, data: Optional[bytes], n: int) -> None:
        file = self._open()
        if data:
            # Set before the write: an interrupt during it or its fsync (which can take a
            # while on a busy disk) leaves lines in the file, to resume from, not to delete.
            self.began = True
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
            self.written += n
        self.count = len(self.filepaths) + self.written

    def forget(self, changed: Set[str]) -> None:
        """Rewrite what was written before without the lines of changed documents (before any
        write of this run: all of the file is the earlier runs')."""
        if not changed & self.filepaths:
            return
        kept = self.partial + ".kept"
        with open(self.partial, "rb") as old, open(kept, "wb") as out:
            for key, line in _lines(old, None, _Except(changed)):
                out.write(line)
            out.flush()
            os.fsync(out.fileno())
        os.replace(kept, self.partial)
        self.filepaths -= changed
        self.resumed_at = os.path.getsize(self.partial)
        self.count = len(self.filepaths)

    def settle(self, current: Container[str], in_sorted_order: bool) -> None:
        """Rewrite the file without lines whose document is gone, merged into sorted order."""
        stale = sum(1 for name in self.filepaths if name not in current)
        if not stale and not (in_sorted_order and self.resumed_at and self.written):
            return
        self._open().flush()
        merged = self.partial + ".merge"
        with open(self.partial, "rb") as old, open(self.partial, "rb") as new, open(merged, "wb") as out:
            new.seek(self.resumed_at)
            before = _lines(old, self.resumed_at, current)
            after = _lines(new, None, current)
            ordered = _merge(before, after) if in_sorted_order else _chain(before, after)
            for _, line in ordered:
                out.write(line)
            out.flush()
            os.fsync(out.fileno())
        self.file.close()
        os.replace(merged, self.partial)
        self.file = open(self.partial, "ab")
        self.count -= stale

    def publish(self) -> None:
        self._open().close()
        os.replace(self.partial, self.path)

    def abandon(self, keep: bool) -> None:
        if self.file is not None:
            try:
                self.file.close()
            except OSError:  # a full disk: what the buffer held is lost; a resume scores it again
                pass
            if not keep:
                os.unlink(self.partial)

    def _open(self):
        if self.file is None:
            os.makedirs(os.path.dirname(self.partial) or ".", exist_ok=True)
            self.file = open(self.partial, "ab")
        return self.file


def _lines(file, end: Optional[int], current: Container[str]) -> Iterator[Tuple[str, bytes]]:
    """(filepath, line) of the lines of file up to byte end, those still among current."""
    read = 0
    for line in file:
        if end is not None and read >= end:
            return
        read += len(line)
        key = json.loads(line)["filepath"]
        if key in current:
            yield key, line


class _Except:
    """Every filepath but those given, as a container."""

    def __init__(self, left_out: Set[str]):
        self.left_out = left_out

    def __contains__(self, key: object) -> bool:
        return key not in self.left_out


def _merge(a: Iterator[Tuple[str, bytes]], b: Iterator[Tuple[str, bytes]]):
    import heapq

    return heapq.merge(a, b, key=lambda item: item[0])


def _chain(a, b):
    yield from a
    yield from b


class _RemoteStream:
    """An object store upload (multipart) that becomes visible only when committed."""

    def __init__(self, fs, path: str, resume: bool):
        self.filepaths: set = set()
        self.count = self.written = 0
        self.file = fs.open(path, "wb", autocommit=False)

    def write(self, data: Optional[bytes], n: int) -> None:
        if data:
            self.file.write(data)
        self.written += n
        self.count = self.written

    def publish(self) -> None:
        self.file.close()
        self.file.commit()

    def abandon(self, keep: bool) -> None:
        self.file.discard()


def _recover(path: str) -> Tuple[set, int]:
    """The filepaths of the complete lines of a JSONL file cut short by a crash, and where
    they end; the torn last line, if any, is truncated away so that appending continues
    cleanly."""
    if not os.path.exists(path):
        return set(), 0
    filepaths, good_end = set(), 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                filepaths.add(json.loads(line)["filepath"])
            except (ValueError, KeyError, TypeError):
                break
            good_end += len(line)
    with open(path, "ab") as f:
        f.truncate(good_end)
    return filepaths, good_end

