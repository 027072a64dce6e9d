"""The model on a worker: loaded once per process (lazily, on first use, from the local
copy model_files makes), and called on a batch of raw strings. Where a model is and what
format it has is model_files' job, done on the driver without TensorFlow."""

from __future__ import annotations

import importlib
import json
import re
import threading
import time
import warnings
import zipfile
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Optional

import numpy as np

from daskinfer import compat, model_files, tf_runtime
from daskinfer.errors import ConfigError, RunFailed, first_line


# Models are loaded for scoring alone (compile=False), yet Keras warns on every worker's stderr
# that it left a saved optimizer's state unread: noise before a run's own lines.
warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer", category=UserWarning)


class ModelLoadError(RunFailed):
    """The model exists but could not be loaded; retrying will not help."""


class NotATextModel(ModelLoadError, ConfigError):
    """The model loads, but takes something other than raw text (token ids, several
    inputs): daskinfer feeds it strings. A configuration matter: exit status 2."""


TOKEN_IDS_ADVICE = (
    "daskinfer feeds raw strings: save a model that takes text and tokenizes it inside "
    "(a Keras TextVectorization layer, or a keras_hub classifier with its preprocessor), see README"
)


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


# ---------------------------------------------------------------- worker side

Predictor = Callable[[list], Any]

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
        raise ModelLoadError(f"could not load model {spec.uri}: this worker cannot import TensorFlow "
                             f"({first_line(exc)}): install it on every worker (pip install tensorflow)") from None
    tf_runtime.configure_threads(tf, spec.intra_op_threads, spec.inter_op_threads)
    try:
        make = _keras_predictor if fmt == "keras" else _savedmodel_predictor
        predict = make(tf, local)
        warm_up = predict(["warm-up: traces the graph and starts the runtime before the first task"])
        predict.output_shape = tuple(getattr(warm_up, "shape", (1,))[1:])  # per document
        return predict
    except ModelLoadError as exc:
        raise type(exc)(f"could not load model {spec.uri}: {exc}") from None
    except Exception as exc:  # any failure here means the model file itself is unusable
        raise ModelLoadError(f"could not load model {spec.uri}: {_reason(exc)}") from None


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


def _savedmodel_predictor(tf, path: str) -> Predictor:
    loaded = tf.saved_model.load(path)
    signatures = loaded.signatures
    if not signatures:
        raise ValueError("the SavedModel has no serving signature")
    fn = signatures.get("serving_default") or next(iter(signatures.values()))
    _, inputs = fn.structured_input_signature
    kinds = ", ".join(f"{name}: {spec.dtype.name}" for name, spec in sorted(inputs.items()))
    if len(inputs) != 1 or next(iter(inputs.values())).dtype != tf.string:
        raise NotATextModel(f"its serving signature takes {kinds}, not one string input; {TOKEN_IDS_ADVICE}")
    (name, spec), = inputs.items()
    column = spec.shape.rank == 2
    output = sorted(fn.structured_outputs)[0]

    def predict(texts: list):
        return fn(**{name: _string_batch(tf, texts, column)})[output].numpy()

    predict.model = loaded  # keep the trackable objects alive with the function
    widths = compat.padded_widths(fn.graph)  # none: it tokenizes some other way, unknown here
    predict.fixed_length = bool(widths) and None not in widths
    return predict


