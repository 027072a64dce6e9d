"""Inputs: list the documents once on the driver, group them into partitions, read a
partition's files together on a worker. Everything goes through fsspec, so a local
folder, s3:// and any other fsspec URL behave the same."""

from __future__ import annotations

import contextlib
import fnmatch
import math
import os
import posixpath
from array import array
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import fsspec
from fsspec.spec import AbstractFileSystem

from daskinfer.errors import first_line


@dataclass(frozen=True)
class Document:
    """One input file: its full path or URI (as written in the results) and its size."""

    uri: str
    size: int


def filesystem(url: str, storage_options: Mapping[str, Any]) -> Tuple[AbstractFileSystem, str]:
    """The fsspec filesystem for url and the path on it (protocol stripped)."""
    return fsspec.core.url_to_fs(url, **dict(storage_options))


def full_uri(fs: AbstractFileSystem, path: str) -> str:
    """What a record calls a file: an absolute local path, or the full URI elsewhere."""
    if _is_local(fs):
        return os.path.abspath(path)
    return fs.unstrip_protocol(path)


class Listing(Sequence[Document]):
    """The sorted documents of a run, stored compactly: one shared prefix, each file's
    name after it, and the sizes in an array. A million documents take tens of MiB on
    the driver, where a million Document objects (or fsspec info dicts) take gigabytes."""

    def __init__(self, prefix: str, names: List[str], sizes: Sequence[int]):
        order = sorted(range(len(names)), key=names.__getitem__)
        self.prefix = prefix
        self.names = [names[i] for i in order]
        self.sizes = array("q", (sizes[i] for i in order))

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return Document(self.prefix + self.names[index], self.sizes[index])


def list_documents(
    url: str,
    glob: str = "*.txt",
    recursive: bool = False,
    storage_options: Optional[Mapping[str, Any]] = None,
) -> Listing:
    """Every non-folder entry under url whose name matches glob, in sorted order.

    Dangling links and unreadable files are listed too: they fail when read and are
    reported then, never dropped here.
    """
    fs, root = filesystem(url, storage_options or {})
    with storage_errors(url):
        if not _folder_exists(fs, root, url):
            entries: Iterator[Tuple[str, int]] = iter(())
        elif _is_local(fs):
            entries = _scan_local(root, recursive)
        else:
            entries = _find_remote(fs, root, recursive)
        prefix = full_uri(fs, root).rstrip("/") + "/"
        names, sizes = [], array("q")
        for relative, size in entries:
            if fnmatch.fnmatchcase(posixpath.basename(relative), glob):
                names.append(relative)
                sizes.append(size)
    if not names:
        where = f"{url} or its subfolders" if recursive else url
        raise FileNotFoundError(f"no files matching '{glob}' in {where}")
    return Listing(prefix, names, sizes)


def _scan_local(root: str, recursive: bool, relative: str = "") -> Iterator[Tuple[str, int]]:
    """(path under root, size) of every non-folder entry, lazily (os.scandir)."""
    with os.scandir(os.path.join(root, relative)) as entries:
        for entry in entries:
            name = f"{relative}{entry.name}"
            if entry.is_dir():
                if recursive:
                    yield from _scan_local(root, recursive, name + "/")
                continue
            try:
                size = entry.stat().st_size
            except OSError:  # a dangling link: listed, and reported when read
                size = 0
            yield name, size


def _find_remote(fs: AbstractFileSystem, root: str, recursive: bool) -> Iterator[Tuple[str, int]]:
    base = root.rstrip("/") + "/"
    for path, info in fs.find(root, maxdepth=None if recursive else 1, withdirs=True, detail=True).items():
        if info.get("type") != "directory" and path.startswith(base):
            yield path[len(base):], int(info.get("size") or 0)


def check_folder(url: str, storage_options: Optional[Mapping[str, Any]] = None) -> None:
    """Raise, with a one-line message, when url cannot hold any input."""
    fs, root = filesystem(url, storage_options or {})
    with storage_errors(url):
        _folder_exists(fs, root, url)


def _folder_exists(fs: AbstractFileSystem, root: str, url: str) -> bool:
    """True for a folder; raises for one that is not there. On object stores a prefix
    with no objects is no folder at all (False), and only a missing bucket is an error."""
    if fs.isdir(root):
        return True
    if _is_local(fs):
        raise FileNotFoundError(f"input folder not found: {url}")
    bucket = root.split("/", 1)[0]
    if not fs.exists(bucket):
        raise FileNotFoundError(f"bucket not found: {bucket} (input {url})")
    return False


@contextlib.contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """Storage failures as Python's own exceptions, with a one-line message naming url.

    s3fs already maps most S3 errors (FileNotFoundError, PermissionError); connection
    failures still arrive as botocore exceptions.
    """
    try:
        yield
    except FileNotFoundError:
        raise
    except PermissionError as exc:
        raise PermissionError(f"access denied to {url}: {first_line(exc)}") from None
    except Exception as exc:
        if isinstance(exc, (ConnectionError, TimeoutError)) or _is_botocore_connection_error(exc):
            raise ConnectionError(f"cannot reach the storage for {url}: {first_line(exc)}") from None
        raise


def _is_botocore_connection_error(exc: BaseException) -> bool:
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
    except ImportError:
        return False
    return isinstance(exc, BotoConnectionError)


def partition_size(n_docs: int, n_threads: int, configured: Optional[int], cap: int = 1000) -> int:
    """Documents per partition: as configured, else about four partitions per thread.

    Several partitions per thread balance the load and let results reach the output
    early; the cap keeps each task short and its result small.
    """
    if configured:
        return configured
    return max(1, min(cap, math.ceil(n_docs / (4 * max(1, n_threads)))))


def group(docs: Iterable[Document], max_docs: int, max_bytes: int) -> Iterator[List[Document]]:
    """Consecutive runs of docs, each at most max_docs files and (beyond one file) max_bytes."""
    batch: List[Document] = []
    batch_bytes = 0
    for doc in docs:
        if batch and (len(batch) >= max_docs or batch_bytes + doc.size > max_bytes):
            yield batch
            batch, batch_bytes = [], 0
        batch.append(doc)
        batch_bytes += doc.size
    if batch:
        yield batch


def read_all(
    docs: Sequence[Document], storage_options: Mapping[str, Any], max_bytes: int
) -> List[Union[bytes, Exception]]:
    """The bytes of each document (or the exception that stopped it), in order.

    One `cat_ranges` call for the whole partition: async stores such as s3fs fetch
    the objects concurrently, with no per-object HEAD after the listing. A partition's
    documents come from one listing, so they share one filesystem.
    """
    out: List[Union[bytes, Exception]] = [
        ValueError(f"document is {d.size} bytes, above inference.max_document_bytes={max_bytes}")
        for d in docs
    ]
    wanted = [i for i, d in enumerate(docs) if d.size <= max_bytes]
    if wanted:
        fs, _ = filesystem(docs[wanted[0]].uri, storage_options)
        paths = [fs._strip_protocol(docs[i].uri) for i in wanted]
        for i, data in zip(wanted, fs.cat_ranges(paths, None, None, on_error="return")):
            out[i] = data
    return out


def _is_local(fs: AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")
