"""The model: find its format (on the driver, without TensorFlow), load it once per
worker process (lazily, on first use), and call it on a batch of raw strings.

Supported, each detected from what is on disk:
  savedmodel  a TensorFlow SavedModel folder (legacy tf.keras `model.save(dir)`,
              Keras 3 `model.export(dir)`, or any SavedModel with a string signature)
  keras       a Keras 3 `.keras` file
  mlflow      an MLflow model folder (holds `MLmodel`); resolved to the model inside
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import numpy as np
import yaml

from daskinfer import storage, tf_runtime
from daskinfer.errors import RunFailed, first_line


class ModelLoadError(RunFailed):
    """The model exists but could not be loaded; retrying will not help."""


@dataclass(frozen=True)
class ModelSpec:
    """Where the model is and how to run it: small, picklable, sent to every task."""

    uri: str
    storage_options: Dict[str, Any] = field(default_factory=dict)
    intra_op_threads: Optional[int] = None
    inter_op_threads: Optional[int] = None
    cache_dir: Optional[str] = None


# ---------------------------------------------------------------- driver side: no TensorFlow


def locate(uri: str, storage_options: Mapping[str, Any]) -> Tuple[str, str]:
    """(format, uri of the loadable model) for a model path, following MLflow folders.

    Raises FileNotFoundError when nothing loadable is there.
    """
    fs, path = storage.filesystem(uri, storage_options)
    with storage.storage_errors(uri, "the model "):
        return _locate(fs, path, uri, storage_options)


def _locate(fs, path: str, uri: str, storage_options: Mapping[str, Any]) -> Tuple[str, str]:
    if not fs.exists(path):
        raise FileNotFoundError(f"model not found: {uri}")
    if not fs.isdir(path):
        if path.endswith((".keras", ".h5")):
            return "keras", uri
        raise FileNotFoundError(f"not a model: {uri} is a file but not a .keras file")
    names = {posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False)}
    if "MLmodel" in names:
        inner = _mlflow_model_path(fs, path)
        return _locate(fs, inner, storage.full_uri(fs, inner), storage_options)
    if "saved_model.pb" in names:
        return "savedmodel", uri
    inner = _model_inside(fs, path, names, uri)
    if inner:
        return _locate(fs, inner, storage.full_uri(fs, inner), storage_options)
    raise FileNotFoundError(
        f"not a model: {uri} holds no saved_model.pb, MLmodel or .keras file"
    )


def _model_inside(fs, path: str, names: set, uri: str) -> Optional[str]:
    """The model a folder holds one level down: its only .keras file, or, in an MLflow run's
    folder, artifacts/model."""
    keras_files = sorted(n for n in names if n.endswith(".keras"))
    if len(keras_files) == 1:
        return posixpath.join(path, keras_files[0])
    if len(keras_files) > 1:
        raise FileNotFoundError(f"{uri} holds several .keras files ({', '.join(keras_files)}): name one")
    if "artifacts" in names and fs.isdir(posixpath.join(path, "artifacts", "model")):
        return posixpath.join(path, "artifacts", "model")
    return None


def _mlflow_model_path(fs, path: str) -> str:
    """The model inside an MLflow model folder, from its MLmodel file."""
    with fs.open(posixpath.join(path, "MLmodel"), "rb") as f:
        flavors = (yaml.safe_load(f) or {}).get("flavors", {})
    for name in ("tensorflow", "keras"):
        flavor = flavors.get(name) or {}
        if flavor.get("saved_model_dir"):
            return posixpath.join(path, flavor["saved_model_dir"])
        if flavor.get("data"):
            data = posixpath.join(path, flavor["data"])
            for candidate in ("model", "model.keras", "model.h5"):
                if fs.exists(posixpath.join(data, candidate)):
                    return posixpath.join(data, candidate)
            return data
    raise FileNotFoundError(
        f"not a TensorFlow model: MLmodel in {path} has flavors {sorted(flavors)}, "
        "expected tensorflow or keras"
    )


# ---------------------------------------------------------------- worker side

Predictor = Callable[[list], Any]

_lock = threading.Lock()
_loaded: Dict[str, Predictor] = {}
_load_counts: Dict[str, int] = {}


def predictor(spec: ModelSpec) -> Predictor:
    """This process's predictor for spec, loaded on first use and then reused."""
    key = json.dumps(asdict(spec), sort_keys=True, default=str)
    found = _loaded.get(key)
    if found is not None:
        return found
    with _lock:
        if key not in _loaded:
            _loaded[key] = _load(spec)
            _load_counts[spec.uri] = _load_counts.get(spec.uri, 0) + 1
        return _loaded[key]


