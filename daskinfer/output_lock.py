"""An output's lock file, `<output>.lock`: it appears already locked (flock) by its run, holding
who runs and with which settings, so a second run on the same output refuses, naming the
first. The kernel releases the lock when a run dies: a crashed run's file is there, unlocked,
for a resume to take over with what it recorded."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from typing import Any, Dict, Mapping, Optional, Tuple


def take_new(lock_path: str, path: str, uri: str, resumable: bool) -> Tuple[int, Dict[str, Any]]:
    """A new run: the lock file appears, already locked, or the claim fails."""
    staging = f"{lock_path}.{os.getpid()}"
    try:
        fd = os.open(staging, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as exc:  # the folder takes no files: say so of the output, not of the lock's staging name
        raise OSError(exc.errno, f"cannot write the output {uri}: {exc.strerror}") from None
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.pwrite(fd, json.dumps(holder()).encode(), 0)
    try:
        os.link(staging, lock_path)  # atomic: fails when the lock file is there
    except FileExistsError:
        os.close(fd)
        who = _holder_of(lock_path)
        if who is not None:
            raise FileExistsError(_in_use(uri, who)) from None
        raise FileExistsError(_left_behind(uri, path, lock_path, resumable)) from None
    finally:
        os.unlink(staging)
    if os.path.exists(path + ".partial"):  # its lock removed, or left by a version without the lock file
        os.unlink(lock_path)
        os.close(fd)
        raise FileExistsError(_left_behind(uri, path, None, resumable))
    return fd, {}


def _left_behind(uri: str, path: str, lock_path: Optional[str], resumable: bool) -> str:
    """What to do about what an interrupted run left (its .partial, its lock, or both): only
    what is there, and resume only where it can continue."""
    if not os.path.exists(path + ".partial"):  # killed before its first results
        return f"an interrupted run left {lock_path} and no results: remove it, or add inference.resume=true"
    remove = f"{uri}.partial and {lock_path}" if lock_path else f"{uri}.partial"
    if not resumable:
        return (f"an interrupted run left {uri}.partial, which a Parquet output cannot continue: remove {remove} "
                "to score again")
    return f"an interrupted run left {uri}.partial: add inference.resume=true to continue it, or remove {remove}"


def take_over(lock_path: str, uri: str) -> Tuple[int, Dict[str, Any]]:
    """A resume: the lock file of the interrupted run, taken over, with what it recorded."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FileExistsError(_in_use(uri, _holder_of(lock_path) or {})) from None
    try:
        previous = json.loads(os.pread(fd, 1 << 20, 0) or b"{}")
    except ValueError:
        previous = {}
    return fd, previous


def holder() -> Dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _holder_of(lock_path: str) -> Optional[Dict[str, Any]]:
    """Who holds the lock at lock_path, or None when nobody does (a crashed run's file)."""
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            for _ in range(20):  # the holder may be writing its name this very moment
                with contextlib.suppress(ValueError):
                    return json.loads(os.pread(fd, 1 << 20, 0))
                time.sleep(0.05)
            return {}
        return None
    finally:
        os.close(fd)


def _in_use(uri: str, who: Mapping[str, Any]) -> str:
    named = f" (pid {who['pid']} on {who.get('host')}, started {who.get('started')})" if who.get("pid") else ""
    return f"output {uri} is in use by another run{named}; wait for it, or choose another inference.output_path"
