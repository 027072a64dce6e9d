"""Where a run's files go, and claiming them before any work starts.

A results file has five sidecars: errors, summary, the resolved config, the run report and
the ledger of its inputs. They take the plain names (errors.jsonl, summary.json, config.yaml,
report.html, ledger.parquet) in the
results' folder unless another run's files have them; then they are named after the results
file (`b.errors.jsonl`, `b.summary.json`, ... beside `b.jsonl`). Two runs never share one.

Locally an output is claimed atomically: `<output>.lock` (output_lock.py) appears already locked
(flock) by its run, holding who runs and with which settings; a second run on the same
output refuses, naming the first. The lock is released by the kernel when a run dies,
so a crashed run's output can be resumed, and its settings compared with the resuming
run's. Object stores have no such lock: there, an existing output is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from daskinfer import compat, output_lock, storage
from daskinfer.errors import ConfigError

RESULTS_NAME = "batch-infer-res.jsonl"
SIDECARS = {"errors": "errors.jsonl", "summary": "summary.json", "config": "config.yaml", "report": "report.html",
            "ledger": "ledger.parquet"}


def default_output_path(output_format: str = "jsonl", now: Optional[float] = None) -> Tuple[str, str]:
    """outputs/<YYYY-MM-DD>/<HH-MM-SS>/batch-infer-res.jsonl (or .parquet), as Hydra laid out
    the original script's runs; a run started in the same second gets <HH-MM-SS>-2, ...
    The folder is made here, exclusively, so two runs never share one; returned with it is
    the first folder made, to remove if the run ends before writing anything."""
    stamp = time.localtime(now)
    day = os.path.abspath(os.path.join("outputs", time.strftime("%Y-%m-%d", stamp)))
    made = _first_missing(day)
    os.makedirs(day, exist_ok=True)
    name = RESULTS_NAME if output_format == "jsonl" else RESULTS_NAME.replace(".jsonl", f".{output_format}")
    base = time.strftime("%H-%M-%S", stamp)
    for n in range(1, 10_000):
        folder = os.path.join(day, base if n == 1 else f"{base}-{n}")
        try:
            os.mkdir(folder)
        except FileExistsError:
            continue
        return os.path.join(folder, name), made or folder
    raise FileExistsError(f"no free run folder for {base} in {day}")


def own_files(output_uri: Optional[str], storage_options: Mapping[str, Any]) -> Tuple[List[str], List[str]]:
    """What daskinfer writes that a listing of inputs must not take for inputs, as records name
    files: (folders, files): the default run folders (outputs/ here), and the output named
    with its .partial, its lock and its sidecars."""
    files: List[str] = []
    if output_uri:
        fs, path = storage.filesystem(output_uri, storage_options)
        uri = storage.full_uri(fs, path)
        files = [uri, f"{uri}.partial", f"{uri}.lock", *_plain(uri).values(), *_named(uri).values()]
    return [os.path.abspath("outputs")], files


def earlier_outputs(folder_uri: str, storage_options: Mapping[str, Any]) -> List[str]:
    """The results and sidecars of earlier runs written into folder, as records name files: in
    a folder of tables that is also where outputs go, one run's results would be read as the
    next one's tables. Each run's summary (summary.json or <results>.summary.json) names its
    results file; a folder that cannot be listed is left for the listing to report."""
    fs, root = storage.filesystem(folder_uri, storage_options)
    found: List[str] = []
    try:
        summaries = [p for p in fs.ls(root, detail=False) if p.endswith(SIDECARS["summary"])] if fs.isdir(root) else []
        for path in summaries:
            with fs.open(path, "rb") as f:
                output = json.load(f).get("output")
            if isinstance(output, str):
                results = posixpath.join(posixpath.dirname(path), posixpath.basename(output.rstrip("/")))
                named = posixpath.basename(path) != SIDECARS["summary"]
                found += [results, *(_named(results) if named else _plain(results)).values()]
    except (OSError, ValueError, AttributeError):  # not a summary of ours, or unreadable: nothing to leave out
        pass
    return [storage.full_uri(fs, p) for p in found]


def _first_missing(folder: str) -> Optional[str]:
    """The topmost folder of folder's path that does not exist yet (None: all do)."""
    missing = None
    while not os.path.exists(folder):
        missing, folder = folder, os.path.dirname(folder)
    return missing


def check_output_path(uri: str, storage_options: Mapping[str, Any], resume: bool) -> None:
    """What can be said of the output path before any work: it names a file, in a folder
    that is (or can be) a folder, and no finished output is there unless resuming."""
    if uri.endswith(("/", os.sep)):
        raise ConfigError(f"inference.output_path names a folder ({uri}); name the results file, "
                          f"e.g. {uri.rstrip('/')}/{RESULTS_NAME}")
    fs, path = storage.filesystem(uri, storage_options)
    with storage.storage_errors(uri, "the output "):
        if fs.isdir(path):
            raise ConfigError(f"inference.output_path is a folder ({uri}); name the results file, "
                              f"e.g. {uri.rstrip('/')}/{RESULTS_NAME}")
        if storage.is_local(fs):
            _check_local_folder(os.path.dirname(os.path.abspath(path)), uri)
        elif compat.pages_listable(fs) and not fs.exists(path.split("/", 1)[0]):  # else found at the commit
            raise FileNotFoundError(f"bucket not found: {path.split('/', 1)[0]} (output {uri})")
        if not resume and fs.exists(path):
            raise FileExistsError(f"output already exists, refusing to overwrite: {uri}")


