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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

from omegaconf import DictConfig, OmegaConf

from daskinfer import cluster, config, evaluation, model, predict, sink, sources, tables
from daskinfer.errors import ConfigError, ErrorBudgetExceeded, Interrupted, RunFailed, first_line, root_cause

if TYPE_CHECKING:
    import dask.bag as db

log = logging.getLogger("daskinfer")


@dataclass
class Job:
    """What the driver knows before any work starts: document files (a listing or a
    manifest), or table files with their lazy dask DataFrames."""

    cfg: DictConfig
    docs: Optional[Union[sources.Listing, sources.Manifest]]
    tables: Optional[List[Tuple[str, Any]]]
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
    if inf.input_manifest:
        inputs = sources.Manifest(inf.input_manifest, options)
    else:
        glob = inf.input_glob or tables.DEFAULT_GLOBS[inf.input_format]
        inputs = sources.list_documents(inf.input_data_dir, glob, inf.recursive, options)
    docs, frames = inputs, None
    if inf.input_format != "files":
        columns = table_columns(cfg)
        docs, frames = None, [
            (doc.uri, tables.frame(doc.uri, inf.input_format, columns, options, inf.partition_bytes)) for doc in inputs
        ]
    settings = predict.Settings(
        model=model_spec(cfg),
        encoding=inf.encoding,
        batch_size=inf.batch_size,
        threshold=inf.threshold,
        labels=tuple(inf.labels),
        all_scores=inf.all_scores,
        labels_from=inf.labels_from,
        max_document_bytes=inf.max_document_bytes,
        storage_options=options,
    )
    output = inf.output_path or sink.default_output_path(inf.output_format)
    return Job(cfg, docs, frames, settings, output)


def model_spec(cfg: DictConfig) -> model.ModelSpec:
    return model.ModelSpec(
        uri=cfg.inference.model_path,
        storage_options=OmegaConf.to_container(cfg.storage.options, resolve=True),
        intra_op_threads=cfg.cluster.tf_intra_op_threads,
        inter_op_threads=cfg.cluster.tf_inter_op_threads,
        cache_dir=cfg.inference.model_cache_dir,
    )


def table_columns(cfg: DictConfig) -> tables.Columns:
    inf = cfg.inference
    return tables.Columns(inf.text_column, inf.id_column, inf.labels_from)


def groups(job: Job, n_threads: int, docs: Optional[Iterable[sources.Document]] = None, count: Optional[int] = None):
    """The input documents cut into partitions (consecutive groups of files, by count and
    bytes), made lazily so the driver never holds them all as objects."""
    inf = job.cfg.inference
    docs = job.docs if docs is None else docs
    size = sources.partition_size(len(job.docs) if count is None else count, n_threads, inf.partition_size)
    return sources.group(docs, size, inf.partition_bytes)


def partitions(job: Job, n_threads: int) -> db.Bag:
    """A bag of the input documents, one partition per group of files."""
    import dask  # here, not at the top: the command line starts its workers before importing dask
    import dask.bag as db

    return db.from_delayed([dask.delayed(g, traverse=False) for g in groups(job, n_threads)])


def records_bag(cfg: DictConfig, n_threads: int = 1) -> db.Bag:
    """A lazy bag of prediction records (dicts), for notebooks: `.to_dataframe()`, `.filter()`...

    Failed documents are left out; run() reports them in errors.jsonl. Document files
    only: a table's row numbers are known only once it is read, which run() does.
    """
    check(cfg)
    if cfg.inference.input_format != "files":
        raise ConfigError("records_bag reads document files; score tables with run() and read its output")
    job = prepare(cfg)
    return partitions(job, n_threads).map_partitions(predict.score_partition_records, job.settings)


def run(cfg: DictConfig, client=None) -> RunResult:
    """Run the job on client (or on the configured cluster) and write the outputs.

    Raises ErrorBudgetExceeded after writing everything when too many documents failed,
    and Interrupted (with what to run to resume) on Ctrl-C or SIGTERM.
    """
    started = time.monotonic()
    check(cfg)
    if client is None:
        cluster.start_forkserver(cfg.cluster)
    # Listing a large input takes seconds, and so does starting workers: do both at once.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        listing = pool.submit(prepare, cfg)
        with contextlib.nullcontext(client) if client is not None else cluster.connect(cfg.cluster, model_spec(cfg)) as live:
            job = listing.result()
            out = sink.OrderedSink(job.output_uri, job.settings.storage_options, resume=cfg.inference.resume,
                                   output_format=cfg.inference.output_format)
            cluster.describe(live, cfg.cluster)
            log.info("Scoring %s from %s", _what(job), cfg.inference.input_manifest or cfg.inference.input_data_dir)
            try:
                scoring = _score(job, live, out)
            except KeyboardInterrupt:
                if out.abandon():
                    raise Interrupted(job.output_uri) from None
                raise
            except BaseException:
                out.abandon()
                raise
    summary = _summary(job, out, time.monotonic() - started, scoring)
    out.commit(summary, config.to_yaml(job.cfg))
    _report(job, summary)
    return RunResult(job.output_uri, summary)


def _what(job: Job) -> str:
    if job.docs is not None:
        return f"{len(job.docs)} documents"
    return f"the rows of {len(job.tables)} {job.cfg.inference.input_format} file(s)"


def check(cfg: DictConfig) -> None:
    """What can be checked in a moment, before any cluster starts: the inputs, the model
    and the output path. User errors there fail fast, with nothing started."""
    inf = cfg.inference
    options = OmegaConf.to_container(cfg.storage.options, resolve=True)
    if inf.input_manifest:
        sources.check_manifest(inf.input_manifest, options)
    else:
        sources.check_folder(inf.input_data_dir, options)
    model.locate(inf.model_path, options)
    if inf.input_format == "files":
        evaluation.check(inf.labels_from, inf.labels)
    if inf.output_path and not inf.resume:
        sink.refuse_existing(inf.output_path, options)


@dataclass
class Scoring:
    """What the driver gathers besides the output files, as partitions come back."""

    documents: int = 0
    skipped: int = 0
    tally: Optional[evaluation.Tally] = None
    by_worker: Dict[str, int] = field(default_factory=dict)  # worker address -> documents
    model_loads: Dict[str, int] = field(default_factory=dict)

    def add(self, part: predict.PartitionResult) -> None:
        documents = part.results.count(b"\n") + part.errors.count(b"\n")
        self.by_worker[part.worker] = self.by_worker.get(part.worker, 0) + documents
        if part.tally is not None:
            if self.tally is None:
                self.tally = part.tally
            else:
                self.tally.merge(part.tally)


def _score(job: Job, client, out: sink.OrderedSink) -> Scoring:
    """Score what is not done yet on client's workers, writing each partition as its turn comes."""
    scoring = Scoring()
    n_threads = cluster.planned_threads(client, job.cfg.cluster)
    check = cluster.watch_workers(client, job.cfg.cluster.wait_for_workers_s)
    if job.docs is not None:
        tasks = _file_tasks(job, out, scoring, n_threads)
    else:
        tasks = _table_tasks(job, client, out, scoring, n_threads, check)
    progress = Progress(scoring.documents - scoring.skipped if job.docs is not None else None)
    try:
        for part in _in_order(client, tasks, cluster.tasks_ahead(n_threads, job.cfg.cluster), check):
            out.write(part.results, part.errors)
            scoring.add(part)
            progress.update(out.results.written + out.errors.written)
    finally:
        progress.close()
    if out.results.written + out.errors.written:
        scoring.model_loads = client.run(model.load_count, job.settings.model.uri)
    return scoring


def _file_tasks(job: Job, out: sink.OrderedSink, scoring: Scoring, n_threads: int):
    """One task per group of document files; counts are known before the first."""
    scoring.documents = len(job.docs)
    if out.done:
        scoring.skipped = sum(1 for doc in job.docs if doc.uri in out.done)
        log.info("Resuming %s: %d documents already done", job.output_uri, scoring.skipped)
    todo = scoring.documents - scoring.skipped
    docs = (doc for doc in job.docs if doc.uri not in out.done) if out.done else job.docs
    return ((predict.score_partition_jsonl, (part, job.settings)) for part in groups(job, n_threads, docs, todo))


