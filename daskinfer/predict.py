"""One partition on a worker: read its files, decode them, predict in batches, and
turn the scores into records. A bad document becomes an error record; the rest of
the partition goes on."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from daskinfer import model, sources
from daskinfer.errors import first_line
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
    max_document_bytes: int = 10 * 2**20
    storage_options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Scored:
    """A partition's outcome: records of predicted documents and of failed ones, in input order."""

    records: List[Dict[str, Any]] = field(default_factory=list)
    errors: List[Dict[str, Any]] = field(default_factory=list)


def score_partition(docs: Sequence[Document], settings: Settings) -> Scored:
    out = Scored()
    raw = sources.read_all(docs, settings.storage_options, settings.max_document_bytes)
    texts, kept = [], []
    for doc, data in zip(docs, raw):
        text = _decode(data, settings.encoding)
        if isinstance(text, str):
            texts.append(text)
            kept.append(doc)
        else:
            out.errors.append(_error(doc, text))
    if not texts:
        return out
    predict = model.predictor(settings.model)
    for start in range(0, len(texts), settings.batch_size):
        stop = start + settings.batch_size
        _score_batch(predict, kept[start:stop], texts[start:stop], settings, out)
    out.errors.sort(key=lambda r: r["filepath"])  # decode failures came first, model failures after
    return out


def to_jsonl(scored: Scored) -> Tuple[bytes, bytes]:
    """(results, errors) as JSONL bytes: what the driver appends to its files."""
    return _jsonl(scored.records), _jsonl(scored.errors)


def score_partition_jsonl(docs: Sequence[Document], settings: Settings) -> Tuple[bytes, bytes]:
    return to_jsonl(score_partition(docs, settings))


def score_partition_records(docs: Sequence[Document], settings: Settings) -> List[Dict[str, Any]]:
    return score_partition(docs, settings).records


def _score_batch(predict, docs, texts, settings: Settings, out: Scored) -> None:
    """Score a batch; if the model fails on it, score its documents one by one to find the bad ones."""
    try:
        scores = positive_scores(predict(texts))
    except model.ModelLoadError:
        raise
    except Exception as exc:
        if len(texts) == 1:
            out.errors.append(_error(docs[0], exc, prefix="model failed"))
        else:
            for doc, text in zip(docs, texts):
                _score_batch(predict, [doc], [text], settings, out)
        return
    now = time.strftime(TIME_FORMAT, time.gmtime())
    negative, positive = settings.labels[0], settings.labels[-1]
    for doc, score in zip(docs, scores):
        out.records.append(
            {
                "time": now,
                "filepath": doc.uri,
                "logit_prob": float(score),
                "sentiment": positive if score > settings.threshold else negative,
            }
        )


def positive_scores(output: Any) -> np.ndarray:
    """The positive-class score of each row of a binary model's output."""
    scores = np.asarray(output, dtype=np.float64)
    if scores.ndim == 1:
        return scores
    if scores.ndim == 2 and scores.shape[1] == 1:
        return scores[:, 0]
    if scores.ndim == 2 and scores.shape[1] == 2:
        return scores[:, 1]
    raise model.ModelLoadError(
        f"the model outputs shape {scores.shape[1:]} per document; expected one positive-class score"
    )


def _decode(data: Any, encoding: str) -> Any:
    """The text, or the exception that says why there is none."""
    if isinstance(data, Exception):
        return data
    if not data:
        return ValueError("empty document")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        return ValueError(f"not valid {encoding}: {exc.reason} at byte {exc.start}")


def _error(doc: Document, exc: BaseException, prefix: str = "") -> Dict[str, Any]:
    reason = f"{type(exc).__name__}: {first_line(exc)}"
    return {
        "time": time.strftime(TIME_FORMAT, time.gmtime()),
        "filepath": doc.uri,
        "error": f"{prefix}: {reason}" if prefix else reason,
    }


def _jsonl(rows: List[Dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
