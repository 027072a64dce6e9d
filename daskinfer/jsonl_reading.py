"""JSON lines as a run reads them: each line one object, a line that is none (or that names
a column the run reads twice) a BadLine of its own, in its row's place."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Dict, List, Sequence, Tuple

from daskinfer.csv_reading import DECODE_ERRORS, BadLine
from daskinfer.errors import first_line

if TYPE_CHECKING:
    import pandas as pd


def read_block(block: bytes, names: Sequence[str], encoding: str) -> pd.DataFrame:
    """On a worker: a block's rows, each value as JSON wrote it (an id above 2**53 exactly,
    a list as a list), a missing one as None."""
    return read_rows([line for line in block.decode(encoding, DECODE_ERRORS).split("\n") if line.strip()], names)


def read_rows(lines: Sequence[str], names: Sequence[str]) -> pd.DataFrame:
    """The rows of decoded JSON lines, as read_block gives them: names[0] (the text) holds a
    bad line's BadLine."""
    import pandas as pd

    rows = [row_or_bad(line, names) for line in lines]
    return pd.DataFrame({name: pd.Series([row.get(name) if isinstance(row, dict) else row if name == names[0] else None
                                          for row in rows], dtype=object) for name in names})


def row_or_bad(line: str, names: Sequence[str]) -> Any:
    """line's object, or a BadLine saying why it is none. A key of names written twice in one
    object is one too: json keeps the last value without a word, and which one the writer
    meant cannot be told (a text silently replaced by another is a document lost)."""
    try:
        found = row(line)
    except ValueError as exc:  # json.JSONDecodeError among them
        return BadLine(f"not a JSON object: {first_line(exc)}" if isinstance(exc, json.JSONDecodeError) else
                       f"holds {first_line(exc)}")
    suspects = [name for name in names if line.count(f'"{name}"') > 1]  # C-speed: the usual line stops here
    doubled = _keys_twice(line) if suspects else set()
    twice = [name for name in suspects if name in doubled]
    if twice:
        return BadLine(f"holds the key '{twice[0]}' more than once: which value is meant cannot be told")
    return found


def row(line: str) -> Dict[str, Any]:
    found = json.loads(line.lstrip("\ufeff"))  # a byte-order mark opens some files
    if not isinstance(found, dict):
        raise ValueError(f"a JSON {type(found).__name__}, not an object")
    return found


def _keys_twice(line: str) -> set:
    """The top-level keys line's object holds more than once (parsed again only for a line in
    which a key's quoted name occurs twice: a rare line, and the usual ones stay fast)."""
    objects: List[List[Tuple[str, Any]]] = []  # each object's pairs, as json ends it: the top-level one last
    json.loads(line.lstrip("\ufeff"), object_pairs_hook=lambda pairs: objects.append(pairs) or dict(pairs))
    keys = [key for key, _ in objects[-1]]
    return {key for key in keys if keys.count(key) > 1}
