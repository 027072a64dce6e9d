"""The whole job, in the order data flows: list the inputs, cut them into partitions,
score the partitions on the workers, stream the results into one ordered JSONL.

The command line submits the partitions as tasks in input order and writes each as its
turn comes; notebooks get the same partitions as a lazy dask bag (records_bag)."""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import itertools
import logging
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional

import dask
import dask.bag as db
from omegaconf import DictConfig, OmegaConf

from daskinfer import cluster, config, model, predict, sink, sources
from daskinfer.errors import ErrorBudgetExceeded, Interrupted, RunFailed, first_line

log = logging.getLogger("daskinfer")


@dataclass
class Job:
    """What the driver knows before any work starts."""

    cfg: DictConfig
    docs: sources.Listing
    settings: predict.Settings
    output_uri: str


@dataclass
class RunResult:
    output_uri: str
    summary: Dict[str, Any]


def prepare(cfg: DictConfig) -> Job:
    """List the inputs and settle everything a task needs."""
    inf = cfg.inference
    options = OmegaConf.to_container(cfg.storage.options, resolve=True)
    docs = sources.list_documents(inf.input_data_dir, inf.input_glob, inf.recursive, options)
    spec = model.ModelSpec(
        uri=inf.model_path,
        storage_options=options,
        intra_op_threads=cfg.cluster.tf_intra_op_threads,
        inter_op_threads=cfg.cluster.tf_inter_op_threads,
        cache_dir=inf.model_cache_dir,
    )
    settings = predict.Settings(
        model=spec,
        encoding=inf.encoding,
        batch_size=inf.batch_size,
        threshold=inf.threshold,
        labels=tuple(inf.labels),
        max_document_bytes=inf.max_document_bytes,
        storage_options=options,
    )
    return Job(cfg, docs, settings, inf.output_path or sink.default_output_path())


def groups(job: Job, n_threads: int, docs: Optional[Iterable[sources.Document]] = None, count: Optional[int] = None):
    """The input documents cut into partitions (consecutive groups of files, by count and
    bytes), made lazily so the driver never holds them all as objects."""
    inf = job.cfg.inference
    docs = job.docs if docs is None else docs
    size = sources.partition_size(len(job.docs) if count is None else count, n_threads, inf.partition_size)
    return sources.group(docs, size, inf.partition_bytes)


def partitions(job: Job, n_threads: int) -> db.Bag:
    """A bag of the input documents, one partition per group of files."""
    return db.from_delayed([dask.delayed(g, traverse=False) for g in groups(job, n_threads)])


def records_bag(cfg: DictConfig, n_threads: int = 1) -> db.Bag:
    """A lazy bag of prediction records (dicts), for notebooks: `.to_dataframe()`, `.filter()`...

    Failed documents are left out; run() reports them in errors.jsonl.
    """
    check(cfg)
    job = prepare(cfg)
    return partitions(job, n_threads).map_partitions(predict.score_partition_records, job.settings)


def run(cfg: DictConfig, client=None) -> RunResult:
    """Run the job on client (or on the configured cluster) and write the outputs.

    Raises ErrorBudgetExceeded after writing everything when too many documents failed,
    and Interrupted (with what to run to resume) on Ctrl-C or SIGTERM.
    """
    started = time.monotonic()
    check(cfg)
    # Listing a large input takes seconds, and so does starting workers: do both at once.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        listing = pool.submit(prepare, cfg)
        with contextlib.nullcontext(client) if client is not None else cluster.connect(cfg.cluster) as live:
            job = listing.result()
            out = sink.OrderedSink(job.output_uri, job.settings.storage_options, resume=cfg.inference.resume)
            skipped = sum(1 for doc in job.docs if doc.uri in out.done) if out.done else 0
            todo = len(job.docs) - skipped
            cluster.describe(live, cfg.cluster)
            log.info("Scoring %d documents from %s", todo, cfg.inference.input_data_dir)
            if skipped:
                log.info("Resuming %s: %d documents already done", job.output_uri, skipped)
            try:
                model_loads = _score(job, todo, live, out) if todo else {}
            except KeyboardInterrupt:
                if out.abandon():
                    raise Interrupted(job.output_uri) from None
                raise
            except BaseException:
                out.abandon()
                raise
    summary = _summary(job, out, skipped, todo, time.monotonic() - started, model_loads)
    out.commit(summary, config.to_yaml(job.cfg))
    _report(job, summary)
    return RunResult(job.output_uri, summary)


