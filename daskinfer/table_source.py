"""The source of table rows: the tables' partitions read on the workers, in order, cut and
gathered into units on the driver (sources.open_source makes it; tables.py has its pieces)."""

from __future__ import annotations

from typing import Any, Container, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from daskinfer import records, table_reading, table_sampling, tables
from daskinfer.errors import RunFailed, root_cause
from daskinfer.listing import Document, Listing
from daskinfer.manifest import Manifest
from daskinfer.partitions import partition_sizes
from daskinfer.units import Unit


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
        """Units of the tables' rows in order, each of about as many rows as a folder's
        partition holds documents (partition_sizes, of the rows the tables hold as estimated
        from the partitions read so far), across partitions and tables. Each dask partition is
        read on a worker (two per thread read ahead: table_reading.read_ahead); its length,
        once known, decides where it is cut. In an incremental run a carried table is one
        unit, copied from the previous output."""
        carried = {doc.uri: flags for doc, flags in zip(self.docs, carry.tolist()) if flags} if carry is not None else {}
        ahead = iter(doc.uri for doc in self.docs)  # an empty table has no frame, but may be carried
        kept = [(u, frame) for u, frame in self.frames if u not in carried]
        n_parts, read = sum(frame.npartitions for _, frame in kept), [0, 0]  # rows, partitions
        size = partition_sizes(lambda: round(read[0] * n_parts / max(read[1], 1)), n_threads, self.configured_size)
        gathered, next_row = tables.Gathered(), {}
        for uri, part, length in table_reading.read_ahead(runner.client, kept, 2 * n_threads):
            if uri not in next_row:  # the first of this table's partitions
                before = list(_carried_before(uri, ahead, carried))
                if before and gathered:
                    yield Unit(*gathered.take())
                yield from before
            n_rows = self._length(runner, uri, length)
            first = next_row.get(uri, 0)
            next_row[uri], read[0], read[1] = first + n_rows, read[0] + n_rows, read[1] + 1
            yield from self._cut(runner.client, uri, part, first, n_rows, gathered, size, done)
            part.release()
            length.release()
        if gathered:
            yield Unit(*gathered.take())
        yield from _carried_before(None, ahead, carried)

    def _cut(self, client: Any, uri: str, part: Any, first: int, n_rows: int, gathered: tables.Gathered,
             size: Any, done: Container[str]) -> Iterator[Unit]:
        """A partition's rows added to gathered in slices, a unit yielded each time it holds size() rows."""
        start = 0
        while start < n_rows:
            if not gathered:
                gathered.target = size()
            stop = min(n_rows, start + gathered.target - gathered.rows)
            numbers = range(first + start, first + stop)
            skip = tuple(n for n in numbers if records.row_key(uri, n) in done) if done else ()
            frame = client.submit(tables.take_rows, part, start, stop, pure=False) if len(skip) < len(numbers) else None
            gathered.add(tables.Rows(uri, numbers.start, skip, self.columns), len(numbers), frame)
            if gathered.rows >= gathered.target:
                yield Unit(*gathered.take())
            start = stop

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
        """The tables, their bytes, and their rows as table_sampling.estimate_rows counts them (a run
        learns them only as it reads)."""
        listed = isinstance(self.docs, Listing)
        sizes = {doc.uri: doc.size for doc in self.docs} if listed else None
        uris = [uri for uri, _ in self.frames]  # the empty ones left out
        rows, exact = table_sampling.estimate_rows(uris, [sizes[u] for u in uris] if sizes else None, self.fmt,
                                           self.storage_options, self.encoding)
        return {"documents": None, "tables": len(self.docs), "rows": rows, "rows_exact": exact,
                "bytes": self.docs.total_bytes if listed else None, "sizes": {}, "skipped": {}}

    def sample(self, n: int) -> Optional[table_sampling.Sampled]:
        return table_sampling.sample([uri for uri, _ in self.frames], self.fmt, self.columns, self.storage_options,
                             self.encoding, n)

    def digest(self) -> Optional[dict]:
        """Listing.digest of the table files; None for a manifest's."""
        return self.docs.digest() if isinstance(self.docs, Listing) else None

    def output_types(self) -> Dict[str, Any]:
        return tables.output_types([frame for _, frame in self.frames], self.columns)

    def versions(self) -> Dict[str, List[int]]:
        return tables.versions([doc.uri for doc in self.docs], self.storage_options)

    def _length(self, runner: Any, uri: str, length: Any) -> int:
        """The partition's number of rows (a future); a partition that cannot be read is one line."""
        try:
            return runner.result(length)
        except (TimeoutError, ConnectionError):
            raise
        except Exception as exc:
            root = root_cause(exc)
            raise RunFailed(f"cannot read {uri}: {table_reading.explain(root, uri, self.fmt, self.storage_options)}") from None


def _carried_before(uri: Optional[str], ahead: Iterator[str], carried: dict) -> Iterator[Unit]:
    """A unit for each carried table that comes before uri (None: all that are left); ahead
    walks the tables in order, and stops after uri once it is reached."""
    for table in ahead:
        if table in carried:
            yield Unit(None, (), 0, 0, [(table, carried[table])])
        if table == uri:
            return
