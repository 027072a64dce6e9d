"""Models named the way MLflow names them (runs:/, models:/, mlflow-artifacts:/), resolved and
downloaded through MLflow's own client, with the settings MLflow users already have:
MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME / PASSWORD / TOKEN, MLFLOW_S3_ENDPOINT_URL and
the AWS_* variables; and the batch run logged to MLflow (log_run, in mlflow_logging).

An alias is resolved once, on the driver, to a version: the workers get `pinned_uri`. Nothing
here imports TensorFlow; MLflow itself is imported only when one of these functions is called.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import re
import warnings
from dataclasses import dataclass, replace
from typing import Any, Dict, Iterator, Mapping, Optional

from daskinfer.errors import ConfigError
from daskinfer.mlflow_client import LOOKUP, TRANSFER, LogFailed, import_mlflow, is_missing, one_line_errors, \
    require_tracking_uri, settings

log = logging.getLogger("daskinfer")
__all__ = ["LogFailed", "ResolvedModel", "download", "is_mlflow_uri", "log_run", "resolve"]

SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")
USAGE = "runs:/<run_id>/<path>, models:/<name>/<version>, models:/<name>@<alias> or mlflow-artifacts:/<path>"


def is_mlflow_uri(uri: Any) -> bool:
    """True for the URIs MLflow resolves: runs:/, models:/ and mlflow-artifacts:/."""
    return isinstance(uri, str) and uri.startswith(SCHEMES)


@dataclass(frozen=True)
class ResolvedModel:
    """What an MLflow URI named when it was resolved. `pinned_uri` never holds an alias (or a
    stage): the workers load from it, so all of them score with the same version."""

    uri: str  # as given
    pinned_uri: str  # runs:/<run_id>/<path>, models:/<name>/<version>, models:/<model_id>, ...
    location: str  # where the files are (mlflow-artifacts:/..., s3://...): the cache key
    run_id: Optional[str] = None
    name: Optional[str] = None
    version: Optional[str] = None
    alias: Optional[str] = None
    tracking_uri: str = ""  # credentials removed
    content: str = ""  # what changes when the files at location do (_content)

    def cache_key(self) -> str:
        """The name of this model's folder in the model cache: the run, the artifact path and
        what its files were when resolved, so that a model logged again over them (a run's
        artifacts, an mlflow-artifacts:/ path, are writable) is downloaded again."""
        return "mlflow-" + hashlib.sha256(f"{self.run_id}\n{self.location}\n{self.content}".encode()).hexdigest()[:32]

    def as_dict(self) -> Dict[str, Any]:
        """What summary.json says the URI resolved to."""
        version = int(self.version) if self.version and self.version.isdigit() else self.version
        return {"uri": self.pinned_uri, "run_id": self.run_id, "name": self.name, "version": version,
                "alias": self.alias, "source": self.location, "tracking_uri": self.tracking_uri,
                "content": self.content}

    @classmethod
    def from_dict(cls, said: Mapping[str, Any]) -> "ResolvedModel":
        """The model as_dict describes, pinned: what a worker gets, to fetch the files the
        driver resolved without asking the tracking server again (on the driver's machine
        they are in the cache already)."""
        version = said.get("version")
        return cls(said["uri"], said["uri"], said["source"], said.get("run_id"), said.get("name"),
                   None if version is None else str(version), said.get("alias"), said.get("tracking_uri", ""),
                   said.get("content", ""))


def resolve(uri: str) -> ResolvedModel:
    """uri resolved once through MLflow's client (an alias to its version), without downloading.

    Raises FileNotFoundError (no such model, version, alias, run or artifact), PermissionError
    (credentials refused), ConnectionError (server down or not answering) or ConfigError (not
    an MLflow URI, MLflow missing, no tracking server set), each with one line, within 30 s.
    """
    mlflow = import_mlflow(f"inference.model_path={uri}")
    with settings(LOOKUP), one_line_errors(f"MLflow model {uri}"):
        tracking = require_tracking_uri(mlflow, f"inference.model_path={uri}")
        client = mlflow.MlflowClient()
        if uri.startswith("runs:/"):
            found = _resolve_run(client, uri, tracking)
        elif uri.startswith("models:/"):
            found = _resolve_model(client, uri, tracking)
        else:
            found = _resolve_location(mlflow, uri, tracking)
        return replace(found, content=_content(mlflow, found.location))


def _content(mlflow, location: str) -> str:
    """A digest of what is stored at location, asked of the artifact store without downloading
    the model: every file's path and size, and the MLflow model's MLmodel file, whose
    model_uuid and utc_time_created change each time a model is logged (retrained weights
    keep their sizes)."""
    location = location.rstrip("/")
    sha, files = hashlib.sha256(), []
    pending = [location]
    while pending:
        listed = pending.pop()
        # paths come relative to the listed URI's parent (mlflow.artifacts.list_artifacts)
        for info in mlflow.artifacts.list_artifacts(artifact_uri=listed):
            full = f"{posixpath.dirname(listed)}/{info.path}"
            if info.is_dir:
                pending.append(full)
            else:
                files.append((full[len(location) + 1:], info.file_size))
    if not files:  # a file (a .keras) lists nothing itself: its folder does
        base = posixpath.basename(location)
        files = [("", info.file_size) for info in mlflow.artifacts.list_artifacts(artifact_uri=posixpath.dirname(location))
                 if info.path.rpartition("/")[2] == base]
    for relative, size in sorted(files):
        sha.update(f"{relative}\t{size}\n".encode())
    if any(name == "MLmodel" for name, _ in files):
        sha.update(mlflow.artifacts.load_text(f"{location}/MLmodel").encode())
    return sha.hexdigest()


def download(resolved: ResolvedModel, dest: str) -> str:
    """The model's files downloaded into the folder dest, streamed to disk by MLflow (never held
    in memory); returns the local path of the model (dest/<last part of its location>)."""
    mlflow = import_mlflow(f"inference.model_path={resolved.uri}")
    with settings(TRANSFER), one_line_errors(f"MLflow model {resolved.uri}"):
        return mlflow.artifacts.download_artifacts(artifact_uri=resolved.location, dst_path=dest)


# ---------------------------------------------------------------- resolving each kind of URI

def _resolve_run(client, uri: str, tracking: str) -> ResolvedModel:
    """runs:/<run_id>/<path>: an artifact of the run, or (MLflow 3) a model logged by the run
    under that name, whose files live outside the run's artifacts."""
    run_id, _, path = uri[len("runs:/"):].strip("/").partition("/")
    if not run_id or not path:
        raise ConfigError(f"not an MLflow model URI: {uri} (expected {USAGE})")
    run = _lookup(lambda: client.get_run(run_id), uri, f"no MLflow run {run_id} at {tracking}")
    parent = path.rpartition("/")[0]
    listed = {info.path for info in client.list_artifacts(run_id, parent or None)}
    if path in listed:
        location = f"{run.info.artifact_uri.rstrip('/')}/{path}"
    else:
        location = _logged_model_location(client, run, path)
        if location is None:
            have = ", ".join(sorted(p.rpartition("/")[2] for p in listed)) or "no artifacts"
            where = f" under {parent}" if parent else ""
            logged = sorted({model.name for model in _models_logged_by(client, run)})
            logged_too = f"; models it logged: {', '.join(logged)}" if logged else ""
            raise FileNotFoundError(f"MLflow model {uri} not found: run {run_id} has no artifact '{path}' "
                                    f"(it has {have}{where}{logged_too})")
    return ResolvedModel(uri, f"runs:/{run_id}/{path}", location, run_id, tracking_uri=tracking)


