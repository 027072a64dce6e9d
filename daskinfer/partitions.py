"""Document files grouped into partitions: consecutive runs of the sorted inputs, capped by
count and bytes. A partition is one scoring task; on its worker it reads its files and
hands their texts to the model (texts)."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from daskinfer import evaluation, reading, storage
from daskinfer.errors import first_line, this_worker
from daskinfer.listing import Document, Listing

if TYPE_CHECKING:
    from daskinfer.predict import Scored, Settings, Text


def partition_size(n_docs: int, n_threads: int, configured: Optional[int], cap: int = 2000) -> int:
    """Documents per partition: as configured, else n_docs shared evenly among a multiple
    of n_threads partitions, at least four per thread, at most cap documents each.

    Several partitions per thread balance the load and let results reach the output
    early. A count that is a multiple of the threads has them all start their last
    partition together, rather than one thread scoring the odd one out while the others
    wait (2,000 documents are ten seconds of a transformer on one core). The cap keeps
    each task short and its result small.
    """
    if configured:
        return configured
    threads = max(1, n_threads)
    per_thread = max(4, math.ceil(n_docs / (cap * threads)))
    return max(1, math.ceil(n_docs / (per_thread * threads)))


FIRST_PARTITION = 64  # documents in a run's first partition: its first result waits for these


def partition_sizes(count: Callable[[], int], n_threads: int, configured: Optional[int]) -> Callable[[], int]:
    """Documents per partition, asked at each cut: as configured, else FIRST_PARTITION
    documents first, then what is left shared evenly (partition_size). count() may grow
    while a bucket is listed.

    The first result reaches the output once a few dozen documents are scored, not a
    whole partition's worth (2,000 documents take a transformer's thread ten seconds,
    and on S3 many requests). Only the first partition is small: length-aware batching
    needs many documents to find similar lengths, and a transformer scores partitions of
    64 documents at under a third of its rate on partitions of 2,000 (benchmarks/README).
    """
    if configured:
        return lambda: configured
    first: List[int] = []

    def size() -> int:
        if not first:
            first.append(min(FIRST_PARTITION, partition_size(count(), n_threads, None)))
            return first[0]
        return partition_size(count() - first[0], n_threads, None)

    return size


class Partition(Sequence[Document]):
    """A partition's documents as parallel columns. The scheduler unpickles every task it
    is sent: a thousand plain strings load in a tenth of the time that a thousand Document
    objects do."""

    __slots__ = ("uris", "sizes", "errors", "versions")

    def __init__(self, uris: List[str], sizes: List[int], errors: Optional[dict] = None,
                 versions: Optional[List[int]] = None):
        self.uris, self.sizes, self.errors = uris, sizes, errors or {}  # errors: index -> reason
        self.versions = versions if versions is not None else [0] * len(uris)  # as listed; 0: not known

    def __len__(self) -> int:
        return len(self.uris)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return Document(self.uris[index], self.sizes[index], self.errors.get(index), self.versions[index])

    def __iter__(self) -> Iterator[Document]:
        errors = self.errors
        return (Document(uri, size, errors.get(i) if errors else None, version)
                for i, (uri, size, version) in enumerate(zip(self.uris, self.sizes, self.versions)))

    def __reduce__(self):
        return Partition, (self.uris, self.sizes, self.errors, self.versions)

    @classmethod
    def of(cls, docs: Iterable[Document]) -> "Partition":
        part = cls([], [])
        for doc in docs:
            part.append(doc)
        return part

    def append(self, doc: Document) -> None:
        if doc.error:
            self.errors[len(self.uris)] = doc.error
        self.uris.append(doc.uri)
        self.sizes.append(doc.size)
        self.versions.append(doc.version)

    def singles(self) -> List[Tuple[str, "Partition"]]:
        """Each document as a partition of its own, with its key (scheduling.Runner scores
        them so when a partition's workers died)."""
        return [(doc.uri, Partition.of([doc])) for doc in self]

    def texts(self, settings: Settings, out: Scored) -> List[Text]:
        """On the worker: read and decode the files; what cannot be read goes to out's errors."""
        from daskinfer.predict import Text

        seen: dict = {}
        raw = reading.read_all(self, settings.storage_options, settings.max_document_bytes, seen)
        # A file that is not what was listed: the ledger records what was read (an incremental
        # run must not carry a score of other content as unchanged)
        out.read_as += [(self.uris[i], *read) for i, read in seen.items()
                        if self.versions[i] and read[0] >= 0 and read != (self.sizes[i], self.versions[i])]
        for uri, data in zip(self.uris, raw):
            if isinstance(data, Exception) and storage.is_connection_error(data):
                # The storage is down, not the document: the whole unit fails, and the run
                # stops as incomplete (resumable) rather than filing every document as an error.
                raise ConnectionError(f"cannot reach the storage for {uri}: {first_line(data)}")
        _check_inputs_seen(self, raw)
        ready = []
        for position, (uri, data) in enumerate(zip(self.uris, raw)):
            text = reading.decode(data, settings.encoding)
            if isinstance(text, str):
                label = evaluation.true_label(uri, settings.labels, settings.labels_from) if out.tally else None
                ready.append(Text(uri, text, position, label))
            else:
                out.fail(position, uri, text)
        return ready


def _check_inputs_seen(part: Partition, raw: Sequence[Any]) -> None:
    """A worker that cannot see the local files the driver listed (a VM without the folder, or
    with another disk mounted there) would file every one of its documents as not found; so
    a partition of local files all missing, or one missing from a folder this worker does not
    have, stops the run as incomplete (resumable), naming the worker, like storage gone away."""
    # listed: seen by the driver's listing (a size); a manifest's entries may name files to come
    listed = [i for i in range(len(part)) if i not in part.errors and part.sizes[i] >= 0]
    missing = [i for i in listed if isinstance(raw[i], FileNotFoundError)]
    if not missing or storage.protocol_of(part.uris[missing[0]]) is not None:
        return
    example = part.uris[missing[0]]
    if (len(missing) == len(listed) > 1) or not os.path.isdir(os.path.dirname(example)):
        raise ConnectionError(
            f"{this_worker()} does not find the input files the driver listed ({len(missing)} of {len(listed)} of a "
            f"partition, e.g. {example}): deleted since, or not at that path on this worker; run the workers where "
            "the inputs are, at the same path, or put them on shared storage (s3://...)")


def group(docs: Iterable[Optional[Document]], max_docs: Union[int, Callable[[], int]], max_bytes: int
          ) -> Iterator[Optional[Partition]]:
    """Consecutive runs of docs, each at most max_docs files and (beyond one file) max_bytes.
    max_docs may be a function, asked at each cut (a listing still growing); a None among
    docs (nothing listed yet) is passed on as a None among the partitions."""
    limit = max_docs if callable(max_docs) else lambda: max_docs
    if isinstance(docs, Listing):
        yield from _cut_listing(docs, limit, max_bytes)
        return
    batch = Partition([], [])
    batch_bytes, size = 0, limit()
    for doc in docs:
        if doc is None:  # a growing listing has nothing more for now: say so, keep the batch
            yield None
            continue
        if batch.uris and (len(batch) >= size or batch_bytes + doc.size > max_bytes):
            yield batch
            batch, batch_bytes, size = Partition([], []), 0, limit()
        batch.append(doc)
        batch_bytes += max(doc.size, 0)  # -1: unknown (a manifest's entries)
    if batch.uris:
        yield batch


def _cut_listing(listing: Listing, max_docs: Callable[[], int], max_bytes: int) -> Iterator[Partition]:
    """What group() makes of a whole listing, cut from its columns: no Document objects,
    which cost the driver more than anything else per document."""
    names, sizes, prefix, errors = listing.names, listing.sizes, listing.prefix, listing.errors
    start = 0
    while start < len(names):
        limit = min(len(names), start + max_docs())
        listing.sized(start, limit)
        stop, total = start + 1, sizes[start]
        while stop < limit and total + sizes[stop] <= max_bytes:
            total += sizes[stop]
            stop += 1
        failed = {i - start: errors[names[i]] for i in range(start, stop) if names[i] in errors} if errors else None
        yield Partition([prefix + name for name in names[start:stop]], sizes[start:stop].tolist(), failed,
                        listing.versions[start:stop].tolist())
        start = stop
