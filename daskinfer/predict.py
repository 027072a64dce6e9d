"""On a worker: one scoring task. Whatever the documents came from (a partition of files,
a slice of a table's rows), the task's piece turns them into Texts; they are scored in
batches with the worker's model and turned into records (and, when evaluating, into
confusion counts). A bad document becomes an error entry; the rest goes on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from daskinfer import evaluation, model, records
from daskinfer.errors import ConfigError, first_line, may_pass


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
    output_format: str = "jsonl"
    length_batching: bool = True
    max_batch_chars: Optional[int] = None  # None: the model's own (batch_budget)


# Padded characters per model call, by default. A model that pads each batch to its longest
# document (or may: one whose padding daskinfer cannot find) runs fastest in small batches:
# measured on a 2-core Xeon (oneDNN), a transformer encoder alone on one core, fresh process
# each, 10,000 IMDb reviews: 128 Ki 472 to 502 docs/s, 32 Ki 654 to 674, 16 Ki 737 to 762,
# 8 Ki 615 to 648 (its activations stay in the caches), and 1.37x faster end to end; on a
# 2-core AMD EPYC (Zen 5) 16 Ki was the fastest too (709 to 717 against 547 to 559 at 128 Ki).
# Its memory is lower too (measured on CPUs only). A model of fixed length costs the same per
# document whatever its length, and small batches only add calls (the small embedding model
# alone: 16 Ki 0.59x of 128 Ki, 1.09x slower end to end), so it keeps 128 Ki, which still
# keeps a batch of huge documents from being tokenized at once.
LENGTH_PADDED_BUDGET = 2**14
FIXED_LENGTH_BUDGET = 2**17
# With length-aware batching off, batches keep input order and batch_size, as batch scripts
# form them, with only this guard on their padded size: batches of 256 IMDb reviews took the
# benchmark transformer's workers past their memory (a 10,000-review run, 302 s of deaths and
# retries one by one); under 2^20 none died (116 s), and batches of 64 reviews (at most 10,321
# characters each) are never cut.
MEMORY_GUARD_BUDGET = 2**20


def batch_budget(settings: Settings, predict: Any) -> int:
    """The padded-size budget of predict's batches: as configured, else by the model's kind,
    or with length-aware batching off, only a guard of a worker's memory."""
    if settings.max_batch_chars is not None:
        return settings.max_batch_chars
    if not settings.length_batching:
        return MEMORY_GUARD_BUDGET
    return FIXED_LENGTH_BUDGET if getattr(predict, "fixed_length", False) else LENGTH_PADDED_BUDGET


@dataclass
class Text:
    """A document ready for the model: what its record calls it, its text, its true label,
    and keys its record gets besides the usual ones (a table row's id)."""

    key: str
    text: str
    position: int  # in the task: errors are written in input order, as results are
    label: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Scored:
    """A task's outcome: records of predicted documents and of failed ones, each with its
    position in the task, and the confusion counts when evaluating."""

    predicted: List[Tuple[int, Dict[str, Any]]] = field(default_factory=list)  # (position, record)
    errors: List[Tuple[int, Dict[str, Any]]] = field(default_factory=list)  # (position, entry)
    tally: Optional[evaluation.Tally] = None
    read_as: List[Tuple[str, int, int]] = field(default_factory=list)  # files not as listed: (uri, size, version)

    @property
    def records(self) -> List[Dict[str, Any]]:
        """The records in input order, however the batches were formed."""
        return [record for _, record in sorted(self.predicted, key=lambda p: p[0])]

    def fail(self, position: int, key: str, exc: BaseException, prefix: str = "") -> None:
        reason = f"{type(exc).__name__}: {first_line(exc)}"
        entry = records.error_entry(key, f"{prefix}: {reason}" if prefix else reason, transient=may_pass(exc))
        self.errors.append((position, entry))


def score(piece: Any, settings: Settings, *data: Any) -> records.PartitionResult:
    """The one worker entry point: the texts of piece (read from data, if it brings any),
    scored, as the result the driver writes."""
    out = score_piece(piece, settings, *data)
    errors = [entry for _, entry in sorted(out.errors, key=lambda e: e[0])]
    predicted = out.records
    of_tables = getattr(piece, "tables_with_results", None)  # rows of tables (tables.Slices)
    return records.PartitionResult(
        records.encode(predicted, settings.output_format), records.jsonl(errors),
        len(predicted), len(errors), out.tally, _worker_address(), records.stats(predicted, errors),
        tables=of_tables(p for p, _ in out.predicted) if of_tables else (), read_as=tuple(out.read_as),
    )


