"""Sources: where a run's documents come from, each cut into the units the driver submits.

A source knows how many documents it holds (or says it learns that as it reads), and
yields Units in output order: a piece for a worker to score (a partition of document
files, a slice of a table's rows) and the data it reads, if any. The driver's loop, the
summary and the progress bar never ask which kind of source they have.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Container, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from daskinfer import object_listing, outputs, table_reading, tables
from daskinfer.listing import Document, Listing, list_documents, size_range
from daskinfer.manifest import Manifest
from daskinfer.object_listing import GrowingListing
from daskinfer.partitions import Partition, group, partition_size, partition_sizes
from daskinfer.table_source import TableSource
from daskinfer.units import NOT_YET, Unit

__all__ = ["FileSource", "NOT_YET", "Source", "TableSource", "Unit", "open_source"]


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
            streamed = object_listing.open_listing(inf.input_data_dir, glob, inf.recursive, storage_options,
                                                    inf.include_hidden)
        if streamed is None:
            folders, files = outputs.own_files(inf.output_path, storage_options)
            if inf.input_format != "files":  # a results file, or an errors.jsonl, matches *.jsonl
                files += outputs.earlier_outputs(inf.input_data_dir, storage_options)
            own = (folders, files)
            docs = list_documents(inf.input_data_dir, glob, inf.recursive, storage_options, leave_out=own,
                                  include_hidden=inf.include_hidden)
        else:
            docs = streamed
    if inf.input_format == "files":
        return FileSource(docs, inf.partition_size, inf.partition_bytes)
    if inf.input_manifest:
        tables.check_listed_once(docs)
    columns = tables.Columns(inf.text_column, inf.id_column, inf.labels_from)
    frames = [(doc.uri, table_reading.frame(doc.uri, inf.input_format, columns, storage_options,
                                            inf.partition_bytes, inf.encoding)) for doc in docs]
    return TableSource(docs, [(uri, frame) for uri, frame in frames if frame is not None], columns, inf.input_format,
                       inf.partition_size, storage_options, inf.encoding)


SPAN = 5000  # documents of an incremental run's unit, carried and scored, at most


class FileSource:
    """Document files, from a folder's listing or a manifest: counted before any work."""

    def __init__(self, docs: Union[Listing, Manifest], configured_size: Optional[int], max_bytes: int):
        self.docs, self.configured_size, self.max_bytes = docs, configured_size, max_bytes
        self.carried_before = 0  # of an incremental run resumed: the done documents carried from the previous run

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
        if skipped and carry is not None:
            self.carried_before = sum(1 for doc, flags in zip(self.docs, carry.tolist()) if flags and doc.uri in done)
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
        """Listing.digest of the inputs; None for a manifest (its entries are not sized)."""
        return self.docs.digest() if isinstance(self.docs, Listing) else None


Source = Union[FileSource, TableSource]


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