def check(cfg: DictConfig) -> None:
    """What can be checked in a moment, before any cluster starts: the input folder, the
    model and the output path. User errors there fail fast, with nothing started."""
    inf = cfg.inference
    options = OmegaConf.to_container(cfg.storage.options, resolve=True)
    sources.check_folder(inf.input_data_dir, options)
    model.locate(inf.model_path, options)
    if inf.output_path and not inf.resume:
        sink.refuse_existing(inf.output_path, options)


def _score(job: Job, todo: int, client, out: sink.OrderedSink) -> Dict[str, int]:
    """Score the documents not done yet on client's workers, writing each partition as its turn comes."""
    n_threads = cluster.total_threads(client)
    docs = (doc for doc in job.docs if doc.uri not in out.done) if out.done else iter(job.docs)
    check = cluster.watch_workers(client, job.cfg.cluster.wait_for_workers_s)
    progress = Progress(todo)
    try:
        parts = groups(job, n_threads, docs, count=todo)
        for results, errors in _in_order(client, parts, job.settings, 2 * n_threads + 2, check):
            out.write(results, errors)
            progress.update(out.results.written + out.errors.written)
    finally:
        progress.close()
    return client.run(model.load_count, job.settings.model.uri)


def _summary(job: Job, out: sink.OrderedSink, skipped: int, scored: int, elapsed: float, model_loads) -> Dict[str, Any]:
    return {
        "documents": len(job.docs),
        "predicted": out.results.count,
        "errors": out.errors.count,
        "skipped": skipped,
        "elapsed_s": round(elapsed, 3),
        "docs_per_s": round(scored / elapsed, 1) if elapsed else None,
        "model_loads": model_loads,
        "output": job.output_uri,
    }


def _report(job: Job, summary: Dict[str, Any]) -> None:
    """The closing log lines; the last is the output location, or the budget error."""
    log.info(
        "Scored %d documents (%d errors, %d skipped) in %.1f s, %.0f docs/s",
        summary["documents"] - summary["skipped"], summary["errors"], summary["skipped"],
        summary["elapsed_s"], summary["docs_per_s"] or 0,
    )
    errors_uri = sink.sidecar(job.output_uri, sink.ERRORS_NAME)
    if summary["errors"]:
        log.info("Errors: %s", errors_uri)
    budget = job.cfg.inference.error_budget
    if summary["errors"] > budget * summary["documents"]:
        log.info("Output result location: %s", job.output_uri)
        raise ErrorBudgetExceeded(
            f"{summary['errors']} of {summary['documents']} documents failed, above "
            f"inference.error_budget={budget:g}; see {errors_uri}"
        )
    log.info("Output result location: %s", job.output_uri)


def _in_order(client, parts: Iterable[List[sources.Document]], settings: predict.Settings, window: int,
              check: Callable[[], None]):
    """Each partition's (results, errors) JSONL bytes, in partition order, with at most
    `window` partitions submitted ahead of the one being written.

    Earlier partitions get higher priority, so the ordered writer can persist results
    from the first seconds on; the window bounds what waits on the workers and what the
    driver holds. Partitions go to the workers as plain tasks (one small pickle each),
    not as a bag's graph, which would be rebuilt and shipped whole for every partition.
    A partition whose worker dies is recomputed elsewhere by dask, and still written
    once, here.
    """
    from distributed.scheduler import KilledWorker

    pending: collections.deque = collections.deque()
    parts = enumerate(parts)
    while True:
        for index, part in itertools.islice(parts, window - len(pending)):
            pending.append(client.submit(
                predict.score_partition_jsonl, part, settings,
                priority=-index, pure=False, key=f"daskinfer-partition-{index}-{uuid.uuid4().hex}",
            ))
        if not pending:
            return
        future = pending.popleft()
        try:
            yield _result(future, check)
        except KilledWorker as exc:
            raise RunFailed(f"workers kept dying while scoring one partition: {first_line(exc)}") from None
        finally:
            future.release()


def _result(future, check: Callable[[], None]):
    """The future's result, calling check() every second while it is not there.

    A finished result can still be lost with its worker and need computing again, so
    this waits with a timeout rather than trusting done().
    """
    while True:
        check()
        try:
            return future.result(timeout=1)
        except TimeoutError:
            continue


class Progress:
    """A one-line progress bar on a terminal; nothing when stderr is not one."""

    def __init__(self, total: int, stream=None):
        self.total, self.stream = total, stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.started = time.monotonic()
        self.last = 0.0

    def update(self, done: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.2 and done < self.total):
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        left = (self.total - done) / rate if rate else float("inf")
        self.stream.write(f"\r{done}/{self.total} documents  {rate:,.0f} docs/s  {left:,.0f} s left   ")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()

