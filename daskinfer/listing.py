"""What the input documents are: a folder's (or bucket prefix's) files, listed once on the
driver into a compact sorted Listing. A file that cannot be a document (a FIFO, a link
loop) is listed with the reason, to become an error entry; it never stops the listing."""

from __future__ import annotations

import bisect
import fnmatch
import hashlib
import logging
import os
import re
from array import array
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from fsspec.spec import AbstractFileSystem

from daskinfer import compat, storage
from daskinfer.folder_walk import file_version, walk_local, walk_remote

log = logging.getLogger("daskinfer")


@dataclass(frozen=True)
class Document:
    """One input file: its full path or URI (as written in the results), its size (-1 when
    not known, as for a manifest's entries), and why it is not to be read, if it is not."""

    uri: str
    size: int
    error: Optional[str] = None
    version: int = 0  # what changes when the file does (folder_walk.version_of); 0: not known


class Listing(Sequence[Document]):
    """The sorted documents of a run, stored compactly: one shared prefix, each file's
    name after it, and the sizes in an array. A million documents take tens of MiB on
    the driver, where a million Document objects (or fsspec info dicts) take gigabytes.

    A local folder is listed by name alone: its files' sizes and versions are -1 and 0
    until something needs them, and then read with one stat() each (see sized()), a
    partition's worth at a time as a run cuts them, so the first partition does not wait
    for a million stat() calls."""

    _unsized = False  # whether some sizes may still be -1: not stat()ed yet

    def __init__(self, prefix: str, names: List[str], sizes: Sequence[int], errors: Optional[Dict[str, str]] = None,
                 versions: Optional[Sequence[int]] = None):
        self.prefix = prefix
        sizes = np.asarray(sizes, dtype=np.int64)
        versions = np.asarray(versions if versions is not None else np.zeros(len(names)), dtype=np.int64)
        known = np.flatnonzero(sizes >= 0)
        if len(known) * 2 < len(names):
            # Listed by name alone: the names are sorted as themselves (Python's sort of a
            # list of str takes a third of the time of numpy's argsort of objects), and the
            # few entries already sized (special files, dangling links) put back by name.
            few = {names[i]: (int(sizes[i]), int(versions[i])) for i in known.tolist()}
            self.names = sorted(names)
            self.sizes = array("q", [-1]) * len(names)
            self.versions = np.zeros(len(names), dtype=np.int64)
            for name, (size, version) in few.items():
                i = bisect.bisect_left(self.names, name)
                self.sizes[i], self.versions[i] = size, version
        else:
            # numpy keeps the order as machine integers: 23 MiB less for a million names
            # than sorted(range(n), key=...), which makes an int object per document.
            order = np.argsort(np.array(names, dtype=object), kind="stable")
            self.names = [names[i] for i in order]
            self.sizes = array("q", sizes[order].tobytes())
            self.versions = versions[order]
        self.errors = errors or {}  # name -> why it is not read (rare: a dict, not a column)
        self._unsized = bool(len(self.sizes)) and int(np.frombuffer(self.sizes, dtype=np.int64).min()) < 0

    def sized(self, start: int = 0, stop: Optional[int] = None) -> None:
        """Read the sizes and versions of documents start..stop that were listed by name
        alone. A file gone since it was listed gets 0 and 0, as a dangling link does, and
        fails when read."""
        if not self._unsized:
            return
        stop = len(self) if stop is None else min(stop, len(self))
        known = np.frombuffer(self.sizes, dtype=np.int64)[start:stop]
        for i in (np.flatnonzero(known < 0) + start).tolist():
            try:
                info = os.stat(self.prefix + self.names[i])
                self.sizes[i], self.versions[i] = info.st_size, info.st_mtime_ns
            except OSError:
                self.sizes[i], self.versions[i] = 0, 0
        if start == 0 and stop == len(self):
            self._unsized = False

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = range(len(self))[index]
        self.sized(index, index + 1)
        name = self.names[index]
        return Document(self.prefix + name, self.sizes[index], self.errors.get(name), int(self.versions[index]))

    def __iter__(self) -> Iterator[Document]:
        self.sized()
        prefix, errors = self.prefix, self.errors
        return (Document(prefix + name, size, errors.get(name) if errors else None, version)
                for name, size, version in zip(self.names, self.sizes, self.versions.tolist()))

    def __contains__(self, uri: object) -> bool:
        """Whether uri is one of the documents: a binary search of the sorted names."""
        if not isinstance(uri, str) or not uri.startswith(self.prefix):
            return False
        name = uri[len(self.prefix):]
        i = bisect.bisect_left(self.names, name)
        return i < len(self.names) and self.names[i] == name

    def digest_rows(self) -> Iterator[Tuple[str, int]]:
        """(name, size) of each document, in order: what identifies the inputs."""
        self.sized()
        return zip(self.names, self.sizes)

    @property
    def total_bytes(self) -> int:
        self.sized()
        return int(np.frombuffer(self.sizes, dtype=np.int64).clip(min=0).sum()) if len(self) else 0

    def digest(self) -> Dict[str, Any]:
        """count, bytes and a sha256 of the sorted names with their sizes: the same inputs
        give the same digest on any machine."""
        sha = hashlib.sha256()
        for name, size in self.digest_rows():
            sha.update(f"{name}\t{size}\n".encode("utf-8", "surrogateescape"))
        return {"count": len(self), "bytes": self.total_bytes, "sha256": sha.hexdigest()}


