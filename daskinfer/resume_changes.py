"""Which documents a resume scores again: those done before that changed after they were
scored, so that the output holds every input as it is now, once.

An interrupted run's lock file records when it started (`scored_since_ns`): every document
it scored was read after that, so a local file changed since (modified, or replaced by a
copy that keeps an older modification time) may have been scored in an older version, and so
may an object written to a listed bucket since (its LastModified). A finished output that a
resume adds to has its ledger: a document whose size or version differs from the ledger's
changed since. A document changed this way loses its earlier line (results or error entry)
and is scored like a new one.
"""

from __future__ import annotations

import datetime
import logging
import os
from typing import Any, Iterable, Mapping, Optional, Set

from daskinfer import ledger, storage

log = logging.getLogger("daskinfer")

# Some file systems keep modification times to a second or two (FAT, ext3, some network
# mounts): a change just after the start may read as just before it. Scoring again a
# document changed in the seconds before a run costs one prediction; missing one, a stale one.
SLACK_NS = 2_000_000_000


def changed(docs: Iterable[Any], done: Set[str], since_ns: Optional[int], ledger_uri: Optional[str],
            storage_options: Mapping[str, Any]) -> Set[str]:
    """The done documents of docs to score again: changed since since_ns (an interrupted
    run's start; local files), or since the finished run whose ledger is at ledger_uri."""
    if not done:
        return set()
    if since_ns is not None:
        stale = {doc.uri for doc in docs if doc.uri in done and _modified_since(doc.uri, since_ns - SLACK_NS)}
        stale |= _objects_written_since(getattr(docs, "prefix", ""), done, since_ns - SLACK_NS, storage_options)
    elif ledger_uri is not None and storage.filesystem(ledger_uri, storage_options)[0].exists(
            storage.path_on(ledger_uri)):
        stale = _differ_from_ledger(docs, done, ledger_uri, storage_options)
    else:
        return set()
    if stale:
        log.info("Scoring again %d documents done before that changed since (e.g. %s)", len(stale), min(stale))
    return stale


def _modified_since(uri: str, since_ns: int) -> bool:
    """Whether a local file changed at or after since_ns (an object store's documents are
    not looked at: their versions are compared only through a ledger). Its inode's change
    time as well as its modification time: `cp -p`, `rsync -a` and `touch -d` give new
    content an older modification time, but no one sets the change time."""
    if storage.protocol_of(uri) not in (None, "file"):
        return False
    try:
        info = os.stat(storage.path_on(uri))
    except OSError:
        return False  # gone: the resume leaves it out anyway
    return max(info.st_mtime_ns, info.st_ctime_ns) >= since_ns


def _objects_written_since(prefix: str, done: Set[str], since_ns: int, storage_options: Mapping[str, Any]) -> Set[str]:
    """The done documents under an object-store prefix (a listed bucket's) written there at or
    after since_ns, by their LastModified: the store's clock, which SLACK_NS allows to differ a
    little from this machine's. One listing of the prefix, a thousand keys a request. A
    manifest's objects (no prefix) are not looked at."""
    if storage.protocol_of(prefix) in (None, "file"):
        return set()
    fs, root = storage.filesystem(prefix, storage_options)
    with storage.storage_errors(prefix):
        found = fs.find(root, detail=True)
    fs.invalidate_cache(root)  # s3fs would keep every entry for the process's life
    stale = set()
    for path, info in found.items():
        written = info.get("LastModified")
        if isinstance(written, datetime.datetime) and written.timestamp() * 1e9 >= since_ns:
            uri = storage.full_uri(fs, path)
            if uri in done:
                stale.add(uri)
    return stale


def _differ_from_ledger(docs: Iterable[Any], done: Set[str], ledger_uri: str,
                        storage_options: Mapping[str, Any]) -> Set[str]:
    recorded = {name: (size, version) for name, size, version, _ in ledger.read(ledger_uri, storage_options)
                if name in done}
    stale = set()
    for doc in docs:
        if doc.uri in recorded:
            size, version = recorded[doc.uri]
            now = _version_now(doc)
            if size >= 0 and version and now is not None and now != (size, version):
                stale.add(doc.uri)
    return stale


def _version_now(doc: Any) -> Optional[tuple]:
    """(size, version) as a listing records them: a local file's stat, else the listing's."""
    if doc.version and doc.size >= 0:
        return doc.size, doc.version
    try:
        st = os.stat(storage.path_on(doc.uri))
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns
