"""The model on a worker: loaded once per process (lazily, on first use, from the local
copy model_files makes), and called on a batch of raw strings. Where a model is and what
format it has is model_files' job, done on the driver without TensorFlow."""

from __future__ import annotations

import json
import re
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional

import numpy as np

from daskinfer import model_files, predictors, tf_runtime
from daskinfer.errors import ModelLoadError, NotATextModel, first_line, this_worker  # noqa: F401 (callers catch model.*)
from daskinfer.predictors import Predictor


# Models are loaded for scoring alone (compile=False), yet Keras warns on every worker's stderr
# that it left a saved optimizer's state unread: noise before a run's own lines.
warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer", category=UserWarning)


@dataclass(frozen=True)
class ModelSpec:
    """Where the model is and how to run it: small, picklable, sent to every task.

    For an MLflow URI, uri must be the pinned one (model_files.describe(...)["resolved"]["uri"]):
    an alias given here would be resolved again by each worker."""

    uri: str
    storage_options: Dict[str, Any] = field(default_factory=dict)
    intra_op_threads: Optional[int] = None
    inter_op_threads: Optional[int] = None
    cache_dir: Optional[str] = None
    # The model's content (model_files.describe), part of a worker's cache key: a long-lived
    # worker that loaded other content at this uri (a model saved again, another MLflow
    # server's "models:/name/1") loads the model again rather than score with the old one.
    sha256: Optional[str] = None
    # What the driver resolved an MLflow URI to (describe's "resolved"): a worker fetches those
    # files without asking the tracking server again, and none where the cache has them.
    mlflow: Optional[Dict[str, Any]] = None
    output: Optional[str] = None  # inference.model_output: which output to score, when the model has several


# ---------------------------------------------------------------- worker side

_lock = threading.Lock()
_loaded: Dict[str, Predictor] = {}
_load_counts: Dict[str, int] = {}  # by uri: loads of its latest content
_uris: Dict[str, str] = {}  # uri -> the cache key of its latest content
_load_seconds: Dict[str, float] = {}


def predictor(spec: ModelSpec) -> Predictor:
    """This process's predictor for spec, loaded on first use and then reused."""
    key = json.dumps(asdict(spec), sort_keys=True, default=str)
    found = _loaded.get(key)
    if found is not None:
        return found
    with _lock:
        if key not in _loaded:
            began = time.perf_counter()
            loaded = _load(spec)
            if _uris.get(spec.uri) not in (None, key):  # the content at this uri changed: the old one goes
                _loaded.pop(_uris[spec.uri], None)
                _load_counts[spec.uri] = 0
            _loaded[key], _uris[spec.uri] = loaded, key
            _load_counts[spec.uri] = _load_counts.get(spec.uri, 0) + 1
            _load_seconds[spec.uri] = time.perf_counter() - began
        return _loaded[key]


def load_count(uri: str) -> int:
    """How many times this process loaded the model at uri in its latest content (1 when
    all is well)."""
    return _load_counts.get(uri, 0)


def load_seconds(uri: str) -> float:
    """How long this process's last load of the model at uri took (0 before any): a
    preload's too, which a task that finds the model loaded does not see."""
    return _load_seconds.get(uri, 0.0)


def padding_changes_scores(uri: str) -> bool:
    """Whether this process's model at uri scores a document otherwise when its batch pads it
    (an embedding without mask_zero lets the padding into attention and pooling): then a
    document's score depends on the documents batched with it, whatever the batching. Two
    calls, asked once at the end of a run; False for a model of fixed length, or none loaded."""
    predict = next((p for key, p in _loaded.items() if json.loads(key)["uri"] == uri), None)
    if predict is None or predict.fixed_length:
        return False
    short, long = "a good film", " ".join(["a good film, and a fine one"] * 40)
    try:
        alone, padded = predict([short]), predict([short, long])
    except Exception:  # a model that fails on these: the run's own entries said what it fails on
        return False
    return not np.allclose(np.asarray(alone)[0], np.asarray(padded)[0], atol=1e-5)


def _load(spec: ModelSpec) -> Predictor:
    # An MLflow URI is fetched into this machine's cache by locate (no download when the
    # driver or another worker here already did); local_copy then has nothing left to do.
    fmt, uri = model_files.locate(spec.uri, spec.storage_options, spec.cache_dir, spec.mlflow)
    local = model_files.local_copy(uri, spec.storage_options, spec.cache_dir)
    try:
        tf = tf_runtime.import_tensorflow()
    except ImportError as exc:  # a worker set up without it: every task here would fail the same way
        raise ModelLoadError(f"could not load model {spec.uri}: {this_worker()} cannot import TensorFlow "
                             f"({first_line(exc)}): install it on every worker (pip install tensorflow)") from None
    tf_runtime.configure_threads(tf, spec.intra_op_threads, spec.inter_op_threads)
    # Raised after the except clause, not in it: an exception raised while handling another keeps
    # it as __context__ (from None only hides it), and shipped to the driver, that TensorFlow
    # error would import TensorFlow there, whose log lines come before the run's one line.
    try:
        predict = predictors.build(tf, fmt, local, spec.output)
        predict.output_shape = _warm_up(predict)
        return predict
    except ModelLoadError as exc:
        failed = type(exc)(f"could not load model {spec.uri}: {exc}")
    except Exception as exc:  # any failure here means the model file itself is unusable
        failed = ModelLoadError(f"could not load model {spec.uri}: {_reason(exc)}")
    raise failed


# Traces the graph and starts the runtime before the first task, and gives the shape of a
# document's output. A model may fail on one of these (an assertion on a word, a convolution
# wider than a short text): it fails the load only when it fails on all of them.
WARM_UP_TEXTS = ("warm-up: traces the graph and starts the runtime before the first task",
                 "good", " ".join(["a long review of a film that runs on and on"] * 30))


def _warm_up(predict: Predictor) -> tuple:
    """The shape of a document's output, predict called on a warm-up text."""
    for number, text in enumerate(WARM_UP_TEXTS, 1):
        try:
            return tuple(getattr(predict([text]), "shape", (1,))[1:])
        except Exception:
            if number == len(WARM_UP_TEXTS):
                raise


def _reason(exc: BaseException) -> str:
    """Why a model did not load, in one line: for a class Keras cannot find (a layer defined in
    the training script's __main__), its name, which Keras says only after a page of config."""
    missing = re.search(r"Could not locate class '([^']+)'", str(exc))
    if missing:
        return (f"Keras could not locate class '{missing.group(1)}' that the model uses: define it in a package the "
                "workers import (registered with @keras.saving.register_keras_serializable), not in the training "
                "script's __main__")
    return first_line(exc)


def preload(spec: ModelSpec) -> None:
    """Load spec's model now, ahead of the first task that needs it. A failure is left for
    that task, which loads again and reports it."""
    try:
        predictor(spec)
    except Exception:
        pass
