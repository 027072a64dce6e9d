"""Inputs: list the documents once on the driver, group them into partitions, read a
partition's files together on a worker. Everything goes through fsspec, so a local
folder, s3:// and any other fsspec URL behave the same."""

from __future__ import annotations

import contextlib
import fnmatch
import json
import math
import os
import posixpath
from array import array
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import fsspec
import numpy as np
from fsspec.spec import AbstractFileSystem

from daskinfer.errors import RunFailed, first_line


@dataclass(frozen=True)
class Document:
    """One input file: its full path or URI (as written in the results), its size (-1 when
    not known, as for a manifest's entries), and why it is not to be read, if it is not."""

    uri: str
    size: int
    error: Optional[str] = None


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
        # numpy sorts the names as Python objects but keeps the order as machine integers:
        # for a million names half the time and 23 MiB less than sorted(range(n), key=...),
        # which makes an int object per document.
        order = np.argsort(np.array(names, dtype=object), kind="stable")
        self.prefix = prefix
        self.names = [names[i] for i in order]
        self.sizes = array("q", np.asarray(sizes, dtype=np.int64)[order].tobytes())

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return Document(self.prefix + self.names[index], self.sizes[index])

    def __iter__(self) -> Iterator[Document]:
        prefix = self.prefix
        return (Document(prefix + name, size) for name, size in zip(self.names, self.sizes))

    def partitions(self, max_docs: int, max_bytes: int) -> Iterator["Partition"]:
        """What group() makes of the whole listing, cut from its columns: no Document
        objects, which cost the driver more than anything else per document."""
        names, sizes, prefix = self.names, self.sizes, self.prefix
        start = 0
        while start < len(names):
            stop, total = start + 1, sizes[start]
            limit = min(len(names), start + max_docs)
            while stop < limit and total + sizes[stop] <= max_bytes:
                total += sizes[stop]
                stop += 1
            yield Partition([prefix + name for name in names[start:stop]], sizes[start:stop].tolist())
            start = stop


def list_documents(
    url: str,
    glob: str = "*.txt",
    recursive: bool = False,
    storage_options: Optional[Mapping[str, Any]] = None,
) -> Listing:
    """Every non-folder entry under url whose name matches glob, in sorted order; url
    itself when it names a file.

    Dangling links and unreadable files are listed too: they fail when read and are
    reported then, never dropped here.
    """
    fs, root = filesystem(url, storage_options or {})
    with storage_errors(url):
        if fs.isfile(root):
            parent = fs._parent(root)
            return Listing(full_uri(fs, parent).rstrip("/") + "/", [root[len(parent):].lstrip("/")], [fs.size(root)])
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
        if not fs.isfile(root):
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


def partition_size(n_docs: int, n_threads: int, configured: Optional[int], cap: int = 2000) -> int:
    """Documents per partition: as configured, else about four partitions per thread.

    Several partitions per thread balance the load and let results reach the output
    early; the cap keeps each task short and its result small.
    """
    if configured:
        return configured
    return max(1, min(cap, math.ceil(n_docs / (4 * max(1, n_threads)))))


class Partition(Sequence[Document]):
    """A partition's documents as three parallel columns. The scheduler unpickles every
    task it is sent: a thousand plain strings load in a tenth of the time that a
    thousand Document objects do."""

    __slots__ = ("uris", "sizes", "errors")

    def __init__(self, uris: List[str], sizes: List[int], errors: Optional[dict] = None):
        self.uris, self.sizes, self.errors = uris, sizes, errors or {}

    def __len__(self) -> int:
        return len(self.uris)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return Document(self.uris[index], self.sizes[index], self.errors.get(index))

    def __iter__(self) -> Iterator[Document]:
        errors = self.errors
        return (Document(uri, size, errors.get(i) if errors else None)
                for i, (uri, size) in enumerate(zip(self.uris, self.sizes)))

    def __reduce__(self):
        return Partition, (self.uris, self.sizes, self.errors)

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


def group(docs: Iterable[Document], max_docs: int, max_bytes: int) -> Iterator[Partition]:
    """Consecutive runs of docs, each at most max_docs files and (beyond one file) max_bytes."""
    if isinstance(docs, Listing):
        yield from docs.partitions(max_docs, max_bytes)
        return
    batch = Partition([], [])
    batch_bytes = 0
    for doc in docs:
        if batch.uris and (len(batch) >= max_docs or batch_bytes + doc.size > max_bytes):
            yield batch
            batch, batch_bytes = Partition([], []), 0
        batch.append(doc)
        batch_bytes += max(doc.size, 0)  # -1: unknown (a manifest's entries)
    if batch.uris:
        yield batch


