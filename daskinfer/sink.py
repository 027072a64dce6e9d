"""Output on the driver: results and errors appended partition by partition, in input
order, visible under their final names only when the run completes.

Beside the results file: errors.jsonl, summary.json and the resolved config.yaml.
Locally the files grow under a `.partial` name and are renamed at the end; on object
stores (s3://) fsspec's multipart upload is completed only at commit.
"""

from __future__ import annotations

import json
import os
import posixpath
import time
from typing import Any, Dict, Mapping, Optional

from fsspec.core import split_protocol

from daskinfer import sources

RESULTS_NAME = "batch-infer-res.jsonl"
ERRORS_NAME = "errors.jsonl"
SUMMARY_NAME = "summary.json"
CONFIG_NAME = "config.yaml"


def default_output_path(now: Optional[float] = None) -> str:
    """outputs/<YYYY-MM-DD>/<HH-MM-SS>/batch-infer-res.jsonl, as Hydra laid out the original script's runs."""
    stamp = time.localtime(now)
    folder = os.path.join("outputs", time.strftime("%Y-%m-%d", stamp), time.strftime("%H-%M-%S", stamp))
    return os.path.abspath(os.path.join(folder, RESULTS_NAME))


def sidecar(output_uri: str, name: str) -> str:
    """A file beside the results: same folder (or prefix), given name."""
    protocol, _ = _split(output_uri)
    join = os.path.join if protocol is None else posixpath.join
    parent = os.path.dirname(output_uri) if protocol is None else posixpath.dirname(output_uri)
    return join(parent, name)


def refuse_existing(output_uri: str, storage_options: Mapping[str, Any]) -> None:
    fs, path = sources.filesystem(output_uri, storage_options)
    with sources.storage_errors(output_uri):
        exists = fs.exists(path)
    if exists:
        raise FileExistsError(f"output already exists, refusing to overwrite: {output_uri}")


class OrderedSink:
    """Appends each partition's results and errors; commit() publishes, discard() removes."""

    def __init__(self, output_uri: str, storage_options: Mapping[str, Any]):
        self.uri = output_uri
        self.fs, self.path = sources.filesystem(output_uri, storage_options)
        self.errors_path = self.fs._strip_protocol(sidecar(output_uri, ERRORS_NAME))
        refuse_existing(output_uri, storage_options)
        self.local = sources._is_local(self.fs)
        self.fs.makedirs(self.fs._parent(self.path), exist_ok=True)
        self._results = self._open(self.path)
        self._errors = self._open(self.errors_path)

    def write(self, results: bytes, errors: bytes) -> None:
        self._results.write(results)
        self._errors.write(errors)

    def commit(self, summary: Dict[str, Any], config_yaml: str) -> None:
        for handle, final in ((self._results, self.path), (self._errors, self.errors_path)):
            self._finish(handle, final)
        parent = self.fs._parent(self.path)
        self.fs.pipe_file(posixpath.join(parent, CONFIG_NAME), config_yaml.encode("utf-8"))
        self.fs.pipe_file(posixpath.join(parent, SUMMARY_NAME), (json.dumps(summary, indent=2) + "\n").encode())

    def discard(self) -> None:
        for handle in (self._results, self._errors):
            if self.local:
                handle.close()
                os.unlink(handle.name)
            else:
                handle.discard()

    def _open(self, path: str):
        if self.local:
            return open(path + ".partial", "wb")
        return self.fs.open(path, "wb", autocommit=False)

    def _finish(self, handle, final: str) -> None:
        if self.local:
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
            os.replace(handle.name, final)
        else:
            handle.close()
            handle.commit()


def _split(uri: str):
    protocol, path = split_protocol(uri)
    return (None if protocol in (None, "file", "local") else protocol), path
