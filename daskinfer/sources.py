"""Sources: where a run's documents come from, each cut into the units the driver submits.

A source knows how many documents it holds (or says it learns that as it reads), and
yields Units in output order: a piece for a worker to score (a partition of document
files, a slice of a table's rows) and the data it reads, if any. The driver's loop, the
summary and the progress bar never ask which kind of source they have.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from typing import Any, Container, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

from daskinfer import object_listing, records, table_reading, tables
from daskinfer.errors import RunFailed, root_cause
from daskinfer.listing import Document, Listing, list_documents, size_range
from daskinfer.manifest import Manifest
from daskinfer.object_listing import GrowingListing
from daskinfer.partitions import Partition, group, partition_size, partition_sizes


def open_source(inf: Any, storage_options: dict) -> "Source":
    """The source inference.* names: a folder's listing or a manifest, of document files or
    of table files (whose schemas are read now, so a missing column fails before any work)."""
    if inf.input_manifest:
        docs: Union[Listing, Manifest] = Manifest(inf.input_manifest, storage_options)
    else:
        glob = inf.input_glob or tables.DEFAULT_GLOBS[inf.input_format]
        # A bucket is scored as it is listed, unless the run needs the whole listing first:
        # to compare it with a previous run's, or to skip what a resumed run did.
        streamed = None
        if inf.input_format == "files" and not inf.resume and not inf.incremental_from:
            streamed = object_listing.open_listing(inf.input_data_dir, glob, inf.recursive, storage_options)
        docs = list_documents(inf.input_data_dir, glob, inf.recursive, storage_options) if streamed is None else streamed
    if inf.input_format == "files":
        return FileSource(docs, inf.partition_size, inf.partition_bytes)
    if inf.input_manifest:
        tables.check_listed_once(docs)
    columns = tables.Columns(inf.text_column, inf.id_column, inf.labels_from)
    frames = [(doc.uri, table_reading.frame(doc.uri, inf.input_format, columns, storage_options,
                                            inf.partition_bytes, inf.encoding)) for doc in docs]
    return TableSource(docs, [(uri, frame) for uri, frame in frames if frame is not None], columns, inf.input_format,
                       inf.partition_size, storage_options, inf.encoding)


class Unit(NamedTuple):
    """One step of the output: piece (None when all of it was done before a resume, or is
    carried) with the data it reads, standing for `documents` inputs of which `skipped`
    were done. carried: in an incremental run, every document of the unit in order, (uri,
    plan flags) each: flags 0 for those piece scores, else its lines are copied from the
    previous run's output (see carrying.py)."""

    piece: Any
    data: Tuple[Any, ...]
    documents: int
    skipped: int
    carried: Optional[List[Tuple[str, int]]] = None


# No unit ready yet (a bucket still being listed): the runner writes what it has meanwhile.
NOT_YET = Unit(None, (), 0, 0)
SPAN = 5000  # documents of an incremental run's unit, carried and scored, at most


