"""`daskinfer plan ARGS`: what a run with the same arguments would do, and how long it would
take, without writing any result. It lists the inputs, starts the configured cluster, times
the model's load and a sample of documents on one worker, and turns that into docs/s and
wall time on this cluster and on 1, 2, 4, ... workers of the same shape."""

from __future__ import annotations

import collections
import json
import os
import re
import resource
import time
from typing import Any, Dict, Iterable, List, Optional, Tuple

from omegaconf import DictConfig

from daskinfer import cluster, compat, ledger, model, planning, predict, scheduling
from daskinfer.partitions import Partition

SAMPLE_PER_THREAD = 2000  # a partition's worth for each thread, spread over the whole listing
PROBE_S = 2.0  # each thread scores for about this long: a short burst gets a core to itself
CHUNK = 100  # documents scored between looks at the clock
WARM_UP = 32
# What a run does after its last result that the plan does not time: the summary,
# report.html and the commit (a run spent 0.7 to 0.8 s after its last result at 40,000
# documents, the digest and ledger that _publishing_s times included: docs/scale.md).
PUBLISH_S = 0.5


def plan(cfg: DictConfig) -> Dict[str, Any]:
    """The plan as a dict (also printed by the command line, see lines())."""
    planning.check(cfg)
    cluster.start_forkserver(cfg.cluster)
    model_info = planning.resolve_model(cfg)
    job = planning.prepare(cfg, model_info)
    inputs = job.source.profile(cfg.inference.max_document_bytes)
    increment = job.increment and job.increment.plan
    if increment and not increment.to_score:  # the run would start no cluster (pipeline._cluster)
        compat.kill_forkserver()  # still importing TensorFlow, for no worker
        return {"inputs": inputs, "incremental": _changes(increment), "probe": None, "estimates": []}
    with cluster.connect(cfg.cluster, job.settings.model) as client:
        ready = _since_process_start()  # the run's start-up: interpreter, imports, listing, cluster, model
        nthreads = client.nthreads()
        threads = scheduling.planned_threads(client, cfg.cluster)
        sample = job.source.sample(SAMPLE_PER_THREAD * sum(nthreads.values()))
        probe = _probe(client, nthreads, sample, job.settings) if sample else None
        close_began = time.monotonic()
    closing = time.monotonic() - close_began
    result = {"inputs": inputs, "start_s": round(ready, 2), "threads": threads,
              "threads_per_worker": max(nthreads.values()) if nthreads else None, "probe": probe,
              "finish_s": round(closing + _publishing_s(job.source), 2)}
    if increment:
        result["incremental"] = _changes(increment)
    to_score = increment.to_score if increment else inputs["documents"] or inputs.get("rows")
    result["estimates"] = _estimates(to_score, ready + result["finish_s"], probe, threads,
                                     result["threads_per_worker"])
    return result


def _changes(increment: Any) -> Dict[str, int]:
    return {"carried": increment.carried, "to_score": increment.to_score, "removed": increment.removed,
            "retried": increment.retried}


def _since_process_start() -> float:
    """Seconds since this process started. On Linux from its start in clock ticks since boot
    (/proc/self/stat) and the clock since boot: psutil's create_time adds the boot time, which
    Linux gives in whole seconds, and was up to a second off here."""
    try:
        with open("/proc/self/stat", "rb") as f:
            ticks = int(f.read().rsplit(b")", 1)[1].split()[19])  # field 22, starttime
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        import psutil  # distributed's own dependency

        return max(0.0, time.time() - psutil.Process().create_time())


def _probe(client: Any, nthreads: Dict[str, int], sample: Any, settings: predict.Settings) -> Dict[str, Any]:
    """The model's load on every worker, then every thread scoring its own slice of the
    sample at once, results sent back as a run sends them: the rate measured this way
    already pays for the threads, the driver and other tenants sharing the cores."""
    warm_up = _cut(sample, slice(WARM_UP))
    loads = client.gather([client.submit(_load, warm_up, settings, workers=[w], pure=False) for w in nthreads])
    slots = [worker for worker, n in sorted(nthreads.items()) for _ in range(n)]
    slices = [_cut(sample, slice(i, None, len(slots))) for i in range(len(slots))]
    began = time.perf_counter()
    scored = client.gather([client.submit(_score_for, piece, settings, PROBE_S, workers=[worker], pure=False)
                            for worker, piece in zip(slots, slices) if len(piece)])
    span = time.perf_counter() - began
    documents = sum(n for n, _ in scored)
    slowest = max(loads, key=lambda load: load["model_load_s"])
    return {"documents": documents, "threads": len(scored), "s_per_document": span * len(scored) / documents,
            "errors": _errors_by_kind(part for _, parts in scored for part in parts), **slowest}


def _errors_by_kind(parts: Iterable[Any]) -> Dict[str, int]:
    """The sample's error entries by kind (an exception's name, or the reason for the model's
    own failures and non-finite scores), most frequent first: what the run would file too."""
    kinds: collections.Counter = collections.Counter()
    for part in parts:
        for line in part.errors.splitlines():
            error = json.loads(line)["error"]
            reason = error[len("ValueError: "):] if error.startswith("ValueError: ") else error
            kinds[re.split(r": | \(", reason, maxsplit=1)[0]] += 1  # "not valid utf-8", "model failed", "OSError"
    return dict(kinds.most_common())


