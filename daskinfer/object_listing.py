"""A bucket prefix listed while it is scored. Object stores list keys in sorted order, a
page of a thousand at a time: a background thread lists the pages from before the cluster
starts, and the first partitions are cut from the first pages, so the first results reach
the output within seconds whatever the bucket's size, in the same sorted order.

The listing fills a Listing's columns as it goes; whatever needs it whole (a count, a
digest, the ledger, a sample) waits for the end of the listing.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from array import array
from typing import Any, Callable, Iterator, List, Mapping, Optional, Tuple

import numpy as np

from daskinfer import compat, storage
from daskinfer.errors import RunFailed
from daskinfer.folder_walk import version_of
from daskinfer.listing import Document, Listing, NameFilter, has_objects

log = logging.getLogger("daskinfer")
CHUNK = 1000  # keys handed over at a time: a listing page's worth
AHEAD = 100  # chunks listed ahead of the scoring, at most
_END = object()


def can_stream(fs: Any) -> bool:
    return compat.pages_listable(fs)


class GrowingListing(Listing):
    """The documents under a bucket prefix, in the store's (sorted) order, listed in the
    background. stream() yields them as they are listed; every other use waits for the
    listing's end and then sees a complete Listing."""

    def __init__(self, fs: Any, root: str, url: str, glob: str, recursive: bool, include_hidden: bool = False):
        self.prefix = storage.full_uri(fs, root).rstrip("/") + "/"
        self.names: List[str] = []
        self.sizes = array("q")
        self._versions = array("q")
        self.errors: dict = {}
        self.url, self.glob, self.recursive = url, glob, recursive
        self._matches = NameFilter(glob, include_hidden)
        self.complete = False
        self.listed = 0  # by the background thread: how far the listing has got
        # Bounded: the listing runs at most AHEAD chunks ahead of the scoring, so that a
        # bucket of ten million keys never waits in the queue as Python tuples.
        self._chunks: "queue.Queue[Any]" = queue.Queue(AHEAD)
        self._started = time.monotonic()
        base = root.rstrip("/") + "/"
        thread = threading.Thread(target=self._list, args=(fs, base), name="daskinfer-listing", daemon=True)
        thread.start()
        self._first = self._wait_for_first()

    @property
    def versions(self) -> np.ndarray:
        return np.frombuffer(self._versions, dtype=np.int64) if len(self._versions) else np.zeros(0, np.int64)

    def _list(self, fs: Any, base: str) -> None:
        """In the background: the matching keys, CHUNK at a time, then _END (or the error)."""
        try:
            chunk: List[Tuple[str, int, int]] = []
            matches = self._matches
            for info in compat.list_pages(fs, base, self.recursive):
                name = info["name"][len(base):]
                if info.get("type") == "directory" or not matches(name):
                    continue
                chunk.append((name, int(info.get("size") or 0), version_of(info)))
                if len(chunk) >= CHUNK:
                    self.listed += len(chunk)
                    self._chunks.put(chunk)
                    chunk = []
            self.listed += len(chunk)
            self._chunks.put(chunk)
            self._chunks.put(_END)
        except BaseException as exc:  # handed to the reader, as storage errors are elsewhere
            self._chunks.put(exc)

    def _wait_for_first(self) -> List[Tuple[str, int, int]]:
        """The first chunk with a document in it: no document at all fails here, before any
        cluster starts, as a listing does."""
        while True:
            chunk = self._next_chunk()
            if chunk is None:
                where = f"{self.url} or its subfolders" if self.recursive else self.url
                raise FileNotFoundError(f"no files matching '{self.glob}' in {where}{self._matches.hint()}")
            if chunk:
                return chunk

    def _next_chunk(self) -> Optional[List[Tuple[str, int, int]]]:
        item = self._chunks.get()
        if item is _END:
            self.complete = True
            log.info("Listed all %d documents of %s in %.1f s", len(self.names), self.url,
                     time.monotonic() - self._started)
            self._matches.report(self.url)
            return None
        if isinstance(item, BaseException):
            with storage.storage_errors(self.url):
                raise item
        return item

    def stream(self, busy: Callable[[], bool] = lambda: False) -> Iterator[Optional[Document]]:
        """The documents as they are listed (once: the listing then stands whole). While
        the next page is not there yet and busy() says there is other work to wait for
        (results to write), a None instead of waiting for it."""
        prefix, chunk, reported = self.prefix, self._first, 0
        while chunk is not None:
            if self.names and chunk and chunk[0][0] <= self.names[-1]:
                raise RunFailed(f"{self.url}: the store listed {chunk[0][0]} after {self.names[-1]}, "
                                   "out of sorted order; list it whole with a manifest")
            for name, size, version in chunk:
                self.names.append(name)
                self.sizes.append(size)
                self._versions.append(version)
                yield Document(prefix + name, size, None, version)
            if len(self.names) - reported >= 100 * CHUNK:
                reported = len(self.names)
                log.info("Listed %d documents of %s so far", reported, self.url)
            while self._chunks.empty() and busy():
                yield None
            chunk = self._next_chunk()

    def _whole(self) -> None:
        if not self.complete:
            for _ in self.stream():
                pass

    def __bool__(self) -> bool:
        return True  # never empty (that fails at the start); and truth must not wait for the end

    def __len__(self) -> int:
        self._whole()
        return len(self.names)

    def __getitem__(self, index):
        self._whole()
        return super().__getitem__(index)

    def __iter__(self) -> Iterator[Document]:
        self._whole()
        return super().__iter__()

    def __contains__(self, uri: object) -> bool:
        self._whole()
        return super().__contains__(uri)

    def digest_rows(self) -> Iterator[Tuple[str, int]]:
        self._whole()
        return super().digest_rows()

    @property
    def total_bytes(self) -> int:
        self._whole()
        return super().total_bytes


def open_listing(url: str, glob: str, recursive: bool, storage_options: Optional[Mapping[str, Any]],
                 include_hidden: bool = False) -> Optional[GrowingListing]:
    """A listing streamed from url, when url is a prefix of a store that lists in pages
    (S3); None otherwise (the caller lists it whole)."""
    fs, root = storage.filesystem(url, storage_options)
    if storage.is_local(fs) or not can_stream(fs):
        return None
    with storage.storage_errors(url):
        if fs.isfile(root) or not has_objects(fs, root):
            return None  # a single object, or an empty or missing prefix: listed whole, as before
        return GrowingListing(fs, root, url, glob, recursive, include_hidden)
