"""The results as one Parquet file, written on the driver unit by unit."""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Any, Mapping

from daskinfer import records


class ParquetStream:
    """Results as one Parquet file, a row group per unit, from the columns the workers
    send. Like the JSONL, the file is visible under its name only once published; unlike
    it, it cannot be resumed. It grows in a local spool file (the `.partial` beside a local
    output, a temporary file for an object store, uploaded at publish) so that a column
    whose type turns out wrong can be rewritten: a table's head types its id column, and
    ids that are numbers for 200 rows and then words are written as text, all of them."""

    def __init__(self, fs, path: str, local: bool, column_types: Mapping[str, Any]):
        self.fs, self.path, self.local, self.column_types = fs, path, local, column_types
        self.spool = path + ".partial" if local else None
        self.filepaths: set = set()
        self.count = self.written = 0
        self.file = self.writer = None

    def write(self, table: Any, n: int) -> None:
        if table is None or not n:
            return
        writer = self._open(table.schema)
        try:
            if _booleans_meet_others(writer.schema, table.schema):
                raise TypeError("Arrow would cast true to 1, or 1 to true")
            table = records.conform(table, writer.schema)
        except (ValueError, TypeError, NotImplementedError):  # pyarrow's ArrowInvalid, ArrowTypeError, ...
            table = records.conform(table, self._widen(table.schema).schema)
        self.writer.write_table(table)
        self.written += n
        self.count = self.written

    def publish(self) -> None:
        import pyarrow

        empty = records.parquet_schema()  # a file with no row still has the columns its rows would have
        for name, kind in self.column_types.items():
            empty = empty.append(pyarrow.field(name, kind or pyarrow.string()))
        self._open(empty).close()
        self.file.close()
        if self.local:
            os.replace(self.spool, self.path)
        else:
            self.fs.put_file(self.spool, self.path)
            os.unlink(self.spool)

    def abandon(self, keep: bool) -> None:
        if self.file is not None:
            with contextlib.suppress(Exception):  # else its __del__ writes to the closed file, noisily
                self.writer.close()
            self.file.close()
            os.unlink(self.spool)

    def _open(self, schema):
        if self.writer is None:
            import pyarrow

            for name, kind in self.column_types.items():  # decided for the whole file, not by its first rows
                if kind is not None and name in schema.names:
                    schema = schema.set(schema.get_field_index(name), pyarrow.field(name, kind))
            self._start(schema)
        return self.writer

    def _start(self, schema) -> None:
        import pyarrow.parquet

        if self.local:
            os.makedirs(os.path.dirname(self.spool) or ".", exist_ok=True)
            self.file = open(self.spool, "wb")
        else:
            self.file = tempfile.NamedTemporaryFile(prefix="daskinfer-", suffix=".parquet", delete=False)
            self.spool = self.file.name
        self.writer = pyarrow.parquet.ParquetWriter(self.file, schema)

    def _widen(self, incoming):
        """The writer again, with text where the file's columns and incoming's disagree
        (incoming's type where the file's column has held only missing values so far), and
        the row groups written so far copied into it."""
        import pyarrow
        import pyarrow.parquet

        schema, fixed = self.writer.schema, {name for name, _ in records.PARQUET_TYPES}
        for index, field in enumerate(schema):
            if field.name not in fixed and field.name in incoming.names and incoming.field(field.name).type != field.type:
                kind = incoming.field(field.name).type if field.type == pyarrow.null() else pyarrow.string()
                schema = schema.set(index, pyarrow.field(field.name, kind))
        self.writer.close()
        self.file.close()
        written = self.spool + ".widening"
        os.replace(self.spool, written)
        self._start(schema)
        with open(written, "rb") as old:
            for batch in pyarrow.parquet.ParquetFile(old).iter_batches():
                self.writer.write_table(records.conform(pyarrow.Table.from_batches([batch]), schema))
        os.unlink(written)
        return self.writer


def _booleans_meet_others(schema: Any, incoming: Any) -> bool:
    """Whether a column of booleans meets one of other values (missing ones and text aside)."""
    import pyarrow.types as kinds

    def other(kind) -> bool:
        return not (kinds.is_boolean(kind) or kinds.is_null(kind) or kinds.is_string(kind))

    for name in set(schema.names) & set(incoming.names):
        mine, theirs = schema.field(name).type, incoming.field(name).type
        if (kinds.is_boolean(mine) and other(theirs)) or (kinds.is_boolean(theirs) and other(mine)):
            return True
    return False
