"""The whole job, in the order data flows: check the configuration, plan the source of
documents, claim the output, score the source's units on the cluster in order, and
publish one ordered JSONL (or Parquet) file with its sidecars.

Notebooks get the same units as a lazy dask bag of records (records_bag)."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence

from omegaconf import DictConfig

from daskinfer import (carrying, cluster, config, ledger, model, output_lock, outputs, planning, predict, reporting,
                       resume_changes, run_report, scheduling, sink, storage)
from daskinfer.errors import ConfigError, Incomplete, Interrupted, RunFailed, WorkersDied, first_line

if TYPE_CHECKING:
    import dask.bag as db

log = logging.getLogger("daskinfer")


@dataclass
class RunResult:
    output_uri: str
    summary: Dict[str, Any]


def check(cfg: DictConfig) -> None:
    """Fail fast on what can be checked before any work (see planning.check)."""
    planning.check(cfg)


def records_bag(cfg: DictConfig, n_threads: int = 1) -> db.Bag:
    """A lazy bag of prediction records (dicts), for notebooks: `.to_dataframe()`, `.filter()`...

    Failed documents are left out; run() reports them in errors.jsonl.
    """
    import dask
    import dask.bag as db

    planning.check(cfg, writes=False)
    model_info = planning.resolve_model(cfg)
    job = planning.prepare(cfg, model_info)
    score = dask.delayed(predict.score_records, pure=False)
    return db.from_delayed([score(piece, job.settings, *data) for piece, data in job.source.pieces(n_threads)])


def _reference(uri: str, options: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The reference's stats; a line of it that is no record (its first was checked before
    the run) costs the drift, not the run's results."""
    try:
        return run_report.reference_stats(uri, options)
    except ValueError as exc:
        log.warning("inference.reference %s: %s: %s; no drift in this run's summary", uri, type(exc).__name__,
                    first_line(exc))
        return None


def run(cfg: DictConfig, client: Any = None) -> RunResult:
    """Run the job on client (or on the configured cluster) and write the outputs.

    Raises ErrorBudgetExceeded after writing everything when too many documents failed,
    Interrupted (with what to run to resume) on Ctrl-C or SIGTERM, and Incomplete when
    the run lost its scheduler, its storage or its disk with work already kept.
    """
    started = time.monotonic()
    planning.check(cfg)
    if client is None:
        cluster.start_forkserver(cfg.cluster)  # TensorFlow's import overlaps what follows
    run_report.warm_up()
    inf = cfg.inference
    if inf.mlflow.log:  # after the forkserver's start: MLflow's import takes seconds
        from daskinfer import mlflow_logging

        mlflow_logging.check(cfg)
    model_info = planning.resolve_model(cfg)  # an MLflow alias is resolved here, once
    job = planning.prepare(cfg, model_info)
    pinned = (model_info.get("resolved") or {}).get("uri")
    resume_model = pinned if pinned != inf.model_path else None  # what a resume must name
    prediction = planning.prediction_settings(cfg, model_info["sha256"])
    if job.source.tables:  # rows are known by number: a table changed since would be misnumbered
        prediction["tables"] = job.source.versions()
    uri, made = (storage.expand_user(inf.output_path), None) if inf.output_path else \
        outputs.default_output_path(inf.output_format)
    out = _open_output(uri, made, cfg, prediction, job.source)
    try:
        with _cluster(cfg, job, client) as live:
            if live is not None:
                cluster.describe(live, cfg.cluster)
            log.info("Scoring %s from %s", job.source.describe(), inf.input_manifest or inf.input_data_dir)
            with cluster.performance_report(cfg.cluster.performance_report):
                scoring = _score(job, live, out)
        summary = _publish(cfg, job, out, scoring, model_info, started)
    except KeyboardInterrupt:  # also while publishing: until the commit, the partial files stand
        if out.abandon():
            raise Interrupted(out.uri, resume_model) from None
        raise
    except (ConnectionError, TimeoutError, OSError, WorkersDied) as exc:  # a lost service, a full disk
        if out.abandon():
            # "no dask worker left ..." keeps its line as it has always been; the command
            # to resume goes on the line before it.
            raise Incomplete(str(exc), out.uri, isinstance(exc, TimeoutError), resume_model) from None
        raise
    except RunFailed as exc:  # the model failing on a worker, ...: what other workers wrote stays, to resume
        if out.abandon() and not isinstance(exc, ConfigError):
            raise Incomplete(str(exc), out.uri, model_uri=resume_model) from None
        raise
    except BaseException:
        out.abandon()
        raise
    if inf.mlflow.log:
        from daskinfer import mlflow_models

        mlflow_models.log_run_or_warn(cfg, summary, out.claim.sidecars, out.uri)
    reporting.closing_lines(summary, out.uri, out.claim.sidecars["errors"], inf.error_budget)
    return RunResult(out.uri, summary)