def list_documents(
    url: str,
    glob: str = "*.txt",
    recursive: bool = False,
    storage_options: Optional[Mapping[str, Any]] = None,
    leave_out: Tuple[Sequence[str], Sequence[str]] = ((), ()),
    include_hidden: bool = False,
) -> Listing:
    """Every non-folder entry under url whose name matches glob, in sorted order; url
    itself when it names a file; but for hidden ones (NameFilter) and leave_out, (folders,
    files) as records name them: daskinfer's own outputs (outputs.own_files), which a run in
    the input folder writes.

    Dangling links and unreadable files are listed too: they fail when read and are
    reported then, never dropped here.
    """
    fs, root = storage.filesystem(url, storage_options)
    with storage.storage_errors(url):
        if fs.isfile(root):
            folder, info = storage.parent(root), fs.info(root)
            return Listing(storage.full_uri(fs, folder).rstrip("/") + "/", [root[len(folder):].lstrip("/")],
                           [int(info.get("size") or 0)], versions=[file_version(fs, root, info)])
        errors: Dict[str, str] = {}
        if not _folder_exists(fs, root, url):
            entries: Iterator[Tuple[str, int, int]] = iter(())
        elif storage.is_local(fs):
            entries = walk_local(root, recursive, errors)
        else:
            entries = walk_remote(fs, root, recursive)
        prefix = storage.full_uri(fs, root).rstrip("/") + "/"
        names, sizes, versions = [], array("q"), array("q")
        matches, own = NameFilter(glob, include_hidden), _own_outputs(prefix, leave_out)
        for relative, size, version in entries:
            if matches(relative) and not (own and own(relative)):
                names.append(relative)
                sizes.append(size)
                versions.append(version)
    if not names:
        where = f"{url} or its subfolders" if recursive else url
        hint = ("; inference.input_glob matches file names, not paths: for subfolders set inference.recursive=true "
                f"and inference.input_glob={glob.rsplit('/', 1)[-1]}") if "/" in glob else ""
        raise FileNotFoundError(f"no files matching '{glob}' in {where}{matches.hint()}{hint}")
    matches.report(url)
    return Listing(prefix, names, sizes, errors, versions)


