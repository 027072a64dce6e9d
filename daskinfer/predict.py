"""One partition on a worker: read its files, decode them, predict in batches, and
turn the scores into records (and, when evaluating, into confusion counts). A bad
document becomes an error record; the rest of the partition goes on."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from daskinfer import evaluation, model, sources
from daskinfer.errors import ConfigError, first_line
from daskinfer.sources import Document

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"


@dataclass(frozen=True)
class Settings:
    """Everything a task needs besides its documents: small and picklable."""

    model: model.ModelSpec
    encoding: str = "utf-8"
    batch_size: int = 256
    threshold: float = 0.5
    labels: Tuple[str, ...] = ("negative", "positive")
    all_scores: bool = False
    labels_from: Optional[str] = None
    max_document_bytes: int = 10 * 2**20
    storage_options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Text:
    """A document ready for the model: what its record calls it, its text, its true label,
    and keys its record gets besides the usual ones (a table row's id)."""

    key: str
    text: str
    position: int  # in the partition: errors are written in input order, as results are
    label: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Scored:
    """A partition's outcome: records of predicted documents and of failed ones, in input
    order, and the confusion counts when evaluating."""

    records: List[Dict[str, Any]] = field(default_factory=list)
    errors: List[Tuple[int, Dict[str, Any]]] = field(default_factory=list)  # (position, record)
    tally: Optional[evaluation.Tally] = None

    def fail(self, position: int, key: str, exc: BaseException, prefix: str = "") -> None:
        self.errors.append((position, error_record(key, exc, prefix)))


class PartitionResult(NamedTuple):
    """What a task sends back to the driver: small, ready to write."""

    results: bytes
    errors: bytes
    tally: Optional[evaluation.Tally]
    worker: str


def score_partition(docs: Sequence[Document], settings: Settings) -> Scored:
    """Read, decode and score a partition of document files."""
    out = Scored(tally=new_tally(settings))
    part = docs if isinstance(docs, sources.Partition) else sources.Partition.of(docs)
    raw = sources.read_all(part, settings.storage_options, settings.max_document_bytes)
    ready = []
    for position, (uri, data) in enumerate(zip(part.uris, raw)):
        text = decode(data, settings.encoding)
        if isinstance(text, str):
            label = evaluation.true_label(uri, settings.labels, settings.labels_from) if out.tally else None
            ready.append(Text(uri, text, position, label))
        else:
            out.fail(position, uri, text)
    score_texts(ready, settings, out)
    return out


def score_texts(ready: Sequence[Text], settings: Settings, out: Scored) -> None:
    """Score texts in batches of settings.batch_size into out."""
    if not ready:
        return
    predict = model.predictor(settings.model)
    check_labels(predict.output_shape, settings.labels)
    for start in range(0, len(ready), settings.batch_size):
        _score_batch(predict, ready[start:start + settings.batch_size], settings, out)


def score_partition_jsonl(docs: Sequence[Document], settings: Settings) -> PartitionResult:
    return to_result(score_partition(docs, settings))


def score_partition_records(docs: Sequence[Document], settings: Settings) -> List[Dict[str, Any]]:
    return score_partition(docs, settings).records


def to_result(scored: Scored) -> PartitionResult:
    """The partition as JSONL bytes (results, errors) for the driver to append, with its tally."""
    errors = [record for _, record in sorted(scored.errors, key=lambda e: e[0])]
    return PartitionResult(_jsonl(scored.records), _jsonl(errors), scored.tally, _worker_address())


def check_labels(output_shape: Tuple[int, ...], labels: Sequence[str]) -> None:
    """One label per class the model scores; a one-output model scores one class of two."""
    width = 1 if output_shape in ((), (1,)) else output_shape[0] if len(output_shape) == 1 else None
    if width is None:
        raise model.ModelLoadError(
            f"the model outputs shape {output_shape} per document; expected one score per class"
        )
    if len(labels) != max(width, 2):
        what = "one score (a sigmoid output): inference.labels needs 2 labels" if width == 1 else (
            f"{width} classes: inference.labels needs {width} labels, in the model's output order")
        raise ConfigError(f"the model outputs {what}; got {len(labels)}: {list(labels)}")


def decide(output: Any, settings: Settings) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(label index, logit_prob, per-class scores) of each row of the model's output.

    One output: the score of labels[1], and labels[1] when it is above the threshold.
    Two classes: the class whose score is above the threshold (labels[1]) or not, and its score.
    More: the top class and its score.
    """
    scores = np.asarray(output, dtype=np.float64)
    if scores.ndim == 2 and scores.shape[1] == 1:
        scores = scores[:, 0]
    if scores.ndim == 1:
        index = (scores > settings.threshold).astype(int)
        return index, scores, np.stack([1.0 - scores, scores], axis=1)
    if scores.shape[1] == 2:
        index = (scores[:, 1] > settings.threshold).astype(int)
    else:
        index = scores.argmax(axis=1)
    return index, scores[np.arange(len(scores)), index], scores


def new_tally(settings: Settings) -> Optional[evaluation.Tally]:
    return evaluation.Tally(settings.labels) if settings.labels_from else None


def _score_batch(predict, batch: Sequence[Text], settings: Settings, out: Scored) -> None:
    """Score a batch; if the model fails on it, score its documents one by one to find the bad ones."""
    try:
        index, logit_prob, scores = decide(predict([t.text for t in batch]), settings)
    except model.ModelLoadError:
        raise
    except Exception as exc:
        if len(batch) == 1:
            out.fail(batch[0].position, batch[0].key, exc, prefix="model failed")
        else:
            for one in batch:
                _score_batch(predict, [one], settings, out)
        return
    now = time.strftime(TIME_FORMAT, time.gmtime())
    labels = settings.labels
    for i, item in enumerate(batch):
        sentiment = labels[index[i]]
        record = {"time": now, "filepath": item.key, "logit_prob": float(logit_prob[i]), "sentiment": sentiment}
        record.update(item.extra)
        if settings.all_scores:
            record["scores"] = dict(zip(labels, map(float, scores[i])))
        out.records.append(record)
        if out.tally is not None:
            out.tally.add(item.label, sentiment)


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return "local"


def decode(data: Any, encoding: str) -> Any:
    """The text, or the exception that says why there is none."""
    if isinstance(data, Exception):
        return data
    if not data:
        return ValueError("empty document")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        return ValueError(f"not valid {encoding}: {exc.reason} at byte {exc.start}")


def error_record(key: str, exc: BaseException, prefix: str = "") -> Dict[str, Any]:
    reason = f"{type(exc).__name__}: {first_line(exc)}"
    return {
        "time": time.strftime(TIME_FORMAT, time.gmtime()),
        "filepath": key,
        "error": f"{prefix}: {reason}" if prefix else reason,
    }


def _jsonl(rows: List[Dict[str, Any]]) -> bytes:
    return "".join([_line(r) for r in rows]).encode("utf-8")


def _line(record: Dict[str, Any]) -> str:
    """A record as one JSON line. A plain prediction, the bulk of every output, is formatted
    directly: the same text as the encoder's, in a third of the time."""
    if tuple(record) == _PLAIN_KEYS and math.isfinite(record["logit_prob"]):
        return (
            f'{{"time": {_quote(record["time"])}, "filepath": {_quote(record["filepath"])}, '
            f'"logit_prob": {record["logit_prob"]!r}, "sentiment": {_quote(record["sentiment"])}}}\n'
        )
    return _ENCODER.encode(record) + "\n"


# One encoder for every record (json.dumps with options builds a new one per call).
# default=str: an id column may hold dates or decimals, which JSON has no type for.
_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str)
_quote = json.encoder.encode_basestring  # what that encoder does to a string
_PLAIN_KEYS = ("time", "filepath", "logit_prob", "sentiment")
