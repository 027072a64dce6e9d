"""What the driver tells about a run: a progress bar while it scores, summary.json, and
the closing log lines (the last one the output's location, or the error budget's verdict)."""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Dict, List, Optional, Tuple

from daskinfer import evaluation, records
from daskinfer.errors import ErrorBudgetExceeded
from daskinfer.units import Unit

log = logging.getLogger("daskinfer")


@dataclass
class Scoring:
    """What the driver gathers besides the output files, unit by unit as they are written."""

    documents: int = 0
    skipped: int = 0
    carried: int = 0  # an incremental run's documents whose lines came from the previous run
    carried_before: int = 0  # of those, the ones written before a resume (counted as skipped too)
    tally: Optional[evaluation.Tally] = None
    by_worker: Dict[str, int] = field(default_factory=dict)  # worker address -> documents
    model_loads: Dict[str, int] = field(default_factory=dict)
    padding_changes_scores: bool = False  # model.padding_changes_scores, on any worker
    stats: Dict[str, Any] = field(default_factory=lambda: records.stats([], []))  # summed over partitions
    timeline: List[Tuple[float, int]] = field(default_factory=list)  # (seconds, documents written)
    started: float = field(default_factory=time.monotonic)

    def add(self, unit: Unit, part: Optional[records.PartitionResult]) -> None:
        incremental = unit.carried is not None and part is not None
        # a carried table's rows: as read (those left out as done before a resume are skipped)
        self.documents += part.documents + unit.skipped if incremental else unit.documents
        self.skipped += unit.skipped
        if part is None:
            return
        self.timeline.append((round(time.monotonic() - self.started, 3), self.documents - self.skipped))
        if part.stats:
            records.add_stats(self.stats, part.stats)
        self.carried += part.carried
        if part.documents > part.carried:
            self.by_worker[part.worker] = self.by_worker.get(part.worker, 0) + part.documents - part.carried
        if part.tally is not None:
            if self.tally is None:
                self.tally = part.tally
            else:
                self.tally.merge(part.tally)


def summary(scoring: Scoring, predicted: int, errors: int, elapsed: float, output_uri: str,
            labels_from: Optional[str], labels: tuple, manifest: Dict[str, Any],
            incremental: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    scored = scoring.documents - scoring.skipped - scoring.carried
    result = {
        "documents": scoring.documents,
        "predicted": predicted,
        "errors": errors,
        "skipped": scoring.skipped,
        "scored": scored,
        "carried": scoring.carried + scoring.carried_before,
        "removed": (incremental or {}).get("removed", 0),
        "retried": (incremental or {}).get("retried", 0),
        "elapsed_s": round(elapsed, 3),
        "docs_per_s": round(scored / elapsed, 1) if elapsed else None,
        "model_loads": scoring.model_loads,
        "padding_changes_scores": scoring.padding_changes_scores,
        "documents_by_worker": dict(sorted(scoring.by_worker.items())),
        "output": output_uri,
        **manifest,
    }
    if incremental:
        result["incremental_from"] = incremental["from"]
    if labels_from:
        result["evaluation"] = evaluation.figures(scoring.tally or evaluation.Tally(labels))
    return result


def versions() -> Dict[str, Optional[str]]:
    """The versions that made the results, without importing any of them on the driver."""
    found: Dict[str, Optional[str]] = {"python": platform.python_version()}
    for package in ("daskinfer", "tensorflow", "keras", "dask", "distributed"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def closing_lines(result: Dict[str, Any], output_uri: str, errors_uri: str, error_budget: float) -> None:
    """The closing log lines; the last is the output location, or the budget error."""
    log.info(
        "Scored %d documents (%d errors, %d skipped as done before) in %.1f s, %.0f docs/s",
        result["scored"], result["errors"], result["skipped"], result["elapsed_s"], result["docs_per_s"] or 0,
    )
    if "incremental_from" in result:
        log.info("Incremental run: %d documents carried unchanged from %s, %d scored (new, changed%s), %d removed",
                 result["carried"], result["incremental_from"], result["scored"],
                 f", {result['retried']} errors retried" if result["retried"] else "", result["removed"])
    if result["errors"]:
        log.info("Errors: %s", errors_uri)
    if result.get("padding_changes_scores"):
        log.warning("The model scores a document otherwise when its batch pads it (an Embedding without "
                    "mask_zero=True?): each score depends on the documents batched with it. "
                    "inference.batch_size=1 scores each document alone (slower)")
    if "evaluation" in result:
        for line in evaluation.report_lines(result["evaluation"]):
            log.info("%s", line)
    log.info("Output result location: %s", output_uri if "://" in output_uri else os.path.abspath(output_uri))
    if over_budget(result, error_budget):
        raise ErrorBudgetExceeded(
            f"{result['errors']} of {result['documents']} documents failed, above "
            f"inference.error_budget={error_budget:g}; see {errors_uri}"
        )


def over_budget(result: Dict[str, Any], error_budget: float) -> bool:
    """More documents failed than inference.error_budget allows: the run exits non-zero."""
    return result["errors"] > error_budget * result["documents"]


class Progress:
    """A one-line progress bar on a terminal; nothing when stderr is not one. Its rate is
    that of scoring (documents written since the first unit was submitted), so it reads
    higher than the closing line's, which counts the whole run with its start-up."""

    def __init__(self, total: Optional[int], stream=None):
        self.total, self.stream = total, stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.started = time.monotonic()
        self.last = 0.0

    def update(self, done: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.2 and done != self.total):
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        if self.total is None:  # a table's rows are counted as they are read
            self.stream.write(f"\r{done} documents  {rate:,.0f} docs/s   ")
        else:
            left = (self.total - done) / rate if rate else float("inf")
            self.stream.write(f"\r{done}/{self.total} documents  {rate:,.0f} docs/s  {left:,.0f} s left   ")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
