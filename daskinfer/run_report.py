"""report.html: a run to look at rather than read. Built on the driver from what it gathered
as partitions arrived (score histogram, label counts, errors by kind, throughput, documents
per worker, the evaluation), never by reading the results again. bokeh (which the dask
dashboard needs anyway) draws it, with its JavaScript inline: the file opens without a network.
The same figures are also written as plain tables, for a reader without JavaScript."""

from __future__ import annotations

import html
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

BINS = 20  # score histogram over [0, 1] (records.stats); scores outside it count in the edge bins


def warm_up() -> None:
    """Import bokeh now, in a thread of its own, while the workers start: a second of the
    driver's otherwise idle start-up instead of the end of the run, where it would delay
    the results."""
    import threading

    def load() -> None:
        try:
            import bokeh.embed  # noqa: F401
            import bokeh.layouts  # noqa: F401
            import bokeh.plotting  # noqa: F401
            import bokeh.resources  # noqa: F401
        except ImportError:
            pass

    threading.Thread(target=load, name="daskinfer-report-imports", daemon=True).start()


def check_reference(uri: str, storage_options: Dict[str, Any]) -> None:
    """Before any work: the reference must be results as daskinfer writes them (JSONL), or
    the drift it is asked for could only fail once everything is scored."""
    import json

    from daskinfer import storage
    from daskinfer.errors import ConfigError

    fs, path = storage.filesystem(reference_file(uri, storage_options), storage_options)
    with storage.storage_errors(uri, "the reference "):
        if not fs.isfile(path):
            raise FileNotFoundError(f"inference.reference not found: {uri}")
        with fs.open(path, "rb") as lines:
            first = next((line for line in lines if line.strip()), b"")
    try:
        record = json.loads(first)
    except ValueError:  # also UnicodeDecodeError: a Parquet file, say
        record = None
    if first and not (isinstance(record, dict) and "filepath" in record and "logit_prob" in record):
        raise ConfigError(f"inference.reference: {uri} is not a JSONL results file of daskinfer "
                          "(its first line is no record with a filepath and a logit_prob: an errors file?)")


def reference_file(uri: str, storage_options: Dict[str, Any]) -> str:
    """uri, or for a run's folder the results file its summary.json names (incremental_from
    takes a folder too)."""
    import json
    import posixpath

    from daskinfer import storage

    fs, path = storage.filesystem(uri, storage_options)
    with storage.storage_errors(uri, "the reference "):
        if not fs.isdir(path):
            return uri
        try:
            output = json.loads(fs.cat_file(posixpath.join(path, "summary.json")))["output"]
            return storage.full_uri(fs, posixpath.join(path, posixpath.basename(output)))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            raise FileNotFoundError(f"inference.reference: {uri} is a folder without a run's summary.json; "
                                    "name the results file") from None


def reference_stats(uri: str, storage_options: Dict[str, Any]) -> Dict[str, Any]:
    """The histogram and label counts of an earlier run's results, streamed (never held whole)."""
    from daskinfer import records, storage

    fs, path = storage.filesystem(reference_file(uri, storage_options), storage_options)
    with storage.storage_errors(uri, "the reference "), fs.open(path, "rb") as lines:
        return records.stats_of_jsonl(lines)


def drift(stats: Dict[str, Any], reference: Dict[str, Any], uri: str) -> Dict[str, Any]:
    """How this run's scores and labels moved against the reference: summary.json's `drift`."""
    def shares(labels: Dict[str, int]) -> Dict[str, float]:
        n = sum(labels.values()) or 1
        return {label: round(count / n, 6) for label, count in sorted(labels.items())}

    return {"reference": uri, "psi": psi(stats["hist"], reference["hist"]), "label_shares": shares(stats["labels"]),
            "reference_label_shares": shares(reference["labels"])}


def psi(current: Sequence[int], reference: Sequence[int]) -> Optional[float]:
    """Population stability index of two histograms over the same bins (0.1: a small shift,
    0.25 and above: a large one, as credit-risk practice reads it)."""
    n, m = sum(current), sum(reference)
    if not n or not m:
        return None
    total = 0.0
    for c, r in zip(current, reference):
        p, q = max(c / n, 1e-4), max(r / m, 1e-4)  # an empty bin would make the log infinite
        total += (p - q) * math.log(p / q)
    return round(total, 6)