def _cluster(cfg: DictConfig, job: planning.Job, client: Any):
    """The cluster to score on: client's, or one started for this run; none at all for an
    incremental run that has nothing new to score."""
    if client is not None:
        return contextlib.nullcontext(client)
    if job.increment is not None and not job.increment.plan.to_score:
        log.info("Nothing new or changed since %s: no cluster needed", cfg.inference.incremental_from)
        return contextlib.nullcontext(None)
    return cluster.connect(cfg.cluster, job.settings.model)  # the spec the tasks carry: one load a worker


def _publish(cfg: DictConfig, job: planning.Job, out: sink.OrderedSink, scoring: reporting.Scoring,
             model_info: Dict[str, Any], started: float) -> Dict[str, Any]:
    """The summary, the report and the commit: sidecars first, the results last."""
    inf = cfg.inference
    out.settle(job.source, job.source.in_key_order)
    manifest = {
        "model": model_info,
        "inputs": job.source.digest(),
        "settings": planning.recorded_settings(cfg),
        "versions": reporting.versions(),
    }
    increment = job.increment and {"from": inf.incremental_from, "removed": job.increment.plan.removed,
                                   "retried": job.increment.plan.retried}
    summary = reporting.summary(scoring, out.results.count, out.errors.count, time.monotonic() - started,
                                out.uri, inf.labels_from, tuple(inf.labels), manifest, increment)
    reference = _reference(inf.reference, planning.storage_options(cfg)) if inf.reference else None
    stats = out.stats_of_all() or scoring.stats  # a resume's: the earlier runs' lines too
    if reference is not None:
        summary["drift"] = run_report.drift(stats, reference, inf.reference)
    out.commit(summary, config.to_yaml(cfg), run_report.render(summary, stats, scoring.timeline, reference),
               ledger.encode(job.source.documents(), out.notes))
    return summary


def _open_output(uri: str, made: Optional[str], cfg: DictConfig, prediction: Dict[str, Any],
                 source: planning.Source) -> sink.OrderedSink:
    """The output claimed for this run; a resume checks it continues the same predictions."""
    inf, options = cfg.inference, planning.storage_options(cfg)
    held = outputs.claim(uri, options, inf.resume, made, resumable=inf.output_format == "jsonl")
    try:
        before = held.previous.get("prediction") or (inf.resume and _finished_prediction(held, source.tables))
        if inf.resume and before:
            # where the inputs are was not recorded by earlier versions: unknown there, not changed
            changed = [key for key, value in prediction.items()
                       if before.get(key) != value and (key in before or key != "inputs")]
            if changed:
                raise ConfigError(
                    f"cannot resume into {uri}: it was started with other settings or inputs "
                    f"({_differences(changed, before, prediction)}); resume with the same ones, "
                    "or choose another inference.output_path")
        interrupted = bool(held.previous.get("prediction"))
        since = held.previous.get("scored_since_ns") if interrupted else None  # kept through resumes
        held.record({**held.previous, **output_lock.holder(), "prediction": prediction,
                     "scored_since_ns": since or time.time_ns()})
        out = sink.OrderedSink(held, options, resume=inf.resume, output_format=inf.output_format, tables=source.tables,
                               column_types=source.output_types() if source.tables else {})
        if out.done and not source.tables:  # a table that changed is refused above
            finished_ledger = None if interrupted else held.sidecars.get("ledger")
            out.score_again(resume_changes.changed(source.documents(), out.done, since, finished_ledger, options))
    except BaseException:  # the lock file stays only where an interrupted run recorded what to resume
        held.release(keep=bool(held.previous.get("prediction")))
        raise
    if out.done:
        log.info("Resuming %s: %d documents already done", uri, len(out.done))
    elif inf.resume:  # a typo'd output path would otherwise score everything again unannounced
        log.info("Nothing to resume in %s (no earlier run's lines there): scoring every document", uri)
    return out


