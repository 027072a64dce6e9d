"""On a worker: the bytes of a partition's documents, read together (one concurrent
request per object store, plain system calls locally), and decoded to text. A document
that cannot be read or decoded gives the exception that says why, never a crash."""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple, Union

from daskinfer import storage

if TYPE_CHECKING:
    from daskinfer.partitions import Partition


def read_all(part: Partition, storage_options: Mapping[str, Any], max_bytes: int,
             seen: Optional[Dict[int, Tuple[int, int]]] = None) -> List[Union[bytes, Exception]]:
    """The bytes of each document (or the exception that stopped it), in order; into seen,
    by index, each local file's (size, modification time) as read.

    One `cat_ranges` call per filesystem in the partition (a manifest may mix local paths
    and URIs): async stores such as s3fs fetch the objects concurrently, with no
    per-object HEAD. A document of unknown size is read up to one byte past max_bytes.
    """
    uris, sizes, errors = part.uris, part.sizes, part.errors
    out: List[Union[bytes, Exception, None]] = [
        _not_read(errors.get(i) if errors else None, size, max_bytes) for i, size in enumerate(sizes)
    ]
    by_protocol: dict = {}
    for i, uri in enumerate(uris):
        if out[i] is None:
            by_protocol.setdefault(storage.protocol_of(uri), []).append(i)
    for protocol, wanted in by_protocol.items():
        if protocol is None:  # absolute local paths, as listings and manifests write them
            versions: List[Tuple[int, int]] = []
            read = _read_local([uris[i] for i in wanted], [sizes[i] for i in wanted], max_bytes, versions)
            if seen is not None:
                seen.update(zip(wanted, versions))
        else:
            read = _read_remote([uris[i] for i in wanted], [sizes[i] for i in wanted], storage_options, max_bytes)
        for i, data in zip(wanted, read):
            if isinstance(data, bytes) and len(data) > max_bytes:
                data = _too_large(max_bytes)
            out[i] = data
    return out


def _read_remote(uris: List[str], sizes: List[int], storage_options: Mapping[str, Any],
                 max_bytes: int) -> List[Union[bytes, Exception]]:
    """One cat_ranges call for the documents of one filesystem. An empty object is b"" (an
    "empty document" error entry, as a local file): S3 answers a read of one "range not
    satisfiable", which s3fs passes on as EINVAL, also where its size is unknown (a manifest's)."""
    out: List[Any] = [b"" if size == 0 else None for size in sizes]
    wanted = [i for i, data in enumerate(out) if data is None]
    if wanted:
        fs, _ = storage.filesystem(uris[wanted[0]], storage_options)
        ends = [None if sizes[i] >= 0 else max_bytes + 1 for i in wanted]
        read = fs.cat_ranges([storage.path_on(uris[i]) for i in wanted], [0] * len(wanted), ends, on_error="return")
        for i, data in zip(wanted, read):
            out[i] = b"" if isinstance(data, OSError) and "range is not satisfiable" in str(data) else data
    return out


def _read_local(paths: List[str], sizes: List[int], max_bytes: int,
                versions: List[Tuple[int, int]]) -> List[Union[bytes, Exception]]:
    """Local files read with plain system calls: fsspec's file objects, and even Python's
    buffered ones, cost more per small file than the model spends per document. versions
    gets each file's (size, modification time) as read ((-1, 0) where it was not)."""
    out: List[Union[bytes, Exception]] = []
    for path, size in zip(paths, sizes):
        try:
            data, version = _read_file(path, size, max_bytes + 1)
            out.append(data)
            versions.append(version)
        except OSError as exc:
            out.append(exc)
            versions.append((-1, 0))
    return out


def _read_file(path: str, size: int, limit: int) -> Tuple[bytes, Tuple[int, int]]:
    """Up to limit bytes of a file, asking first for its listed size (-1: unknown) and one
    byte more, so a file that grew since it was listed is still read whole.

    Exactly the listed size in one read is the file as listed: asking again would only
    confirm its end, one system call more per document. Anything else (more, or a short
    read, as network filesystems may give) reads on to the end. O_NONBLOCK: a FIFO put in
    place since the listing must not block the worker (for regular files it changes nothing).
    The file's (size, modification time) is taken once read: a file replaced since it was
    listed (a copy keeping an older time, as cp -p and rsync -a make it) is known by what was
    read, not by what was listed.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if size < 0 and not stat.S_ISREG(os.fstat(fd).st_mode):  # a manifest's entry, never checked
            raise IsADirectoryError(f"not a regular file: {path}")
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
        read = os.fstat(fd)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks), (read.st_size, read.st_mtime_ns)
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


def decode(data: Any, encoding: str) -> Any:
    """The text, or the exception that says why there is none."""
    if isinstance(data, Exception):
        return data
    if not data:
        return ValueError("empty document")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        return ValueError(f"not valid {encoding}: {exc.reason} at byte {exc.start}")