class FileSource:
    """Document files, from a folder's listing or a manifest: counted before any work."""

    def __init__(self, docs: Union[Listing, Manifest], configured_size: Optional[int], max_bytes: int):
        self.docs, self.configured_size, self.max_bytes = docs, configured_size, max_bytes

    @property
    def count(self) -> Optional[int]:
        return None if self._streaming else len(self.docs)

    def describe(self) -> str:
        return "the documents as they are listed" if self._streaming else f"{len(self.docs)} documents"

    @property
    def _streaming(self) -> bool:
        return isinstance(self.docs, GrowingListing) and not self.docs.complete

    tables = False  # a record's filepath is its document

    def documents(self) -> Iterable[Document]:
        return self.docs

    def units(self, runner: Any, done: Container[str], n_threads: int, carry: Optional[Sequence[int]] = None
              ) -> Iterator[Unit]:
        """The units in output order: what was done before a resume first (it is in the
        output already), then partitions to score and, in an incremental run, the runs of
        carried documents between them (carry: per document, 0 or its plan flags)."""
        if self._streaming and not done and carry is None:
            listing = self.docs
            size = partition_sizes(lambda: listing.listed, n_threads, self.configured_size)
            for part in group(listing.stream(lambda: runner.busy), size, self.max_bytes):
                yield NOT_YET if part is None else Unit(part, (), len(part), 0)
            return
        skipped = sum(1 for doc in self.docs if doc.uri in done) if done else 0
        if skipped:
            yield Unit(None, (), skipped, skipped)
        if carry is None:
            docs = (doc for doc in self.docs if doc.uri not in done) if done else self.docs
            size = partition_sizes(lambda: len(self.docs) - skipped, n_threads, self.configured_size)
            for part in group(docs, size, self.max_bytes):
                yield Unit(part, (), len(part), 0)
            return
        flags_of = carry.tolist()
        to_score = sum(1 for doc, flags in zip(self.docs, flags_of) if not flags and doc.uri not in done)
        size = partition_size(to_score, n_threads, self.configured_size)
        yield from _spans(((doc, flags) for doc, flags in zip(self.docs, flags_of) if doc.uri not in done),
                          size, self.max_bytes)

    def pieces(self, n_threads: int) -> Iterator[Tuple[Any, Tuple[Any, ...]]]:
        """Every piece with its data, for a notebook's bag."""
        size = partition_size(len(self.docs), n_threads, self.configured_size)
        return ((part, ()) for part in group(self.docs, size, self.max_bytes))

    def __contains__(self, key: object) -> bool:
        return key in self.docs if isinstance(self.docs, Listing) else True

    @property
    def sorted(self) -> bool:
        """Whether the documents come in sorted order (a listing's; a manifest's is its own)."""
        return isinstance(self.docs, Listing)

    @property
    def in_key_order(self) -> bool:
        """Whether the output's order is the sorted order of its filepaths (a listing's)."""
        return isinstance(self.docs, Listing)

    def profile(self, max_bytes: int) -> dict:
        """For a dry run: count, bytes, sizes by powers of four, and what would be error
        entries, and why (a manifest's entries are not sized: count only)."""
        if not isinstance(self.docs, Listing):
            return {"documents": len(self.docs), "bytes": None, "sizes": {}, "skipped": {}}
        sizes: dict = {}
        skipped: dict = {}
        for name, size in self.docs.digest_rows():
            why = self.docs.errors.get(name) or ("above inference.max_document_bytes" if size > max_bytes else
                                                 "empty document" if size == 0 else None)
            if why:
                skipped[why] = skipped.get(why, 0) + 1
            low = 0 if size < 1024 else 1024 * 4 ** int(math.log(size / 1024, 4))
            sizes[low] = sizes.get(low, 0) + 1
        return {"documents": len(self.docs), "bytes": self.docs.total_bytes,
                "sizes": {size_range(low): n for low, n in sorted(sizes.items())}, "skipped": skipped}

    def sample(self, n: int) -> Optional[Partition]:
        """Up to n documents spread evenly over a listing (a manifest: its first ones)."""
        if isinstance(self.docs, Listing):
            step = max(1, len(self.docs) // n)
            return Partition.of(self.docs[i] for i in range(0, len(self.docs), step))
        return Partition.of(itertools.islice(iter(self.docs), n))

    def digest(self) -> Optional[dict]:
        """count, bytes and a sha256 of the sorted names with their sizes: the same inputs
        give the same digest on any machine. None for a manifest (its entries are not sized)."""
        if not isinstance(self.docs, Listing):
            return None
        sha = hashlib.sha256()
        for name, size in self.docs.digest_rows():
            sha.update(f"{name}\t{size}\n".encode("utf-8", "surrogateescape"))
        return {"count": len(self.docs), "bytes": self.docs.total_bytes, "sha256": sha.hexdigest()}


class TableSource:
    """Rows of table files, read by dask's readers on the workers: a table's row count is
    learned as its partitions are read, so the count is None until the end."""

    def __init__(self, docs: Union[Listing, Manifest], frames: List[Tuple[str, Any]], columns: tables.Columns,
                 fmt: str, configured_size: Optional[int], storage_options: Optional[dict] = None,
                 encoding: str = "utf-8"):
        self.docs, self.frames, self.columns, self.fmt = docs, frames, columns, fmt
        self.configured_size, self.storage_options, self.encoding = configured_size, storage_options or {}, encoding

    count: Optional[int] = None
    tables = True  # a record's filepath is `<table>#<row>`; a table file is the document

    def documents(self) -> Iterable[Document]:
        return self.docs

    @property
    def sorted(self) -> bool:
        return isinstance(self.docs, Listing)

    def describe(self) -> str:
        return f"the rows of {len(self.frames)} {self.fmt} file(s)"

    def units(self, runner: Any, done: Container[str], n_threads: int, carry: Optional[Sequence[int]] = None
              ) -> Iterator[Unit]:
        """One unit per slice of rows. Each dask partition is read on a worker (two per thread
        read ahead: table_reading.read_ahead); its length, once known, decides the slices. In
        an incremental run a carried table is one unit, copied from the previous output."""
        carried = {doc.uri: flags for doc, flags in zip(self.docs, carry.tolist()) if flags} if carry is not None else {}
        ahead = iter(doc.uri for doc in self.docs)  # an empty table has no frame, but may be carried
        client, next_row = runner.client, {}
        kept = [(u, frame) for u, frame in self.frames if u not in carried]
        for uri, part in table_reading.read_ahead(client, kept, 2 * n_threads):
            if uri not in next_row:  # the first of this table's partitions
                yield from _carried_before(uri, ahead, carried)
            n_rows = self._length(runner, uri, part)
            first = next_row.get(uri, 0)
            next_row[uri] = first + n_rows
            per_slice = self.configured_size or partition_size(n_rows, n_threads, None)
            for rows in tables.slices(n_rows, per_slice):
                numbers = range(first + rows.start, first + rows.stop)
                skip = tuple(n for n in numbers if records.row_key(uri, n) in done) if done else ()
                if len(skip) == len(rows):
                    yield Unit(None, (), len(rows), len(skip))
                    continue
                piece = client.submit(tables.take_rows, part, rows.start, rows.stop, pure=False)
                yield Unit(tables.Rows(uri, numbers.start, skip, self.columns), (piece,), len(rows), len(skip))
            part.release()
        yield from _carried_before(None, ahead, carried)

    def pieces(self, n_threads: int) -> Iterator[Tuple[Any, Tuple[Any, ...]]]:
        """A piece per dask partition, for a notebook's bag; the row numbers need every
        partition's length first, so the tables are read once more to count them."""
        import dask

        parts = [(uri, part) for uri, frame in self.frames for part in frame.to_delayed()]
        lengths = dask.compute(*[dask.delayed(len)(part) for _, part in parts])
        next_row: dict = {}
        for (uri, part), n_rows in zip(parts, lengths):
            first = next_row.get(uri, 0)
            next_row[uri] = first + n_rows
            yield tables.Rows(uri, first, (), self.columns), (part,)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.rpartition("#")[0] in {uri for uri, _ in self.frames}

    in_key_order = False  # rows are numbered, and "t#10" sorts before "t#9"

    def profile(self, max_bytes: int) -> dict:
        """The tables, their bytes, and their rows as tables.estimate_rows counts them (a run
        learns them only as it reads)."""
        listed = isinstance(self.docs, Listing)
        sizes = {doc.uri: doc.size for doc in self.docs} if listed else None
        uris = [uri for uri, _ in self.frames]  # the empty ones left out
        rows, exact = tables.estimate_rows(uris, [sizes[u] for u in uris] if sizes else None, self.fmt,
                                           self.storage_options, self.encoding)
        return {"documents": None, "tables": len(self.docs), "rows": rows, "rows_exact": exact,
                "bytes": self.docs.total_bytes if listed else None, "sizes": {}, "skipped": {}}

    def sample(self, n: int) -> Optional[tables.Sampled]:
        return tables.sample([uri for uri, _ in self.frames], self.fmt, self.columns, self.storage_options,
                             self.encoding, n)

    def digest(self) -> Optional[dict]:
        return None

    def output_types(self) -> Dict[str, Any]:
        return tables.output_types([frame for _, frame in self.frames], self.columns)

    def versions(self) -> Dict[str, List[int]]:
        return tables.versions([doc.uri for doc in self.docs], self.storage_options)

    def _length(self, runner: Any, uri: str, part: Any) -> int:
        try:
            return runner.result(runner.client.submit(len, part))
        except (TimeoutError, ConnectionError):
            raise
        except Exception as exc:
            root = root_cause(exc)
            raise RunFailed(f"cannot read {uri}: {table_reading.explain(root, uri, self.fmt, self.storage_options)}") from None


Source = Union[FileSource, TableSource]


def _carried_before(uri: Optional[str], ahead: Iterator[str], carried: dict) -> Iterator[Unit]:
    """A unit for each carried table that comes before uri (None: all that are left); ahead
    walks the tables in order, and stops after uri once it is reached."""
    for table in ahead:
        if table in carried:
            yield Unit(None, (), 0, 0, [(table, carried[table])])
        if table == uri:
            return


def _spans(docs: Iterable[Tuple[Document, int]], size: int, max_bytes: int) -> Iterator[Unit]:
    """An incremental run's units: consecutive documents, carried or not, with the ones to
    score in them as one partition. A few changed documents scattered among many carried
    ones are then scored a partition at a time, not a task each."""
    span: List[Tuple[str, int]] = []
    part, part_bytes = Partition([], []), 0
    for doc, flags in docs:
        if not flags and part.uris and (len(part) >= size or part_bytes + doc.size > max_bytes):
            yield Unit(part, (), len(span), 0, span)
            span, part, part_bytes = [], Partition([], []), 0
        span.append((doc.uri, flags))
        if not flags:
            part.append(doc)
            part_bytes += max(doc.size, 0)
        elif len(span) >= SPAN:
            yield Unit(part if part.uris else None, (), len(span), 0, span)
            span, part, part_bytes = [], Partition([], []), 0
    if span:
        yield Unit(part if part.uris else None, (), len(span), 0, span)