def read_all(
    docs: Sequence[Document], storage_options: Mapping[str, Any], max_bytes: int
) -> List[Union[bytes, Exception]]:
    """The bytes of each document (or the exception that stopped it), in order.

    One `cat_ranges` call per filesystem in the partition (a manifest may mix local paths
    and URIs): async stores such as s3fs fetch the objects concurrently, with no
    per-object HEAD. A document of unknown size is read up to one byte past max_bytes.
    """
    part = docs if isinstance(docs, Partition) else Partition.of(docs)
    uris, sizes, errors = part.uris, part.sizes, part.errors
    out: List[Union[bytes, Exception, None]] = [
        _not_read(errors.get(i) if errors else None, size, max_bytes) for i, size in enumerate(sizes)
    ]
    by_protocol: dict = {}
    for i, uri in enumerate(uris):
        if out[i] is None:
            by_protocol.setdefault(_protocol(uri), []).append(i)
    for protocol, wanted in by_protocol.items():
        if protocol is None:  # absolute local paths, as listings and manifests write them
            read = _read_local([uris[i] for i in wanted], [sizes[i] for i in wanted], max_bytes)
        else:
            fs, _ = filesystem(uris[wanted[0]], storage_options)
            ends = [None if sizes[i] >= 0 else max_bytes + 1 for i in wanted]
            paths = [fs._strip_protocol(uris[i]) for i in wanted]
            read = fs.cat_ranges(paths, [0] * len(paths), ends, on_error="return")
        for i, data in zip(wanted, read):
            if isinstance(data, bytes) and len(data) > max_bytes:
                data = _too_large(max_bytes)
            out[i] = data
    return out


def _protocol(uri: str) -> Optional[str]:
    protocol, sep, _ = uri.partition("://")
    return protocol if sep else None


def _read_local(paths: List[str], sizes: List[int], max_bytes: int) -> List[Union[bytes, Exception]]:
    """Local files read with plain system calls: fsspec's file objects, and even Python's
    buffered ones, cost more per small file than the model spends per document."""
    out: List[Union[bytes, Exception]] = []
    for path, size in zip(paths, sizes):
        try:
            out.append(_read_file(path, size, max_bytes + 1))
        except OSError as exc:
            out.append(exc)
    return out


def _read_file(path: str, size: int, limit: int) -> bytes:
    """Up to limit bytes of a file, asking first for its listed size (-1: unknown) and one
    byte more, so a file that grew since it was listed is still read whole.

    Exactly the listed size in one read is the file as listed: asking again would only
    confirm its end, one system call more per document. Anything else (more, or a short
    read, as network filesystems may give) reads on to the end.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks, total = [], 0
        want = size + 1 if size >= 0 else 1 << 16
        while total < limit:
            chunk = os.read(fd, min(want, limit - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total == size and len(chunks) == 1:
                break
            want = 1 << 16
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    finally:
        os.close(fd)


def _not_read(error: Optional[str], size: int, max_bytes: int) -> Optional[Exception]:
    if error:
        return ValueError(error)
    if size > max_bytes:
        return _too_large(max_bytes, size)
    return None


def _too_large(max_bytes: int, size: Optional[int] = None) -> Exception:
    what = f"{size} bytes" if size is not None else f"more than {max_bytes} bytes"
    return ValueError(f"document is {what}, above inference.max_document_bytes={max_bytes}")


class Manifest:
    """The inputs a manifest lists, in its order: one path or URI per line, or JSON lines
    with a "path" (or SageMaker's "source-ref") field. Local paths are taken from the
    current folder.

    It is meant for inputs too many to list: it is streamed again each time it is iterated
    rather than kept as Document objects; only the set of paths seen (to catch a path listed
    again: one error entry, never scored twice) stays in memory while it is read.
    """

    def __init__(self, uri: str, storage_options: Optional[Mapping[str, Any]] = None):
        self.uri, self.storage_options = uri, dict(storage_options or {})
        self.count = sum(1 for _ in self)
        if not self.count:
            raise FileNotFoundError(f"the manifest {uri} lists no inputs")

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Document]:
        seen, repeated = set(), set()
        for number, entry in self._entries():
            if entry not in seen:
                seen.add(entry)
                yield Document(entry, -1)
            elif entry not in repeated:
                repeated.add(entry)
                yield Document(entry, -1, f"listed more than once in the manifest (again at line {number}); scored once")

    def _entries(self) -> Iterator[Tuple[int, str]]:
        fs, path = filesystem(self.uri, self.storage_options)
        with storage_errors(self.uri), fs.open(path, "rt", encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                line = line.strip()
                if line:
                    yield number, _manifest_entry(line, self.uri, number)


def _manifest_entry(line: str, manifest: str, number: int) -> str:
    if line.startswith("{"):
        try:
            record = json.loads(line)
            line = record.get("path") or record["source-ref"]
        except (ValueError, KeyError, AttributeError):
            line = None
        if not isinstance(line, str):
            raise RunFailed(f"{manifest} line {number}: expected a path, or JSON with a \"path\" field")
    protocol, _ = fsspec.core.split_protocol(line)
    return line if protocol not in (None, "file", "local") else os.path.abspath(fsspec.core.strip_protocol(line))


def check_manifest(uri: str, storage_options: Optional[Mapping[str, Any]] = None) -> None:
    fs, path = filesystem(uri, storage_options or {})
    with storage_errors(uri):
        if not fs.isfile(path):
            raise FileNotFoundError(f"manifest not found: {uri}")


def _is_local(fs: AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")
