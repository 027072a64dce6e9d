"""Output on the driver: results and errors appended partition by partition, in input
order, visible under their final names only when the run completes.

Beside the results file: errors.jsonl, summary.json and the resolved config.yaml.
Locally the files grow under a `.partial` name and are renamed at the end; on object
stores (s3://) fsspec's multipart upload is completed only at commit.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import time
from typing import Any, Dict, Mapping, Optional

from daskinfer import sources
from daskinfer.errors import ConfigError

RESULTS_NAME = "batch-infer-res.jsonl"
ERRORS_NAME = "errors.jsonl"
SUMMARY_NAME = "summary.json"
CONFIG_NAME = "config.yaml"


def default_output_path(output_format: str = "jsonl", now: Optional[float] = None) -> str:
    """outputs/<YYYY-MM-DD>/<HH-MM-SS>/batch-infer-res.jsonl (or .parquet), as Hydra laid out
    the original script's runs."""
    stamp = time.localtime(now)
    folder = os.path.join("outputs", time.strftime("%Y-%m-%d", stamp), time.strftime("%H-%M-%S", stamp))
    name = RESULTS_NAME if output_format == "jsonl" else RESULTS_NAME.replace(".jsonl", f".{output_format}")
    return os.path.abspath(os.path.join(folder, name))


def sidecar(output_uri: str, name: str) -> str:
    """A file beside the results: same folder (or prefix), given name."""
    return posixpath.join(posixpath.dirname(output_uri), name)


def refuse_existing(output_uri: str, storage_options: Mapping[str, Any]) -> None:
    fs, path = sources.filesystem(output_uri, storage_options)
    with sources.storage_errors(output_uri):
        exists = fs.exists(path)
    if exists:
        raise FileExistsError(f"output already exists, refusing to overwrite: {output_uri}")
    if sources._is_local(fs) and os.path.exists(path + ".partial"):
        raise FileExistsError(
            f"an interrupted run left {path}.partial: add inference.resume=true to continue it, or remove it"
        )


class OrderedSink:
    """Appends each partition's results and errors in order; commit() publishes them.

    Locally each partition is flushed and fsynced as it is written, so a crash loses at
    most the partition in flight, and `resume=True` picks up what is there: the filepaths
    already written are in `done`, and new partitions are appended.
    """

    def __init__(self, output_uri: str, storage_options: Mapping[str, Any], resume: bool = False,
                 output_format: str = "jsonl"):
        self.uri = output_uri
        self.fs, self.path = sources.filesystem(output_uri, storage_options)
        self.local = sources._is_local(self.fs)
        if resume and not self.local:
            raise ConfigError(f"inference.resume needs a local output path; {output_uri} is not one")
        if not resume:
            refuse_existing(output_uri, storage_options)
        errors_path = self.fs._strip_protocol(sidecar(output_uri, ERRORS_NAME))
        stream = _LocalStream if self.local else _RemoteStream
        if output_format == "parquet":
            self.results = _ParquetStream(self.fs, self.path, self.local)
        else:
            self.results = stream(self.fs, self.path, resume)
        self.errors = stream(self.fs, errors_path, resume)
        self.done = self.results.filepaths | self.errors.filepaths

    def write(self, results: bytes, errors: bytes) -> None:
        self.results.write(results)
        self.errors.write(errors)

    def commit(self, summary: Dict[str, Any], config_yaml: str) -> None:
        self.results.publish()
        self.errors.publish()
        parent = self.fs._parent(self.path)
        self.fs.pipe_file(posixpath.join(parent, CONFIG_NAME), config_yaml.encode("utf-8"))
        self.fs.pipe_file(posixpath.join(parent, SUMMARY_NAME), (json.dumps(summary, indent=2) + "\n").encode())

    def abandon(self) -> bool:
        """Stop without publishing; True when what was written stays there to resume from."""
        kept = self.results.abandon(keep=self.local and bool(self.done or self.results.written))
        self.errors.abandon(keep=kept)
        return kept


