"""A finished batch run logged to MLflow (inference.mlflow.*), as MLflow users expect to find
it next to the training run: the prediction settings and the model URI as parameters, the
counts, rate and evaluation as metrics, summary.json, errors and config.yaml (and, when asked,
the results) as artifacts, and tags that link the model's run and version.

It runs after the results are published: a failure here is one line for a warning, and the
results stay as they are. Whether MLflow can take the record at all is checked before any work
(check), so that a run that scores for an hour is not the first to find the server unset or down.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from typing import Any, Dict, Mapping, Optional

from omegaconf import DictConfig, OmegaConf

from daskinfer import mlflow_client, mlflow_models, reporting, storage
from daskinfer.mlflow_client import LogFailed
from daskinfer.errors import ConfigError, first_line

DEFAULT_EXPERIMENT = "daskinfer"
ARTIFACT_NAMES = {"summary": "summary.json", "errors": "errors.jsonl", "config": "config.yaml"}
COUNTS = ("documents", "predicted", "errors", "skipped", "docs_per_s", "elapsed_s")
MAX_PARAM = 6000  # MLflow's limit on a parameter's value


def check(cfg: DictConfig) -> None:
    """When the run is to be logged, before any work: MLflow installed, a tracking server set
    (ConfigError) and answering (ConnectionError, PermissionError), and the experiment named
    not deleted (ConfigError: MLflow would refuse the record only after the scoring), each in
    one line."""
    if not cfg.inference.mlflow.log:
        return
    mlflow = mlflow_client.import_mlflow("inference.mlflow.log=true")
    with mlflow_client.settings(mlflow_client.LOOKUP), mlflow_client.one_line_errors("the batch run's MLflow record"):
        mlflow_client.require_tracking_uri(mlflow, "inference.mlflow.log=true")
        client = mlflow.MlflowClient()
        client.search_experiments(max_results=1)
        name = cfg.inference.mlflow.experiment
        found = client.get_experiment_by_name(name) if name else None
    if found is not None and found.lifecycle_stage == "deleted":
        raise ConfigError(f"inference.mlflow.experiment={name}: that MLflow experiment is deleted; restore it "
                          f"(mlflow experiments restore --experiment-id {found.experiment_id}) or name another")


def log_run(cfg: DictConfig, summary: Mapping[str, Any], files: Mapping[str, str], results_uri: str) -> Optional[str]:
    """Log the run when inference.mlflow.log is true: returns the MLflow run's id (None when
    logging is off). files: the sidecars' URIs by kind (errors, summary, config), as
    outputs' claim names them. Raises LogFailed with one line."""
    wanted = cfg.inference.mlflow
    if not wanted.log:
        return None
    what = "the batch run's MLflow record"
    try:
        mlflow = mlflow_client.import_mlflow("inference.mlflow.log=true")
        with mlflow_client.settings(mlflow_client.TRANSFER), mlflow_client.one_line_errors(what):
            mlflow_client.require_tracking_uri(mlflow, "inference.mlflow.log=true")
            return _log(mlflow.MlflowClient(), cfg, summary, files, results_uri)
    except Exception as exc:  # anything at all: the results are written, this must not lose them
        raise LogFailed(f"not logged to MLflow: {mlflow_client.scrub(first_line(exc))}") from None


def _log(client, cfg: DictConfig, summary: Mapping[str, Any], files: Mapping[str, str], results_uri: str) -> str:
    model = _model(summary, cfg)
    experiment = _experiment_id(client, cfg.inference.mlflow.experiment, model)
    run = client.create_run(experiment, run_name=cfg.inference.mlflow.run_name, tags=tags(model))
    run_id = run.info.run_id
    try:
        _log_values(client, run_id, cfg, summary, model)
        _log_files(client, run_id, cfg, files, results_uri)
    except BaseException:
        _terminate(client, run_id, "FAILED")
        raise
    # a run over its error budget exits non-zero: MLflow shows it as failed too
    client.set_terminated(run_id, "FAILED" if reporting.over_budget(summary, cfg.inference.error_budget) else "FINISHED")
    return run_id


def _model(summary: Mapping[str, Any], cfg: DictConfig) -> Dict[str, Any]:
    """summary's model entry with what the URI resolved to. A summary made without it (a
    caller that only digested the model) gets it resolved now."""
    model = dict(summary.get("model") or {"uri": cfg.inference.model_path})
    if model.get("resolved") is None and mlflow_models.is_mlflow_uri(model.get("uri")):
        model["resolved"] = mlflow_models.resolve(model["uri"]).as_dict()
    return model


