"""Where a model is and what it is, decided on the driver without TensorFlow: its format,
found from what is on disk, a digest of its files, and a local copy for the workers.

Supported, each detected from what is on disk:
  savedmodel  a TensorFlow SavedModel folder (legacy tf.keras `model.save(dir)`,
              Keras 3 `model.export(dir)`, or any SavedModel with a string signature)
  keras       a Keras 3 `.keras` file (also the only .keras file of a folder)
  mlflow      an MLflow model folder (holds `MLmodel`), or an MLflow run's folder holding
              artifacts/model; resolved to the model inside

A model named by an MLflow URI (runs:/, models:/, mlflow-artifacts:/) is resolved through
MLflow (mlflow_models) and downloaded once per machine into the model cache, where it is then
an MLflow model folder like any other; its digest is recorded beside it at download.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import posixpath
import shutil
import tempfile
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple

import yaml

from daskinfer import mlflow_models, storage

FETCHED = "daskinfer-model.json"  # beside an MLflow model in the cache: its format, digest, path


def locate(uri: str, storage_options: Mapping[str, Any], cache_dir: Optional[str] = None,
           resolved: Optional[Mapping[str, Any]] = None) -> Tuple[str, str]:
    """(format, uri of the loadable model) for a model path, following MLflow folders.

    An MLflow URI is resolved (unless resolved, describe's, says what the driver found) and
    its model fetched into the cache (once per machine): the uri returned is then the local
    path of the loadable model inside.
    Raises FileNotFoundError when nothing loadable is there.
    """
    if mlflow_models.is_mlflow_uri(uri):
        fetched = _fetch_mlflow(uri, cache_dir, resolved and mlflow_models.ResolvedModel.from_dict(resolved))
        return fetched["format"], fetched["path"]
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


def local_copy(uri: str, storage_options: Mapping[str, Any], cache_dir: Optional[str]) -> str:
    """A local path to the model: itself when local, else a cached download.

    The cache is keyed by URI and the objects' ETags and sizes (an MLflow model: by its
    resolved run and artifact path), so a changed model is fetched again.
    """
    if mlflow_models.is_mlflow_uri(uri):
        return _fetch_mlflow(uri, cache_dir)["path"]
    fs, path = storage.filesystem(uri, storage_options)
    if storage.is_local(fs):
        return path
    files = fs.find(path, detail=True) if fs.isdir(path) else {path: fs.info(path)}
    fingerprint = json.dumps(
        [uri] + [(name, info.get("ETag"), info.get("size")) for name, info in sorted(files.items())]
    )
    key = hashlib.sha256(fingerprint.encode()).hexdigest()[:32]
    name = posixpath.basename(path.rstrip("/"))

    def fetch(staging: str) -> None:
        base = posixpath.dirname(path.rstrip("/"))
        remote = sorted(files)
        fs.get(remote, [os.path.join(staging, posixpath.relpath(r, base)) for r in remote])

    return os.path.join(_cached(cache_root(cache_dir), key, fetch), name)


def digest(uri: str, storage_options: Mapping[str, Any], cache_dir: Optional[str] = None) -> Dict[str, str]:
    """The model's format and a sha256 of its files (their names under the model and their
    bytes; on object stores their sizes and ETags, so nothing is downloaded to the driver).
    An MLflow model is hashed from its cached copy by its bytes: the same on any machine."""
    if mlflow_models.is_mlflow_uri(uri):
        fetched = _fetch_mlflow(uri, cache_dir)
        return {"format": fetched["format"], "sha256": fetched["sha256"]}
    fmt, loadable = locate(uri, storage_options)
    fs, path = storage.filesystem(loadable, storage_options)
    with storage.storage_errors(uri, "the model "):
        return {"format": fmt, "sha256": _hash_files(fs, path)}


def describe(uri: str, storage_options: Mapping[str, Any], cache_dir: Optional[str] = None) -> Dict[str, Any]:
    """summary.json's `model`: the URI as given, what it resolved to (an MLflow URI; None for
    a path), the format and the sha256. Resolves an alias once: `resolved["uri"]` is the
    pinned URI the workers must load (see mlflow_models.ResolvedModel)."""
    if not mlflow_models.is_mlflow_uri(uri):
        return {"uri": uri, "resolved": None, **digest(uri, storage_options)}
    resolved = mlflow_models.resolve(uri)
    fetched = _fetch_mlflow(uri, cache_dir, resolved)
    return {"uri": uri, "resolved": resolved.as_dict(), "format": fetched["format"], "sha256": fetched["sha256"]}


def cache_root(cache_dir: Optional[str]) -> str:
    return os.path.expanduser(cache_dir or os.path.join("~", ".cache", "daskinfer", "models"))


def _fetch_mlflow(uri: str, cache_dir: Optional[str],
                  resolved: Optional[mlflow_models.ResolvedModel] = None) -> Dict[str, str]:
    """The MLflow model in this machine's cache (downloaded unless there): its format, sha256
    and the local path of the loadable model inside, recorded at download in FETCHED."""
    resolved = resolved or mlflow_models.resolve(uri)

    def fetch(staging: str) -> None:
        model = mlflow_models.download(resolved, staging)
        try:
            fmt, loadable = locate(model, {})
        except FileNotFoundError as exc:  # said of the URI, not of a temporary folder
            raise FileNotFoundError(str(exc).replace(model, uri)) from None
        fs, _ = storage.filesystem(loadable)
        with open(os.path.join(staging, FETCHED), "w", encoding="utf-8") as f:
            json.dump({"uri": resolved.pinned_uri, "source": resolved.location, "format": fmt,
                       "sha256": _hash_files(fs, loadable), "path": os.path.relpath(loadable, staging)}, f)

    target = _cached(cache_root(cache_dir), resolved.cache_key(), fetch)
    with open(os.path.join(target, FETCHED), encoding="utf-8") as f:
        fetched = json.load(f)
    return {**fetched, "path": os.path.join(target, fetched["path"])}


def _cached(root: str, key: str, fetch: Callable[[str], None]) -> str:
    """root/key, filled by fetch(staging folder) unless already there. One process per machine
    downloads (a lock file), into a temporary name renamed into place, so another worker never
    sees a half-written copy, and an interrupted download is never mistaken for a model."""
    target = os.path.join(root, key)
    if os.path.isdir(target):
        return target
    os.makedirs(root, exist_ok=True)
    with _machine_lock(os.path.join(root, f".{key}.lock")):
        if os.path.isdir(target):  # another process fetched it while this one waited
            return target
        staging = tempfile.mkdtemp(prefix=".download-", dir=root)
        try:
            fetch(staging)
            try:
                os.rename(staging, target)
            except OSError:  # a cache shared with another machine: its copy came first
                pass
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


@contextlib.contextmanager
def _machine_lock(path: str) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        yield


def _hash_files(fs, path: str) -> str:
    """sha256 of the files under path (or of the file): their names relative to path, then
    their bytes (local) or their sizes and ETags (object stores)."""
    local = storage.is_local(fs)
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
    return sha.hexdigest()