def _check_local_folder(folder: str, uri: str) -> None:
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise NotADirectoryError(f"cannot write the output {uri}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write the output {uri}: {existing} is not writable")


@dataclass
class Claim:
    """An output held by this run: its sidecars' URIs, the lock (local outputs), and what
    the run that started this output recorded (on resume)."""

    output_uri: str
    sidecars: Dict[str, str]
    lock_path: Optional[str] = None
    lock_fd: Optional[int] = None
    previous: Dict[str, Any] = field(default_factory=dict)
    made_folder: Optional[str] = None  # the first folder this claim created, removed with it if left empty

    def record(self, state: Dict[str, Any]) -> None:
        """Write this run's state into the lock file, for a later resume to compare."""
        if self.lock_fd is not None:
            data = json.dumps({**state, "sidecars": self.sidecars}).encode()
            os.ftruncate(self.lock_fd, 0)
            os.pwrite(self.lock_fd, data, 0)

    def release(self, keep: bool) -> None:
        """Give the output up; keep the lock file (unlocked) when a resume will need it."""
        if self.lock_fd is None:
            return
        if not keep:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.lock_path)
            _remove_empty(os.path.dirname(self.lock_path), self.made_folder)
        os.close(self.lock_fd)
        self.lock_fd = None


def _remove_empty(folder: str, up_to: Optional[str]) -> None:
    """Remove folder and its parents up to up_to, as long as they are empty."""
    if not up_to:
        return
    while folder.startswith(up_to):
        try:
            os.rmdir(folder)
        except OSError:
            return
        folder = os.path.dirname(folder)


def claim(uri: str, storage_options: Mapping[str, Any], resume: bool, made: Optional[str] = None,
          resumable: bool = True) -> Claim:
    """Take the output for this run, or refuse with one line. made: a folder made for this
    run (default_output_path), which goes with it if left empty; resumable: whether an
    interrupted run of this output format could be continued (JSONL), for what a refusal says."""
    fs, path = storage.filesystem(uri, storage_options)
    if not storage.is_local(fs):
        if resume:
            raise ConfigError(f"inference.resume needs a local output path; {uri} is not one")
        with storage.storage_errors(uri, "the output "):
            return Claim(uri, _free_sidecars(uri, lambda p: fs.exists(storage.path_on(p))))
    folder = os.path.dirname(os.path.abspath(path))
    made = made or _first_missing(folder)
    os.makedirs(folder, exist_ok=True)
    lock_path = path + ".lock"
    fd, previous = (output_lock.take_over(lock_path, uri) if resume else
                    output_lock.take_new(lock_path, path, uri, resumable))
    try:
        if os.path.exists(path) and not resume:
            raise FileExistsError(f"output already exists, refusing to overwrite: {uri}")
        sidecars = previous.get("sidecars") or (resume and _sidecars_of_finished(uri)) or _free_sidecars(
            uri, _taken_locally)
        held = Claim(uri, sidecars, lock_path, fd, previous, made)
        held.record({**previous, **output_lock.holder()})  # the sidecars' names at once: another run here sees them taken
        return held
    except BaseException:
        if not resume:
            os.unlink(lock_path)
            _remove_empty(folder, made)
        os.close(fd)
        raise


def _taken_locally(uri: str) -> bool:
    return os.path.exists(uri) or os.path.exists(uri + ".partial")


def _sidecars_of_finished(uri: str) -> Optional[Dict[str, str]]:
    """The sidecars of a finished output (resumed to add what is new): those whose summary
    names it as its output, or a file of its name (an output moved or copied since)."""
    for sidecars in (_plain(uri), _named(uri)):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            with open(sidecars["summary"], encoding="utf-8") as f:
                if posixpath.basename(str(json.load(f).get("output"))) == posixpath.basename(uri):
                    return sidecars
    return None


def _plain(uri: str) -> Dict[str, str]:
    folder = posixpath.dirname(uri)
    return {kind: posixpath.join(folder, sidecar) for kind, sidecar in SIDECARS.items()}


def _named(uri: str) -> Dict[str, str]:
    folder, name = posixpath.split(uri)
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return {kind: posixpath.join(folder, f"{stem}.{sidecar}") for kind, sidecar in SIDECARS.items()}


def _free_sidecars(uri: str, taken) -> Dict[str, str]:
    """The plain sidecar names when free, else names after the results file (also when the
    results file itself has a sidecar's name: errors.jsonl gets errors.errors.jsonl, ...)."""
    plain, named = _plain(uri), _named(uri)
    if (posixpath.basename(uri) not in SIDECARS.values() and not any(taken(p) for p in plain.values())
            and not _other_claims(posixpath.dirname(uri), uri, taken)):
        return plain
    clash = [p for p in named.values() if taken(p)]
    if clash:
        raise FileExistsError(f"{clash[0]} belongs to another run; choose another inference.output_path")
    return named


def _other_claims(folder: str, uri: str, taken) -> bool:
    """Whether another run in folder holds the plain sidecar names (by its lock file)."""
    if taken is not _taken_locally:
        return False
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder or "."):
            if entry.name.endswith(".lock") and entry.path != uri + ".lock":
                with contextlib.suppress(OSError, ValueError):
                    with open(entry.path, "rb") as f:
                        state = json.loads(f.read() or b"{}")
                    if state.get("sidecars", {}).get("errors") == posixpath.join(folder, SIDECARS["errors"]):
                        return True
    return False