def _experiment_id(client, name: Optional[str], model: Mapping[str, Any]) -> str:
    """The named experiment (made if missing); unnamed, the model's training run's experiment,
    so that the batch run sits next to it, or DEFAULT_EXPERIMENT for a model from elsewhere."""
    run_id = (model.get("resolved") or {}).get("run_id")
    if name is None and run_id:
        return client.get_run(run_id).info.experiment_id
    name = name or DEFAULT_EXPERIMENT
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # another run made it meanwhile
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def tags(model: Mapping[str, Any]) -> Dict[str, str]:
    """Tags that link the batch run to the model that made its results."""
    resolved = model.get("resolved") or {}
    found = {
        "daskinfer.model_uri": model.get("uri"),
        "daskinfer.model_run_id": resolved.get("run_id"),
        "daskinfer.model_name": resolved.get("name"),
        "daskinfer.model_version": resolved.get("version"),
        "daskinfer.model_sha256": model.get("sha256"),
    }
    return {key: str(value) for key, value in found.items() if value is not None}


def params(cfg: DictConfig, summary: Mapping[str, Any], model: Mapping[str, Any]) -> Dict[str, str]:
    """The settings that change a prediction, the model and the inputs."""
    inf = cfg.inference
    settings = summary.get("settings") or {
        "threshold": inf.threshold, "labels": list(inf.labels), "batch_size": inf.batch_size,
        "all_scores": inf.all_scores, "encoding": inf.encoding}
    found = {
        **settings,
        "model_uri": model.get("uri"),
        "model_resolved_uri": (model.get("resolved") or {}).get("uri"),
        "model_format": model.get("format"),
        "input_format": inf.input_format,
        "inputs": inf.input_manifest or inf.input_data_dir,
    }
    return {key: _param_text(value) for key, value in found.items() if value is not None}


def metrics(summary: Mapping[str, Any]) -> Dict[str, float]:
    """The counts and rate, and the evaluation's accuracy and per-label F1 when there is one."""
    found = {key: summary[key] for key in COUNTS if isinstance(summary.get(key), (int, float))}
    evaluation = summary.get("evaluation") or {}
    if evaluation.get("accuracy") is not None:
        found["accuracy"] = evaluation["accuracy"]
    for label, figures in (evaluation.get("per_label") or {}).items():
        found[f"f1_{_metric_name(label)}"] = figures["f1"]
    return {key: float(value) for key, value in found.items()}


def _log_values(client, run_id: str, cfg: DictConfig, summary: Mapping[str, Any], model: Mapping[str, Any]) -> None:
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(key, value, now, 0) for key, value in metrics(summary).items()],
        params=[Param(key, value) for key, value in params(cfg, summary, model).items()],
    )


def _log_files(client, run_id: str, cfg: DictConfig, files: Mapping[str, str], results_uri: str) -> None:
    """The sidecars under their plain names (whatever this run's names were), and the results
    under results/<their name> when inference.mlflow.log_results is true. Files on object stores are
    copied to a temporary folder first: MLflow logs local files."""
    options = OmegaConf.to_container(cfg.storage.options, resolve=True)
    with tempfile.TemporaryDirectory(prefix="daskinfer-mlflow-") as staging:
        for kind, name in ARTIFACT_NAMES.items():
            if files.get(kind):
                _stage(files[kind], os.path.join(staging, name), options)
        if os.listdir(staging):
            client.log_artifacts(run_id, staging)
        if cfg.inference.mlflow.log_results:
            local = os.path.join(staging, "results", os.path.basename(storage.path_on(results_uri).rstrip("/")))
            if _stage(results_uri, local, options):
                client.log_artifact(run_id, local, "results")


def _stage(uri: str, local: str, options: Mapping[str, Any]) -> bool:
    """uri copied to local (a link when it can be); False when there is no such file."""
    fs, path = storage.filesystem(uri, options)
    with storage.storage_errors(uri):
        if not fs.exists(path):
            return False
        os.makedirs(os.path.dirname(local), exist_ok=True)
        if storage.is_local(fs):
            try:
                os.link(path, local)  # the results may be large: no copy when on one disk
            except OSError:
                shutil.copyfile(path, local)
        else:
            fs.get(path, local)
    return True


def _terminate(client, run_id: str, status: str) -> None:
    try:
        client.set_terminated(run_id, status)
    except Exception:  # the reason it failed is the one worth reporting
        pass


def _param_text(value: Any) -> str:
    text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return text if len(text) <= MAX_PARAM else text[: MAX_PARAM - 3] + "..."


def _metric_name(label: Any) -> str:
    """A label as MLflow accepts it in a metric's name (letters, digits, _ - . / and spaces)."""
    return re.sub(r"[^\w\-./ ]", "_", str(label))
