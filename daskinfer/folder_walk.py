"""How a folder's entries are found, and what tells that a file changed: a local walk
(os.scandir: regular files only, special files and link loops reported), an object store's
listing (fsspec find), and a file's version as a number (listing.py keeps what they find)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import stat
from typing import Any, Dict, Iterator, Mapping, Optional, Set, Tuple

from fsspec.spec import AbstractFileSystem

from daskinfer import storage

log = logging.getLogger("daskinfer")


def file_version(fs: AbstractFileSystem, path: str, info: Mapping[str, Any]) -> int:
    """version_of a file fs.info described; a local file's modification time in nanoseconds
    as a folder's listing reads it (fsspec's is a float, which keeps microseconds only)."""
    if storage.is_local(fs):
        with contextlib.suppress(OSError):
            return os.stat(path).st_mtime_ns
    return version_of(info)


def version_of(info: Mapping[str, Any]) -> int:
    """What changes when a file does, as a number: the modification time in nanoseconds
    for local files; for object stores a hash of the ETag (S3, and what GCS calls md5Hash)
    or, failing that, of the modification time. An incremental run compares it, with the
    size, to what the previous run recorded."""
    for key in ("ETag", "etag", "md5Hash", "LastModified", "last_modified", "updated", "mtime", "created"):
        value = info.get(key)
        if value is not None:
            if isinstance(value, float) and key == "mtime":
                return int(value * 1e9)
            digest = hashlib.blake2b(str(value).encode(), digest_size=8).digest()
            return int.from_bytes(digest, "little", signed=True) or 1
    return 0


def walk_local(root: str, recursive: bool, errors: Dict[str, str], relative: str = "",
                seen: Optional[Set[Tuple[int, int]]] = None) -> Iterator[Tuple[str, int, int]]:
    """(path under root, size, modification time in ns) of every non-folder entry, lazily
    (os.scandir). A regular file is named only (size -1, see Listing.sized): the entry's
    type comes with its name on most file systems, so listing it costs no system call.

    Only regular files (and links to them) are documents: anything else, a FIFO that
    would block its reader for ever or a link to itself, is listed with the reason in
    errors. With recursive, a folder reached again through a link is walked once.
    """
    if seen is None:
        seen = {_identity(os.stat(root))}
    with os.scandir(os.path.join(root, relative)) as entries:
        for entry in entries:
            name = f"{relative}{entry.name}"
            try:
                info = None if entry.is_file() else entry.stat()
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    errors[name] = "a symbolic link loop, not a file"
                yield name, 0, 0  # a dangling link: listed, and reported when read
                continue
            if info is None:
                yield name, -1, 0
                continue
            if stat.S_ISDIR(info.st_mode):
                if recursive:
                    if _identity(info) in seen:  # its documents are listed once already: nothing is left out
                        log.info("Not walking %s again: a link to a folder already listed", name)
                        continue
                    seen.add(_identity(info))
                    yield from walk_local(root, recursive, errors, name + "/", seen)
                continue
            if not stat.S_ISREG(info.st_mode):
                errors[name] = f"not a regular file ({kind_of(info.st_mode)})"
            yield name, info.st_size, info.st_mtime_ns


def _identity(info: os.stat_result) -> Tuple[int, int]:
    return info.st_dev, info.st_ino


def kind_of(mode: int) -> str:
    """What a file that is neither a regular file nor a folder is, in words."""
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return "a special file"


def walk_remote(fs: AbstractFileSystem, root: str, recursive: bool) -> Iterator[Tuple[str, int, int]]:
    base = root.rstrip("/") + "/"
    found = fs.find(root, maxdepth=None if recursive else 1, withdirs=True, detail=True)
    fs.invalidate_cache(root)  # s3fs keeps every listed entry (1 KB a key) for the process's life
    for path, info in found.items():
        if info.get("type") != "directory" and path.startswith(base):
            yield path[len(base):], int(info.get("size") or 0), version_of(info)
