"""From a configuration to what a run needs before any work: its source of documents,
the settings every task gets, and the checks that fail fast, before any cluster starts."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from daskinfer import (config, evaluation, incremental, ledger, listing, manifest, model, model_files, outputs, run_report,
                       sources, storage)
from daskinfer.predict import Settings
from daskinfer.sources import Source


@dataclass
class Job:
    cfg: DictConfig
    source: Source
    settings: Settings
    increment: Optional["Increment"] = None  # an incremental run's previous run and plan


@dataclass
class Increment:
    previous: incremental.Previous
    plan: incremental.Plan


def storage_options(cfg: DictConfig) -> Dict[str, Any]:
    return OmegaConf.to_container(cfg.storage.options, resolve=True)


def model_spec(cfg: DictConfig, described: Optional[Dict[str, Any]] = None) -> model.ModelSpec:
    """How workers find and run the model. described: the model as the driver found it
    (resolve_model): the workers load its pinned URI (an MLflow alias pinned to its version),
    so that every one scores with the same model, fetch what the driver resolved, and know its
    content (sha256), which a worker that loaded other content at that URI loads anew."""
    described = described or {}
    return model.ModelSpec(
        uri=pinned_uri(described, cfg.inference.model_path) if described else cfg.inference.model_path,
        storage_options=storage_options(cfg),
        intra_op_threads=cfg.cluster.tf_intra_op_threads,
        inter_op_threads=cfg.cluster.tf_inter_op_threads,
        cache_dir=cfg.inference.model_cache_dir,
        sha256=described.get("sha256"),
        mlflow=described.get("resolved"),
        output=cfg.inference.model_output,
    )


def settings(cfg: DictConfig, described: Optional[Dict[str, Any]] = None) -> Settings:
    inf = cfg.inference
    return Settings(
        model=model_spec(cfg, described),
        encoding=inf.encoding,
        batch_size=inf.batch_size,
        threshold=inf.threshold,
        labels=tuple(inf.labels),
        all_scores=inf.all_scores,
        labels_from=inf.labels_from,
        max_document_bytes=inf.max_document_bytes,
        storage_options=storage_options(cfg),
        output_format=inf.output_format,
        length_batching=inf.length_batching,
        max_batch_chars=inf.max_batch_chars,
    )


def check(cfg: DictConfig, writes: bool = True) -> None:
    """What can be checked in a moment, before any cluster starts: the inputs, the model,
    the output path (for a run that writes one) and the scheduler's address. User errors
    there fail fast."""
    config.check(cfg)  # again: a notebook may have changed cfg since load_config checked it
    inf, options = cfg.inference, storage_options(cfg)
    storage.check_endpoint((inf.input_manifest, inf.input_data_dir, inf.model_path, inf.output_path, inf.reference,
                            inf.incremental_from), options)
    if inf.input_manifest:
        manifest.check_manifest(inf.input_manifest, options)
    else:
        listing.check_folder(inf.input_data_dir, options)
    model_files.locate(inf.model_path, options, inf.model_cache_dir)
    if inf.input_format == "files":
        evaluation.check(inf.labels_from, inf.labels)
    if inf.output_path and writes:
        outputs.check_output_path(inf.output_path, options, inf.resume)
    if inf.reference:
        run_report.check_reference(inf.reference, options)
    if inf.incremental_from:
        incremental.locate(inf.incremental_from, options)
    if cfg.cluster.address:
        from daskinfer.remote_scheduler import check_remote

        check_remote(cfg.cluster)


def prepare(cfg: DictConfig, described: Optional[Dict[str, Any]] = None) -> Job:
    """List the inputs (or read the tables' schemas) and settle what every task needs (the
    model as resolve_model described it); in an incremental run, which documents keep their
    previous records."""
    source = sources.open_source(cfg.inference, storage_options(cfg))
    sha256 = (described or {}).get("sha256")
    return Job(cfg, source, settings(cfg, described), increment(cfg, source, sha256))


def increment(cfg: DictConfig, source: Source, model_sha256: Optional[str]) -> Optional[Increment]:
    """With inference.incremental_from: the previous run, checked to have made the same
    predictions (unless inference.incremental_rescore), and what to carry from it."""
    inf, options = cfg.inference, storage_options(cfg)
    if not inf.incremental_from:
        return None
    previous = incremental.locate(inf.incremental_from, options)
    if not inf.incremental_rescore:
        incremental.check_same_predictions(previous, model_sha256, recorded_settings(cfg), inf.incremental_from)
        incremental.check_carriable(previous, options, inf.incremental_from)
    retry = incremental.failed_documents(previous, options, source.tables) if inf.retry_errors else None
    plan = incremental.plan(source.documents(), lambda: ledger.read(previous.ledger, options), retry, source.sorted)
    if inf.incremental_rescore:
        plan = incremental.Plan(plan.carry * 0, removed=plan.removed)
    return Increment(previous, plan)


def recorded_settings(cfg: DictConfig) -> Dict[str, Any]:
    """The settings summary.json records (incremental.COMPARED among them)."""
    inf = cfg.inference
    return {"inputs": input_location(cfg), "model_output": inf.model_output, "threshold": inf.threshold, "labels": list(inf.labels), "batch_size": inf.batch_size,
            "length_batching": inf.length_batching, "max_batch_chars": inf.max_batch_chars,
            "all_scores": inf.all_scores, "encoding": inf.encoding, "input_format": inf.input_format,
            "text_column": inf.text_column, "id_column": inf.id_column, "max_document_bytes": inf.max_document_bytes}


def resolve_model(cfg: DictConfig) -> Dict[str, Any]:
    """What summary.json's `model` says (model_files.describe), resolved once on the driver;
    its resolved["uri"] is the URI workers load (an MLflow alias pinned to a version)."""
    return model_files.describe(cfg.inference.model_path, storage_options(cfg), cfg.inference.model_cache_dir)


def pinned_uri(described: Dict[str, Any], given: str) -> str:
    """The URI workers load: an MLflow URI pinned to its version; a relative local path made
    absolute, as the driver found it (a remote cluster's workers run in folders of their own)."""
    resolved = (described.get("resolved") or {}).get("uri")
    if resolved:
        return resolved
    return absolute(given)


def absolute(given: str) -> str:
    """A path or URI as another process finds it again: a relative local path made absolute."""
    return os.path.abspath(storage.expand_user(given)) if storage.protocol_of(given) is None else given


def input_location(cfg: DictConfig) -> Optional[str]:
    """Where the inputs are listed from (the manifest, else the folder or table), as a resume
    must find them again: documents of another folder are not those it began with."""
    given = cfg.inference.input_manifest or cfg.inference.input_data_dir
    return absolute(given).rstrip("/") if given else None


# What changes a document's record, besides the model (inference.model_path: its digest).
PREDICTION_KEYS = incremental.COMPARED


def prediction_settings(cfg: DictConfig, model_digest: Optional[str]) -> Dict[str, Any]:
    """Everything that changes what a document's record says, and where the documents are
    listed from: two runs that differ here cannot share one output (a resume refuses, naming
    the difference)."""
    inf = OmegaConf.to_container(cfg.inference, resolve=True)
    return {"inference.model_path": model_digest or inf["model_path"], "inputs": input_location(cfg),
            **{f"inference.{key}": inf[key] for key in PREDICTION_KEYS}}


def recorded_prediction(summary: Dict[str, Any], tables: Optional[Dict[str, List[int]]]) -> Dict[str, Any]:
    """prediction_settings as a finished run's summary.json recorded them, with its tables'
    versions from its ledger: what a resume that adds to a finished output must match, as a
    resume of an interrupted one matches what its lock file recorded."""
    model, settings = summary.get("model") or {}, summary.get("settings") or {}
    found = {"inference.model_path": model.get("sha256") or model.get("uri"),
             **{f"inference.{key}": settings[key] for key in PREDICTION_KEYS if key in settings}}
    if "inputs" in settings:  # (not in the summaries of earlier versions)
        found["inputs"] = settings["inputs"]
    return {**found, "tables": tables} if tables is not None else found