class _LocalStream:
    """A file growing under `<name>.partial`, renamed to its name when published.

    Nothing is created before the first write, so a run that fails early leaves nothing.
    """

    def __init__(self, fs, path: str, resume: bool):
        self.path, self.partial = path, path + ".partial"
        if resume and not os.path.exists(self.partial) and os.path.exists(path):
            os.replace(path, self.partial)  # a finished run: append to it what is new
        self.filepaths = _recover(self.partial) if resume else set()
        self.count = len(self.filepaths)
        self.written = 0
        self.file = None

    def write(self, data: bytes) -> None:
        file = self._open()
        if data:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
            self.written += data.count(b"\n")
        self.count = len(self.filepaths) + self.written

    def publish(self) -> None:
        self._open().close()
        os.replace(self.partial, self.path)

    def abandon(self, keep: bool) -> bool:
        if self.file is not None:
            self.file.close()
            if not keep:
                os.unlink(self.partial)
        return keep

    def _open(self):
        if self.file is None:
            os.makedirs(os.path.dirname(self.partial) or ".", exist_ok=True)
            self.file = open(self.partial, "ab")
        return self.file


class _RemoteStream:
    """An object store upload (multipart) that becomes visible only when committed."""

    def __init__(self, fs, path: str, resume: bool):
        self.filepaths = set()
        self.count = self.written = 0
        self.file = fs.open(path, "wb", autocommit=False)

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.written += data.count(b"\n")
        self.count = self.written

    def publish(self) -> None:
        self.file.close()
        self.file.commit()

    def abandon(self, keep: bool) -> bool:
        self.file.discard()
        return False


class _ParquetStream:
    """Results as one Parquet file with the JSONL's columns, a row group per partition:
    pyarrow parses each partition's JSONL as it comes. Like the JSONL, the file is
    visible under its name only once published; unlike it, it cannot be resumed."""

    # Fixed types for the keys every record has; others (id, scores) are inferred.
    SCHEMA = (("time", "string"), ("filepath", "string"), ("logit_prob", "float64"), ("sentiment", "string"))

    def __init__(self, fs, path: str, local: bool):
        self.fs, self.path, self.local = fs, path, local
        self.partial = path + ".partial" if local else path
        self.filepaths: set = set()
        self.count = self.written = 0
        self.file = self.writer = None

    def write(self, data: bytes) -> None:
        if not data:
            return
        import pyarrow.json

        schema = self._schema()
        options = pyarrow.json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="infer")
        table = pyarrow.json.read_json(io.BytesIO(data), parse_options=options)
        self._open(table.schema).write_table(table.cast(self.writer.schema))
        self.written += table.num_rows
        self.count = self.written

    def publish(self) -> None:
        self._open(self._schema()).close()
        if self.local:
            self.file.close()
            os.replace(self.partial, self.path)
        else:
            self.file.close()
            self.file.commit()

    def abandon(self, keep: bool) -> bool:
        if self.file is not None:
            if self.local:
                self.file.close()
                os.unlink(self.partial)
            else:
                self.file.discard()
        return False

    def _open(self, schema):
        if self.writer is None:
            import pyarrow.parquet

            if self.local:
                os.makedirs(os.path.dirname(self.partial) or ".", exist_ok=True)
                self.file = open(self.partial, "wb")
            else:
                self.file = self.fs.open(self.path, "wb", autocommit=False)
            self.writer = pyarrow.parquet.ParquetWriter(self.file, schema)
        return self.writer

    def _schema(self):
        import pyarrow

        return pyarrow.schema([(name, getattr(pyarrow, kind)()) for name, kind in self.SCHEMA])


def _recover(path: str) -> set:
    """The filepaths of the complete lines of a JSONL file cut short by a crash; the torn
    last line, if any, is truncated away so that appending continues cleanly."""
    if not os.path.exists(path):
        return set()
    filepaths, good_end = set(), 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                filepaths.add(json.loads(line)["filepath"])
            except (ValueError, KeyError, TypeError):
                break
            good_end += len(line)
    with open(path, "ab") as f:
        f.truncate(good_end)
    return filepaths
