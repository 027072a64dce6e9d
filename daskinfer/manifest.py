"""A manifest: the inputs named in a file instead of listed from a folder, for buckets
too big to list. One path or URI per line, or JSON lines with a "path" (or SageMaker's
"source-ref") field; local paths are taken from the current folder."""

from __future__ import annotations

import json
import os
from typing import Any, Iterator, Mapping, Optional, Tuple

import fsspec

from daskinfer import redaction, storage
from daskinfer.errors import RunFailed
from daskinfer.listing import Document

REPEATED = "listed more than once in the manifest"


class Manifest:
    """The inputs a manifest lists, in its order.

    It is streamed again each time it is iterated rather than kept as Document objects;
    only the set of paths seen (to catch a path listed again: one error entry, never
    scored twice) stays in memory while it is read.
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
                yield Document(entry, -1, f"{REPEATED} (again at line {number}); scored once")

    def _entries(self) -> Iterator[Tuple[int, str]]:
        fs, path = storage.filesystem(self.uri, self.storage_options)
        with storage.storage_errors(self.uri), fs.open(path, "rt", encoding="utf-8-sig") as lines:  # -sig: Notepad's and Excel's byte-order mark
            for number, line in enumerate(lines, 1):
                line = line.strip()
                if line:
                    yield number, _entry(line, self.uri, number)


def _entry(line: str, manifest: str, number: int) -> str:
    if line.startswith("{"):
        try:
            record = json.loads(line)
            line = record.get("path") or record["source-ref"]
        except (ValueError, KeyError, AttributeError):
            line = None
        if not isinstance(line, str):
            raise RunFailed(f"{manifest} line {number}: expected a path, or JSON with a \"path\" field")
    if redaction.has_password(line):
        raise RunFailed(f"{manifest} line {number}: {redaction.PASSWORD_REFUSED}")
    protocol, _ = fsspec.core.split_protocol(line)
    return line if protocol not in (None, "file", "local") else os.path.abspath(fsspec.core.strip_protocol(line))


def check_manifest(uri: str, storage_options: Optional[Mapping[str, Any]] = None) -> None:
    fs, path = storage.filesystem(uri, storage_options)
    with storage.storage_errors(uri):
        if not fs.isfile(path):
            raise FileNotFoundError(f"manifest not found: {uri}")