def score_records(piece: Any, settings: Settings, *data: Any) -> List[Dict[str, Any]]:
    """The records themselves, for a notebook's bag. A file name that is not valid UTF-8 is
    given as Parquet output gives it (records.utf8_name): pandas' and dask's string columns
    are Arrow's, which cannot hold it otherwise."""
    found = score_piece(piece, settings, *data).records
    return [r if r["filepath"] == (name := records.utf8_name(r["filepath"])) else {**r, "filepath": name}
            for r in found]


def score_piece(piece: Any, settings: Settings, *data: Any) -> Scored:
    out = Scored(tally=evaluation.Tally(settings.labels) if settings.labels_from else None)
    # The model first, then the documents: on Python 3.11 two threads building Python ASTs at
    # once can fail one with "SystemError: AST constructor recursion depth mismatch" (CPython
    # gh-106905), and both happen at a worker's start: TensorFlow's autograph as the model
    # loads (the preload's thread, or another task's), and s3fs's first import (anyio parses
    # its own source) as a task first reads from S3. Waiting costs the first task the
    # overlap of its reads with the load, a fraction of a second.
    model.predictor(settings.model)
    score_texts(piece.texts(settings, out, *data), settings, out)
    return out


def score_texts(ready: Sequence[Text], settings: Settings, out: Scored) -> None:
    """Score texts in batches into out."""
    if not ready:
        return
    predict = model.predictor(settings.model)
    check_labels(predict.output_shape, settings.labels)
    _given[settings.model.uri] = _given.get(settings.model.uri, 0) + len(ready)
    for batch in batches(ready, settings.batch_size, batch_budget(settings, predict), settings.length_batching):
        _score_batch(predict, batch, settings, out)


def batches(ready: Sequence[Text], batch_size: int, max_chars: Optional[int],
            by_length: bool = True) -> Iterator[Sequence[Text]]:
    """The model's batches: at most batch_size documents each, and with max_chars each
    batch's padded size (documents x the longest one's length, in characters as a proxy for
    tokens) within max_chars; by_length, documents of similar length together, else in
    input order.

    A model that pads a batch to its longest document (a TextVectorization without a fixed
    length, a transformer's tokenizer) then pays for short documents at their own length,
    and a batch of very long ones holds few of them, so its memory stays bounded (in input
    order too, when max_chars is given). Models of a fixed length lose nothing but the sort.
    Records go back in input order (Scored.records). With max_chars None, batches are
    batch_size documents whatever their lengths.
    """
    batch: List[Text] = []
    longest = 0  # the batch's padded length so far
    for text in sorted(ready, key=lambda t: len(t.text)) if by_length else ready:
        size = len(text.text)
        if batch and (len(batch) >= batch_size or (max_chars and (len(batch) + 1) * max(longest, size) > max_chars)):
            yield batch
            batch, longest = [], 0
        batch.append(text)
        longest = max(longest, size)
    if batch:
        yield batch


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
    Two classes (a softmax, as keras_hub's classifiers end): the same, labels[1]'s score being
    the second, so that logit_prob means what it means for a sigmoid model.
    More: the top class and its score.
    """
    scores = np.asarray(output, dtype=np.float64)
    if scores.ndim == 2 and scores.shape[1] == 1:
        scores = scores[:, 0]
    if scores.ndim == 1:
        index = (scores > settings.threshold).astype(int)
        return index, scores, np.stack([1.0 - scores, scores], axis=1)
    if scores.shape[1] == 2:
        return (scores[:, 1] > settings.threshold).astype(int), scores[:, 1], scores
    index = scores.argmax(axis=1)
    return index, scores[np.arange(len(scores)), index], scores


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
    now, labels = records.now(), settings.labels
    finite = np.isfinite(scores).all(axis=1)
    for i, item in enumerate(batch):
        if not finite[i]:  # NaN is no JSON, and no label can be decided from it
            bad = next(float(v) for v in scores[i] if not np.isfinite(v))
            out.fail(item.position, item.key, ValueError(f"the model returned a non-finite score ({bad})"),
                     prefix="model failed")
            continue
        sentiment = labels[index[i]]
        record = {"time": now, "filepath": item.key, "logit_prob": float(logit_prob[i]), "sentiment": sentiment}
        record.update(item.extra)
        if settings.all_scores:
            record["scores"] = dict(zip(labels, map(float, scores[i])))
        out.predicted.append((item.position, record))
        if out.tally is not None:
            out.tally.add(item.label, sentiment)


_given: Dict[str, int] = {}  # model URI -> documents given to it in this process


def documents_given(model_uri: str) -> int:
    """How many documents this process gave the model to score (for a test to ask each
    worker, as model.load_count does)."""
    return _given.get(model_uri, 0)


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return "local"

