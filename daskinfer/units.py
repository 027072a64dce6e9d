"""A unit: one step of a run's output, as a source yields them and the driver writes them
in order (sources.py makes them, scheduling.py scores them, the sink writes them)."""

from __future__ import annotations

from typing import Any, List, NamedTuple, Optional, Tuple


class Unit(NamedTuple):
    """One step of the output: piece (None when all of it was done before a resume, or is
    carried) with the data it reads, standing for `documents` inputs of which `skipped`
    were done. carried: in an incremental run, every document of the unit in order, (uri,
    plan flags) each: flags 0 for those piece scores, else its lines are copied from the
    previous run's output (see carrying.py)."""

    piece: Any
    data: Tuple[Any, ...]
    documents: int
    skipped: int
    carried: Optional[List[Tuple[str, int]]] = None


# No unit ready yet (a bucket still being listed): the runner writes what it has meanwhile.
NOT_YET = Unit(None, (), 0, 0)