def _finished_prediction(held: outputs.Claim, tables: bool) -> Optional[Dict[str, Any]]:
    """What a finished output that a resume adds to was scored with (None: nothing finished
    there); a resume is local, and so are its sidecars."""
    try:
        with open(storage.path_on(held.sidecars["summary"]), encoding="utf-8") as f:
            summary = json.load(f)
    except (OSError, ValueError):
        return None
    versions = {name: [size, version] for name, size, version, _ in ledger.read(held.sidecars["ledger"], {})
                } if tables else None
    return planning.recorded_prediction(summary, versions)


def _differences(keys, before: Dict[str, Any], now: Dict[str, Any]) -> str:
    def difference(key: str) -> str:
        if key == "inference.model_path":
            return "another model"
        if key == "tables":
            if key not in before:
                return "by a daskinfer that did not record its tables' versions"
            return _tables_differ(before[key], now[key])
        if key == "inputs":
            return f"inputs from {before[key]} now {now[key]}"  # (a URI with a password is refused)
        return f"{key}={before.get(key)} now {now[key]}"

    return ", ".join(difference(key) for key in keys)


def _tables_differ(before: Dict[str, Any], now: Dict[str, Any]) -> str:
    """The first table that changed, is new, or is gone, of each kind."""
    found = {"changed": [uri for uri in now if uri in before and before[uri] != now[uri]],
             "is new": [uri for uri in now if uri not in before], "is gone": [uri for uri in before if uri not in now]}
    return ", ".join(f"the table {uris[0]} {how} since" for how, uris in found.items() if uris)


def _score(job: planning.Job, client: Any, out: sink.OrderedSink) -> reporting.Scoring:
    """Score what is not done yet on client's workers, writing each unit as its turn comes;
    an incremental run's carried documents are copied from the previous output in theirs."""
    scoring = reporting.Scoring()
    runner = scheduling.Runner(client, job.settings, job.cfg.cluster.wait_for_workers_s)
    n_threads = scheduling.planned_threads(client, job.cfg.cluster) if client is not None else 1
    increment, settings = job.increment, job.settings
    carrier = increment and carrying.Carrier(increment.previous, settings.storage_options, job.source.tables,
                                             settings.labels, settings.labels_from, settings.output_format)
    units = job.source.units(runner, out.done, n_threads, increment.plan.carry if increment else None)
    progress = reporting.Progress(job.source.count)
    try:
        for unit, part in runner.in_order(units, scheduling.tasks_ahead(n_threads, job.cfg.cluster)):
            if unit.carried is not None:
                part, done_before = carrier.take(unit.carried, part, out.done)
                unit = unit._replace(skipped=unit.skipped + done_before)
            if part is not None:
                _write(out, part, ledger.tables_with_results(unit, part) if job.source.tables else ())
            scoring.add(unit, part)
            progress.update(scoring.documents)
    finally:
        progress.close()
        if carrier:
            carrier.close()
    scoring.carried_before = getattr(job.source, "carried_before", 0)  # (a table's rows: not counted)
    if out.written and client is not None:
        scoring.model_loads = client.run(model.load_count, job.settings.model.uri)
        if settings.batch_size > 1:
            scoring.padding_changes_scores = any(client.run(model.padding_changes_scores, settings.model.uri).values())
    return scoring


def _write(out: sink.OrderedSink, part: Any, tables_with_results: Sequence[str]) -> None:
    try:
        out.write(part, tables_with_results)
    except OSError as exc:  # a full disk, a lost mount: the output, not a document, failed
        raise OSError(exc.errno, f"cannot write the output {out.uri}: {exc.strerror or first_line(exc)}") from None