def _keras_predictor(tf, path: str) -> Predictor:
    import keras

    if not zipfile.is_zipfile(path):  # Keras would say "File not found" of it
        raise ModelLoadError("it is not a .keras file: not a zip archive (truncated or corrupt?)")
    _import_packages_of(path)
    _check_vocabularies(path)
    model = keras.saving.load_model(path, compile=False)
    preprocessor = getattr(model, "preprocessor", None)  # a keras_hub task: text in, through it
    if preprocessor is not None:
        column, forward = False, lambda x: model(preprocessor(x), training=False)
        # keras_hub's packers pad every document to the preprocessor's sequence_length
        fixed = getattr(preprocessor, "sequence_length", None) is not None
    elif len(model.inputs) == 1 and model.inputs[0].dtype == "string":
        column, forward = len(model.inputs[0].shape) == 2, lambda x: model(x, training=False)
        fixed = _vectorizes_to_fixed_length(model)
    else:
        kinds = ", ".join(f"{i.name}: {i.dtype}" for i in model.inputs)
        raise NotATextModel(f"it takes {kinds}, not one string input; {TOKEN_IDS_ADVICE}")
    spec = tf.TensorSpec((None, 1) if column else (None,), tf.string)
    # One traced graph for every batch, whatever its documents' lengths (the batch is a
    # vector of strings; tokenizing and padding happen inside): no retracing per shape,
    # and calling the tf.function would match its signature again on every batch (~0.1 ms).
    function = tf.function(forward, input_signature=[spec])
    call = function.get_concrete_function()

    def predict(texts: list):
        return call(_string_batch(tf, texts, column)).numpy()

    predict.traces = function.experimental_get_tracing_count  # 1, whatever the batches (tested)
    predict.fixed_length = fixed
    return predict


def _vectorizes_to_fixed_length(model) -> bool:
    """Whether every TextVectorization in model (however deep) gives each document the
    same width whatever its length: a fixed output_sequence_length, or counts over the
    vocabulary. False when there is none: the model tokenizes some other way, unknown here."""
    import keras

    found = []
    for layer in compat.sublayers(model):
        if isinstance(layer, keras.layers.TextVectorization):
            config = layer.get_config()
            found.append(config.get("output_mode") != "int" or config.get("output_sequence_length") is not None)
    return bool(found) and all(found)


def _import_packages_of(path: str) -> None:
    """Import the packages whose layers a .keras file names (keras_hub, a user's own), so that
    Keras finds their classes; a package this worker lacks is named in one line."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = archive.read("config.json").decode("utf-8")
    except (OSError, KeyError, zipfile.BadZipFile):
        return  # not a .keras archive: Keras' own loader says what is wrong
    packages = {module.split(".", 1)[0] for module in re.findall(r'"module":\s*"([\w.]+)"', config)}
    for package in sorted(packages - {"keras", "builtins", "tensorflow", "numpy"}):
        try:
            importlib.import_module(package)
        except ImportError:
            raise ModelLoadError(
                f"the model needs the Python package '{package}', which this worker lacks: install it on every "
                f"worker (e.g. pip install {package.replace('_', '-')})") from None


# What str.splitlines() splits at besides "\n": Keras joins a vocabulary with "\n" and reads it back
# with splitlines(), so a token holding one of these loads as two, every later index shifts by
# one, and the model scores with the wrong words, or fails on a "repeated term" with no hint.
_LINE_BREAKS = "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def _check_vocabularies(path: str) -> None:
    """A .keras file whose saved vocabulary Keras would read back wrong is refused in one line,
    rather than loaded to give other scores than the model gave when it was saved."""
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if name.startswith("assets/") and name.endswith("/vocabulary.txt"):
                text = archive.read(name).decode("utf-8", "replace")
                found = next((c for c in text if c in _LINE_BREAKS), None)
                if found:
                    raise ModelLoadError(
                        f"a token of its vocabulary ({name}) holds U+{ord(found):04X}, which Keras reads back as a line "
                        "break: the vocabulary would load shifted and the scores be wrong; replace such characters in "
                        "the text before adapt(), and save the model again")


def _string_batch(tf, texts: list, column: bool):
    """texts as the model's string input, shaped (n,) or (n, 1); shaped in numpy, which
    costs less than one more TensorFlow op per batch."""
    array = np.array(texts, dtype=object)
    return tf.constant(array.reshape(-1, 1) if column else array, dtype=tf.string)