def _table_tasks(job: Job, client, out: sink.OrderedSink, scoring: Scoring, n_threads: int, check):
    """One task per slice of table rows. Each dask partition is read on a worker (the next
    one read while this one is scored); its length, once known, decides the slices."""
    inf, columns = job.cfg.inference, table_columns(job.cfg)
    next_row: Dict[str, int] = {}  # per table: the row number of the next partition's first row
    for uri, frame in _read_ahead(client, job.tables):
        try:
            n_rows = _result(client.submit(len, frame), check)
        except (TimeoutError, ConnectionError):
            raise
        except Exception as exc:
            root = root_cause(exc)
            raise RunFailed(f"cannot read {uri}: {type(root).__name__}: {first_line(root)}") from None
        first_row = next_row.get(uri, 0)
        next_row[uri] = first_row + n_rows
        per_slice = inf.partition_size or sources.partition_size(n_rows, n_threads, None)
        for rows in tables.slices(n_rows, per_slice):
            numbers = range(first_row + rows.start, first_row + rows.stop)
            skip = [n for n in numbers if f"{uri}#{n}" in out.done] if out.done else []
            scoring.documents += len(rows)
            scoring.skipped += len(skip)
            if len(skip) < len(rows):
                piece = client.submit(tables.take_rows, frame, rows.start, rows.stop, pure=False)
                yield tables.score_rows, (piece, uri, numbers.start, skip, columns, job.settings)
        frame.release()


def _read_ahead(client, frames: List[Tuple[str, Any]]):
    """(uri, future of a partition's rows) for every dask partition of every table, in
    order; the next partition is read while this one is scored."""
    reads = ((uri, client.compute(part)) for uri, frame in frames for part in frame.to_delayed())
    pending = next(reads, None)
    for following in reads:
        yield pending
        pending = following
    if pending is not None:
        yield pending


def _summary(job: Job, out: sink.OrderedSink, elapsed: float, scoring: Scoring) -> Dict[str, Any]:
    scored = scoring.documents - scoring.skipped
    summary = {
        "documents": scoring.documents,
        "predicted": out.results.count,
        "errors": out.errors.count,
        "skipped": scoring.skipped,
        "elapsed_s": round(elapsed, 3),
        "docs_per_s": round(scored / elapsed, 1) if elapsed else None,
        "model_loads": scoring.model_loads,
        "documents_by_worker": dict(sorted(scoring.by_worker.items())),
        "output": job.output_uri,
    }
    if job.settings.labels_from:
        summary["evaluation"] = evaluation.figures(scoring.tally or evaluation.Tally(job.settings.labels))
    return summary


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
    if "evaluation" in summary:
        for line in evaluation.report_lines(summary["evaluation"]):
            log.info("%s", line)
    budget = job.cfg.inference.error_budget
    if summary["errors"] > budget * summary["documents"]:
        log.info("Output result location: %s", job.output_uri)
        raise ErrorBudgetExceeded(
            f"{summary['errors']} of {summary['documents']} documents failed, above "
            f"inference.error_budget={budget:g}; see {errors_uri}"
        )
    log.info("Output result location: %s", job.output_uri)


def _in_order(client, tasks: Iterable[Tuple[Callable, tuple]], window: int, check: Callable[[], None]):
    """Each task's result (a PartitionResult), in task order, with at most `window` tasks
    submitted ahead of the one being written.

    Earlier tasks get higher priority, so the ordered writer can persist results from
    the first seconds on; the window bounds what waits on the workers and what the
    driver holds. Partitions go to the workers as plain tasks (one small pickle each),
    not as a bag's graph, which would be rebuilt and shipped whole for every partition.
    A task whose worker dies is recomputed elsewhere by dask, and still written once, here.
    """
    from distributed.scheduler import KilledWorker

    pending: collections.deque = collections.deque()
    tasks = enumerate(tasks)
    while True:
        for index, (function, args) in itertools.islice(tasks, window - len(pending)):
            pending.append(client.submit(
                function, *args, priority=-index, pure=False, key=f"daskinfer-partition-{index}-{uuid.uuid4().hex}",
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

    def __init__(self, total: Optional[int], stream=None):
        self.total, self.stream = total, stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.started = time.monotonic()
        self.last = 0.0

    def update(self, done: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.2 and done != self.total):
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        if self.total is None:  # a table's rows are counted as they are read
            self.stream.write(f"\r{done} documents  {rate:,.0f} docs/s   ")
        else:
            left = (self.total - done) / rate if rate else float("inf")
            self.stream.write(f"\r{done}/{self.total} documents  {rate:,.0f} docs/s  {left:,.0f} s left   ")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()