def load_count(uri: str) -> int:
    """How many times this process loaded the model at uri (1 when all is well)."""
    return _load_counts.get(uri, 0)


def _load(spec: ModelSpec) -> Predictor:
    fmt, uri = locate(spec.uri, spec.storage_options)
    local = _local_copy(uri, spec.storage_options, spec.cache_dir)
    tf = tf_runtime.import_tensorflow()
    tf_runtime.configure_threads(tf, spec.intra_op_threads, spec.inter_op_threads)
    try:
        make = _keras_predictor if fmt == "keras" else _savedmodel_predictor
        predict = make(tf, local)
        warm_up = predict(["warm-up: traces the graph and starts the runtime before the first task"])
        predict.output_shape = tuple(getattr(warm_up, "shape", (1,))[1:])  # per document
        return predict
    except Exception as exc:  # any failure here means the model file itself is unusable
        raise ModelLoadError(f"could not load model {spec.uri}: {first_line(exc)}") from None


def _local_copy(uri: str, storage_options: Mapping[str, Any], cache_dir: Optional[str]) -> str:
    """A local path to the model: itself when local, else a cached download.

    The cache is keyed by URI and the objects' ETags and sizes, so a changed model is
    fetched again. A download lands under a temporary name and is renamed into place,
    so a worker never sees another worker's half-written copy.
    """
    fs, path = storage.filesystem(uri, storage_options)
    if storage.is_local(fs):
        return path
    files = fs.find(path, detail=True) if fs.isdir(path) else {path: fs.info(path)}
    fingerprint = json.dumps(
        [uri] + [(name, info.get("ETag"), info.get("size")) for name, info in sorted(files.items())]
    )
    root = os.path.expanduser(cache_dir or os.path.join("~", ".cache", "daskinfer", "models"))
    target = os.path.join(root, hashlib.sha256(fingerprint.encode()).hexdigest()[:32])
    local = os.path.join(target, posixpath.basename(path.rstrip("/")))
    if os.path.exists(local):
        return local
    os.makedirs(root, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".download-", dir=root)
    try:
        base = posixpath.dirname(path.rstrip("/"))
        remote = sorted(files)
        fs.get(remote, [os.path.join(staging, posixpath.relpath(r, base)) for r in remote])
        try:
            os.rename(staging, target)
        except OSError:  # another worker on this machine finished first: use its copy
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return local


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
    if len(inputs) != 1:
        raise ValueError(f"expected one string input, the signature has {sorted(inputs)}")
    (name, spec), = inputs.items()
    if spec.dtype != tf.string:
        raise ValueError(f"expected a string input, the signature's '{name}' is {spec.dtype.name}")
    column = spec.shape.rank == 2
    output = sorted(fn.structured_outputs)[0]

    def predict(texts: list):
        return fn(**{name: _string_batch(tf, texts, column)})[output].numpy()

    predict.model = loaded  # keep the trackable objects alive with the function
    return predict


def _keras_predictor(tf, path: str) -> Predictor:
    import keras

    model = keras.saving.load_model(path, compile=False)
    shape = model.inputs[0].shape
    column = len(shape) == 2
    spec = tf.TensorSpec((None, 1) if column else (None,), tf.string)
    # The traced graph itself: calling the tf.function would match its signature again on
    # every batch (~0.1 ms each).
    call = tf.function(lambda x: model(x, training=False), input_signature=[spec]).get_concrete_function()

    def predict(texts: list):
        return call(_string_batch(tf, texts, column)).numpy()

    return predict


def _string_batch(tf, texts: list, column: bool):
    """texts as the model's string input, shaped (n,) or (n, 1); shaped in numpy, which
    costs less than one more TensorFlow op per batch."""
    array = np.array(texts, dtype=object)
    return tf.constant(array.reshape(-1, 1) if column else array, dtype=tf.string)


def digest(uri: str, storage_options: Mapping[str, Any]) -> Dict[str, str]:
    """The model's format and a sha256 of its files (their names under the model and their
    bytes; on object stores their sizes and ETags, so nothing is downloaded to the driver)."""
    fmt, loadable = locate(uri, storage_options)
    fs, path = storage.filesystem(loadable, storage_options)
    local = storage.is_local(fs)
    with storage.storage_errors(uri, "the model "):
        files = fs.find(path, detail=True) if fs.isdir(path) else {path: fs.info(path)}
        sha = hashlib.sha256()
        for name, info in sorted(files.items()):
            sha.update(posixpath.relpath(name, path).encode("utf-8", "surrogateescape") + b"\0")
            if local:
                with open(name, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        sha.update(block)
            else:
                sha.update(f"{info.get('size')}\t{info.get('ETag')}".encode())
            sha.update(b"\0")
    return {"format": fmt, "sha256": sha.hexdigest()}