def _logged_model_location(client, run, path: str) -> Optional[str]:
    """Where a model that run logged with MLflow 3 (name = path's first part) keeps its files."""
    name, _, rest = path.partition("/")
    model = next(_models_logged_by(client, run, name), None)
    return None if model is None else model.artifact_location.rstrip("/") + (f"/{rest}" if rest else "")


def _models_logged_by(client, run, name: Optional[str] = None) -> Iterator[Any]:
    """The models run logged the MLflow 3 way (of that name, if given); none from an MLflow 2
    client or server, which have no logged models."""
    if not hasattr(client, "search_logged_models"):
        return
    token, named = None, f"name = '{name}'" if name is not None else None
    while True:  # a sweep logs many models in an experiment: page through them all
        try:
            found = client.search_logged_models(experiment_ids=[run.info.experiment_id], filter_string=named,
                                                max_results=100, page_token=token)
        except Exception as exc:
            if getattr(exc, "error_code", "") == "ENDPOINT_NOT_FOUND" or "404" in str(exc):
                return
            raise
        yield from (model for model in found if model.source_run_id == run.info.run_id)
        token = found.token
        if not token:
            return


def _resolve_model(client, uri: str, tracking: str) -> ResolvedModel:
    """models:/<name>/<version>, models:/<name>@<alias>, models:/<name>/<stage or latest>,
    models:/<model_id> (MLflow 3), each optionally followed by a path inside the model."""
    parts = uri[len("models:/"):].strip("/").split("/")
    if "@" in parts[0]:
        (name, alias), ref, sub = parts[0].split("@", 1), None, parts[1:]
    elif len(parts) == 1 and parts[0].startswith("m-"):
        return _resolve_logged_model(client, uri, parts[0], tracking)
    elif len(parts) >= 2 and parts[0] and parts[1]:
        (name, ref), alias, sub = parts[:2], None, parts[2:]
    else:
        raise ConfigError(f"not an MLflow model URI: {uri} (expected {USAGE})")
    if not name or (alias is not None and not alias):
        raise ConfigError(f"not an MLflow model URI: {uri} (expected {USAGE})")
    version = _version(client, uri, name, ref, alias, tracking)
    location = client.get_model_version_download_uri(name, version.version).rstrip("/")
    tail = "/".join(sub)
    return ResolvedModel(uri, f"models:/{name}/{version.version}" + (f"/{tail}" if tail else ""),
                         location + (f"/{tail}" if tail else ""), version.run_id or None, name,
                         str(version.version), alias, tracking)