def _own_outputs(prefix: str, leave_out: Tuple[Sequence[str], Sequence[str]]) -> Optional[Callable[[str], bool]]:
    """Whether a listed path (under prefix) is one of leave_out's folders and files, logged
    once; None when none of them is under prefix (the usual case: no call per entry)."""
    folders = tuple(folder.rstrip("/")[len(prefix):] + "/" for folder in leave_out[0] if folder.startswith(prefix))
    files = {uri[len(prefix):] for uri in leave_out[1] if uri.startswith(prefix)}
    if not folders and not files:
        return None
    told = []

    def own(relative: str) -> bool:
        found = relative in files or relative.startswith(folders)
        if found and not told:
            told.append(relative)
            log.info("Leaving out daskinfer's own outputs among the inputs (%s%s, ...)", prefix, relative)
        return found

    return own


class NameFilter:
    """Which listed paths (relative to the folder) are inputs: those whose file name matches
    glob (case-sensitively, as fnmatchcase), but for hidden ones, which Python's glob and
    the shell leave out too: a name in the path that starts with "." (macOS's "._x.txt"
    resource forks, a notebook's .ipynb_checkpoints copies, .git). include_hidden keeps
    them; a glob that itself starts with "." matches hidden file names, as in the shell.
    Counts what it left out, for one log line (nothing is left out silently)."""

    def __init__(self, glob: str, include_hidden: bool = False):
        # compiled once: a million calls of fnmatchcase cost 0.8 s
        self._match = re.compile(fnmatch.translate(glob)).match
        self._hidden_ok, self._dotted_glob = include_hidden, glob.startswith(".")
        self.hidden, self.example = 0, ""

    def __call__(self, path: str) -> bool:
        folder, _, name = path.rpartition("/")
        if self._match(name) is None:
            return False
        if self._hidden_ok or not ((name.startswith(".") and not self._dotted_glob) or "/." in f"/{folder}"):
            return True
        self.hidden += 1
        self.example = self.example or path
        return False

    def report(self, url: str) -> None:
        if self.hidden:
            log.info("Left out %d hidden file(s) of %s (a name starting with '.', such as %s); "
                     "inference.include_hidden=true scores them", self.hidden, url, self.example)

    def hint(self) -> str:
        """For "no files matching": the hidden ones that did match."""
        return f" ({self.hidden} hidden: set inference.include_hidden=true)" if self.hidden else ""


def has_objects(fs: AbstractFileSystem, root: str) -> bool:
    """Whether a bucket prefix holds any object (False for a missing bucket too): one
    request, where s3fs's isdir() lists the whole prefix (ten thousand requests for ten
    million keys)."""
    try:
        return next(compat.list_pages(fs, root.rstrip("/") + "/", recursive=True, page=1), None) is not None
    except FileNotFoundError:
        return False


def check_folder(url: str, storage_options: Optional[Mapping[str, Any]] = None) -> None:
    """Raise, with a one-line message, when url cannot hold any input."""
    fs, root = storage.filesystem(url, storage_options)
    with storage.storage_errors(url):
        if not fs.isfile(root):
            _folder_exists(fs, root, url)


def _folder_exists(fs: AbstractFileSystem, root: str, url: str) -> bool:
    """True for a folder; raises for one that is not there. On object stores a prefix
    with no objects is no folder at all (False), and only a missing bucket is an error."""
    if has_objects(fs, root) if compat.pages_listable(fs) else fs.isdir(root):
        return True
    if storage.is_local(fs):
        raise FileNotFoundError(f"input folder not found: {url}")
    bucket = root.split("/", 1)[0]
    if not fs.exists(bucket):
        raise FileNotFoundError(f"bucket not found: {bucket} (input {url})")
    return False


def size_range(low: int) -> str:
    """A size bucket [low, 4 x low) in words, for a dry run's histogram."""

    def human(n: float) -> str:
        for unit in ("KiB", "MiB", "GiB"):
            n /= 1024
            if n < 1024:
                return f"{n:g} {unit}"
        return f"{n / 1024:g} TiB"

    return "< 1 KiB" if low == 0 else f"{human(low)} - {human(low * 4)}"