def render(summary: Dict[str, Any], stats: Dict[str, Any], timeline: List[Tuple[float, int]],
           reference: Optional[Dict[str, Any]] = None) -> str:
    """The whole page as one HTML string."""
    from bokeh.embed import file_html
    from bokeh.layouts import column
    from bokeh.resources import INLINE

    figures = [_score_histogram(stats["hist"], reference), _bars("Label shares", stats["labels"]),
               _throughput(timeline), _bars("Documents per worker", summary.get("documents_by_worker", {}))]
    if stats.get("errors"):
        figures.append(_bars("Errors by kind", stats["errors"]))
    if "evaluation" in summary:
        figures.append(_confusion(summary["evaluation"]))
    head, sep, body = file_html(column(*figures), INLINE, title="daskinfer run report").partition("</head>")
    return head + sep + body.replace("<body>", "<body>" + _tables(summary, stats, reference), 1)


def _score_histogram(counts: Sequence[int], reference: Optional[Dict[str, Any]]):
    from bokeh.plotting import figure

    edges = [i / BINS for i in range(BINS + 1)]
    plot = figure(title="Scores (logit_prob)", width=720, height=280, x_axis_label="score", y_axis_label="share")
    total = sum(counts) or 1
    plot.quad(top=[c / total for c in counts], bottom=0, left=edges[:-1], right=edges[1:], fill_alpha=0.6,
              legend_label="this run")
    if reference:
        ref_total = sum(reference["hist"]) or 1
        centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
        plot.line(centres, [c / ref_total for c in reference["hist"]], line_width=2, color="firebrick",
                  legend_label="reference")
    return plot


def _bars(title: str, counts: Dict[str, int]):
    from bokeh.plotting import figure

    names = [str(k) for k in counts] or ["(none)"]
    plot = figure(title=title, y_range=names, width=720, height=60 + 28 * len(names))
    plot.hbar(y=names, right=list(counts.values()) or [0], height=0.7)
    return plot


def _throughput(timeline: List[Tuple[float, int]]):
    from bokeh.plotting import figure

    plot = figure(title="Documents written over the run", width=720, height=260, x_axis_label="seconds",
                  y_axis_label="documents")
    plot.line([t for t, _ in timeline] or [0], [n for _, n in timeline] or [0], line_width=2)
    return plot


def _confusion(evaluation: Dict[str, Any]):
    from bokeh.plotting import figure

    labels = [str(label) for label in evaluation["labels"]]
    cells = [(t, p, n) for t, row in zip(labels, evaluation["confusion_matrix"]) for p, n in zip(labels, row)]
    plot = figure(title=f"Confusion matrix (accuracy {evaluation['accuracy'] or 0:.3f})", x_range=labels,
                  y_range=list(reversed(labels)), width=420, height=380, x_axis_label="predicted",
                  y_axis_label="true")
    top = max((n for *_, n in cells), default=1) or 1
    plot.rect(x=[p for _, p, _ in cells], y=[t for t, _, _ in cells], width=1, height=1,
              fill_alpha=[0.15 + 0.85 * n / top for *_, n in cells])
    plot.text(x=[p for _, p, _ in cells], y=[t for t, _, _ in cells], text=[str(n) for *_, n in cells],
              text_align="center", text_baseline="middle")
    return plot


def _tables(summary: Dict[str, Any], stats: Dict[str, Any], reference: Optional[Dict[str, Any]]) -> str:
    """The figures as text: what a test, a screen reader or a quick look finds first."""
    rows = [("documents", summary["documents"]), ("predicted", summary["predicted"]),
            ("errors", summary["errors"]), ("skipped", summary["skipped"]),
            ("elapsed (s)", summary["elapsed_s"]), ("documents/s", summary["docs_per_s"])]
    rows += [(f"label: {label}", n) for label, n in stats["labels"].items()]
    rows += [(f"error: {kind}", n) for kind, n in stats.get("errors", {}).items()]
    if "evaluation" in summary and summary["evaluation"]["accuracy"] is not None:
        rows.append(("accuracy", round(summary["evaluation"]["accuracy"], 4)))
    if reference:
        rows.append(("drift (PSI) against the reference", summary.get("drift", {}).get("psi")))
    cells = "".join(f'<tr><th>{html.escape(str(k))}</th><td id="{_slug(k)}">{html.escape(str(v))}</td></tr>'
                    for k, v in rows)
    return (f'<h1>daskinfer run report</h1><p>{html.escape(str(summary.get("output", "")))}</p>'
            f'<table id="figures">{cells}</table>')


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")
