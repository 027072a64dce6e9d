"""Evaluation against true labels: where a document's true label comes from, the
confusion counts of each partition (kept on the workers, summed on the driver), and the
figures users read (accuracy, per-label precision / recall / F1, the confusion matrix)."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from daskinfer.errors import ConfigError

# aclImdb names a review <id>_<rating>.txt; ratings 5 and 6 are left out of the dataset.
_RATING = re.compile(r"_(\d+)\.[^./]*$")
_RATING_CLASSES = {
    2: ((1, 4), (7, 10)),
    4: ((1, 2), (3, 4), (7, 8), (9, 10)),
}


def check(labels_from: Optional[str], labels: Sequence[str]) -> None:
    if labels_from == "aclimdb" and len(labels) not in _RATING_CLASSES:
        raise ConfigError(
            f"inference.labels_from=aclimdb gives 2 classes (ratings <= 4 / >= 7) or 4 (1-2, 3-4, 7-8, 9-10); "
            f"inference.labels has {len(labels)}"
        )


def true_label(uri: str, labels: Sequence[str], labels_from: str) -> Optional[str]:
    """The label a document's path gives it, or None when the path says nothing."""
    if labels_from == "parent_dir":
        return posixpath.basename(posixpath.dirname(uri)) or None
    match = _RATING.search(uri)
    if match is None:
        return None
    rating = int(match.group(1))
    for label, (low, high) in zip(labels, _RATING_CLASSES[len(labels)]):
        if low <= rating <= high:
            return label
    return None


@dataclass
class Tally:
    """Confusion counts: matrix[true][predicted], in the order of labels."""

    labels: Tuple[str, ...]
    matrix: List[List[int]] = field(default_factory=list)
    unlabeled: int = 0
    unknown: Dict[str, int] = field(default_factory=dict)  # true labels not among labels

    def __post_init__(self) -> None:
        if not self.matrix:
            self.matrix = [[0] * len(self.labels) for _ in self.labels]

    def add(self, true: Any, predicted: str) -> None:
        true = None if true is None else str(true)
        if true is None or true == "":
            self.unlabeled += 1
        elif true not in self.labels:
            self.unlabeled += 1
            self.unknown[true] = self.unknown.get(true, 0) + 1
        else:
            self.matrix[self.labels.index(true)][self.labels.index(predicted)] += 1

    def merge(self, other: "Tally") -> None:
        for row, other_row in zip(self.matrix, other.matrix):
            row[:] = [a + b for a, b in zip(row, other_row)]
        self.unlabeled += other.unlabeled
        for name, count in other.unknown.items():
            self.unknown[name] = self.unknown.get(name, 0) + count


def figures(tally: Tally) -> Dict[str, Any]:
    """What summary.json's `evaluation` holds. Precision of a label never predicted is 0.0."""
    k = len(tally.labels)
    labeled = sum(map(sum, tally.matrix))
    correct = sum(tally.matrix[i][i] for i in range(k))
    per_label = {}
    for i, label in enumerate(tally.labels):
        predicted = sum(row[i] for row in tally.matrix)
        actual = sum(tally.matrix[i])
        precision = tally.matrix[i][i] / predicted if predicted else 0.0
        recall = tally.matrix[i][i] / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_label[label] = {"precision": precision, "recall": recall, "f1": f1, "support": actual}
    return {
        "accuracy": correct / labeled if labeled else None,
        "per_label": per_label,
        "confusion_matrix": [list(row) for row in tally.matrix],
        "labels": list(tally.labels),
        "labeled": labeled,
        "unlabeled": tally.unlabeled,
        "unknown_labels": dict(sorted(tally.unknown.items())),
    }


def report_lines(result: Dict[str, Any]) -> List[str]:
    """The evaluation as the run's closing log lines."""
    accuracy = result["accuracy"]
    lines = [
        f"Evaluation: accuracy {accuracy:.4f} on {result['labeled']} labeled documents"
        if accuracy is not None else "Evaluation: no document had a label",
    ]
    width = max(len("label"), *(len(label) for label in result["labels"]))
    lines.append(f"  {'label':<{width}}  precision  recall      f1  support")
    for label, row in result["per_label"].items():
        lines.append(
            f"  {label:<{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  {row['f1']:6.4f}  {row['support']:7d}"
        )
    cell = max(width, *(len(str(n)) for row in result["confusion_matrix"] for n in row))
    lines.append("  confusion matrix (rows: true, columns: predicted)")
    lines.append(f"  {'':<{width}}  " + "  ".join(f"{label:>{cell}}" for label in result["labels"]))
    for label, row in zip(result["labels"], result["confusion_matrix"]):
        lines.append(f"  {label:<{width}}  " + "  ".join(f"{n:>{cell}}" for n in row))
    unknown = ", ".join(f"{name} ({n})" for name, n in result["unknown_labels"].items())
    lines.append(
        f"  {result['unlabeled']} documents without a label"
        + (f", among them labels not in inference.labels: {unknown}" if unknown else "")
    )
    return lines