def _version(client, uri: str, name: str, ref: Optional[str], alias: Optional[str], tracking: str):
    """The model version that alias, or ref (a number, a stage, latest), names: asked once."""
    if alias is not None:
        return _missing_said(lambda: client.get_model_version_by_alias(name, alias), client, uri, name, tracking,
                             lambda model, versions: f"no alias '{alias}' (it has "
                             f"{', '.join(sorted(getattr(model, 'aliases', None) or {})) or 'no aliases'})")
    if ref.isdigit():
        return _missing_said(lambda: client.get_model_version(name, ref), client, uri, name, tracking,
                             lambda model, versions: f"no version {ref} (it has {', '.join(versions) or 'none'})")
    with warnings.catch_warnings():  # stages are deprecated in MLflow 3, and still work
        warnings.simplefilter("ignore")
        stages = None if ref.lower() == "latest" else [ref]
        found = _lookup(lambda: client.get_latest_versions(name, stages), uri,
                        f"no registered model named '{name}' at {tracking}")
    if not found:
        raise FileNotFoundError(f"MLflow model {uri} not found: registered model '{name}' has no version in stage '{ref}'")
    return max(found, key=lambda v: int(v.version))


def _missing_said(call, client, uri: str, name: str, tracking: str, lacks):
    """call(); when what it asks for does not exist, a FileNotFoundError that says what the
    registered model has instead (lacks(model, its versions)), or that there is no such model."""
    try:
        return call()
    except Exception as exc:
        if not is_missing(exc):
            raise
    model = _lookup(lambda: client.get_registered_model(name), uri, f"no registered model named '{name}' at {tracking}")
    versions = sorted((v.version for v in client.search_model_versions(f"name = '{name}'")), key=int)
    raise FileNotFoundError(f"MLflow model {uri} not found: registered model '{name}' has {lacks(model, versions)}")


def _resolve_logged_model(client, uri: str, model_id: str, tracking: str) -> ResolvedModel:
    model = _lookup(lambda: client.get_logged_model(model_id), uri, f"no logged model {model_id} at {tracking}")
    return ResolvedModel(uri, uri, model.artifact_location.rstrip("/"), model.source_run_id, tracking_uri=tracking)


def _resolve_location(mlflow, uri: str, tracking: str) -> ResolvedModel:
    """mlflow-artifacts:/<path>: a place in the server's artifact store, already pinned."""
    listed = mlflow.artifacts.list_artifacts(artifact_uri=uri)
    if not listed:  # a file lists nothing: look for it in its folder
        parent, _, base = uri.rstrip("/").rpartition("/")
        if base not in {p.path.rpartition("/")[2] for p in mlflow.artifacts.list_artifacts(artifact_uri=parent)}:
            raise FileNotFoundError(f"MLflow model {uri} not found: nothing is stored there")
    run = re.search(r"/([0-9a-f]{32})/artifacts(?:/|$)", uri)
    return ResolvedModel(uri, uri, uri.rstrip("/"), run.group(1) if run else None, tracking_uri=tracking)


def _lookup(call, uri: str, reason: str):
    """call(), with "does not exist" said as reason."""
    try:
        return call()
    except Exception as exc:
        if is_missing(exc):
            raise FileNotFoundError(f"MLflow model {uri} not found: {reason}") from None
        raise


def log_run(cfg, summary: Mapping[str, Any], files: Mapping[str, str], results_uri: str) -> Optional[str]:
    """Log a finished batch run to MLflow when inference.mlflow.log is true (see mlflow_logging);
    None when it is false. Raises LogFailed, one line, which the caller reports as a warning:
    the results are already written and stay as they are."""
    from daskinfer import mlflow_logging

    return mlflow_logging.log_run(cfg, summary, files, results_uri)


def log_run_or_warn(cfg, summary: Mapping[str, Any], files: Mapping[str, str], results_uri: str) -> None:
    """log_run, its failure a warning in the log."""
    try:
        logged = log_run(cfg, summary, files, results_uri)
        if logged:
            log.info("Logged to MLflow: run %s", logged)
    except LogFailed as exc:
        log.warning("%s", exc)