def _load(warm_up: Partition, settings: predict.Settings) -> Dict[str, Any]:
    """On one worker: the model's load (time, memory) and the graph's first calls."""
    before = _rss_mib()
    model.predictor(settings.model)  # loaded once per process, here or by the worker's preload
    load_s = model.load_seconds(settings.model.uri)
    predict.score(warm_up, settings)
    return {"model_load_s": round(load_s, 3), "worker_rss_mib": round(_rss_mib(), 1),
            "rss_before_load_mib": round(before, 1)}


def _score_for(piece: Any, settings: predict.Settings, seconds: float) -> Tuple[int, List[Any]]:
    """Score piece as a run does, a chunk at a time, until it is done or seconds have passed."""
    began, results, done = time.perf_counter(), [], 0
    while done < len(piece) and time.perf_counter() - began < seconds:
        chunk = _cut(piece, slice(done, done + CHUNK))
        results.append(predict.score(chunk, settings))
        done += len(chunk)
    return done, results


def _cut(sample: Any, part: slice) -> Any:
    """sample[part] as a piece to score: a Partition's slice is a list of its documents, of()
    keeps what the listing knows of each; a sample of table rows slices as itself."""
    cut = sample[part]
    return Partition.of(cut) if isinstance(sample, Partition) else cut


def _publishing_s(source: Any) -> float:
    """What the run's publishing will cost: the inputs' digest and the ledger, timed on this
    listing, plus the fixed part."""
    began = time.perf_counter()
    if source.digest() is not None:  # a complete listing (not a manifest, not tables)
        ledger.encode(source.documents(), ledger.Notes(source.tables))
    return time.perf_counter() - began + PUBLISH_S


def _rss_mib() -> float:
    try:
        with open(f"/proc/{os.getpid()}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _estimates(documents: Optional[int], fixed_s: float, probe: Optional[Dict[str, Any]], threads: int,
               per_worker: Optional[int]) -> List[Dict[str, Any]]:
    """docs/s and wall time for this cluster and for 1, 2, 4, ... workers of its shape: each
    thread scoring at the sampled rate, plus the start-up and finish this plan itself took."""
    if not documents or not probe:
        return []
    rate = 1 / probe["s_per_document"]
    per_worker = per_worker or 1
    shapes: List[Tuple[str, int]] = [("this cluster", threads)]
    workers = 1
    while workers <= max(64, 2 * threads // per_worker):
        shapes.append((f"{workers} worker(s) x {per_worker} thread(s)", workers * per_worker))
        workers *= 2
    return [{"cluster": name, "threads": n, "docs_per_s": round(n * rate, 1),
             "wall_s": round(fixed_s + documents / (n * rate), 1)} for name, n in shapes]


def lines(result: Dict[str, Any]) -> List[str]:
    """The plan as a person reads it."""
    inputs = result["inputs"]
    if inputs["documents"] is not None:
        counted = f"{inputs['documents']} documents"
    else:
        rows = f"{inputs['rows']:,} rows" if inputs["rows_exact"] else f"about {inputs['rows']:,} rows"
        counted = f"{inputs['tables']} table file(s), {rows}"
    out = [f"inputs: {counted}" + (f", {inputs['bytes']:,} bytes" if inputs["bytes"] else "")]
    out += [f"  {bucket:>18}: {n}" for bucket, n in inputs["sizes"].items()]
    out += [f"would be errors: {n} ({why})" for why, n in inputs["skipped"].items()]
    if "incremental" in result:
        changes = result["incremental"]
        out.append(f"incremental: {changes['to_score']} to score (new or changed), {changes['carried']} carried "
                   f"unchanged, {changes['removed']} removed since the previous run")
    if "threads" not in result:
        return out + ["nothing new or changed to score: a run would copy every line from the previous run, "
                      "with no cluster"]
    probe = result["probe"]
    if probe:
        out.append(f"model: loaded in {probe['model_load_s']:.2f} s on a worker, which then holds "
                   f"{probe['worker_rss_mib']:.0f} MiB")
        out.append(f"sample: {probe['documents']} documents on {probe['threads']} thread(s) at once, "
                   f"{1 / probe['s_per_document']:,.0f} docs/s a thread")
        if probe["errors"]:
            kinds = ", ".join(f"{kind}: {n}" for kind, n in probe["errors"].items())
            out.append(f"  of them errors: {sum(probe['errors'].values())} ({kinds})")
    out.append(f"cluster: {result['threads']} thread(s), started with the model {result['start_s']:.1f} s after the "
               f"process; closing and publishing about {result['finish_s']:.1f} s")
    for row in result["estimates"]:
        out.append(f"  {row['cluster']:>28}: {row['docs_per_s']:>10,.0f} docs/s, about {row['wall_s']:,.1f} s")
    return out
