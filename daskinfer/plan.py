"""`daskinfer plan ARGS`: what a run with the same arguments would do, and how long it would
take, without writing any result. It lists the inputs, starts the configured cluster, times
the model's load and a sample of documents on one worker, and turns that into docs/s and
wall time on this cluster and on 1, 2, 4, ... workers of the same shape."""

from __future__ import annotations

import os
import resource
import time
from typing import Any, Dict, List, Optional, Tuple

from omegaconf import DictConfig

from daskinfer import cluster, model, planning, predict, scheduling
from daskinfer.partitions import Partition

SAMPLE = 1000  # documents timed on one worker, spread over the whole listing
WARM_UP = 32


def plan(cfg: DictConfig) -> Dict[str, Any]:
    """The plan as a dict (also printed by the command line, see lines())."""
    started = time.monotonic()
    planning.check(cfg)
    cluster.start_forkserver(cfg.cluster)
    model_info = planning.resolve_model(cfg)
    job = planning.prepare(cfg, planning.pinned_uri(model_info, cfg.inference.model_path), model_info["sha256"])
    inputs = job.source.profile(cfg.inference.max_document_bytes)
    increment = job.increment and job.increment.plan
    with cluster.connect(cfg.cluster, planning.model_spec(cfg)) as client:
        ready = time.monotonic() - started
        nthreads = client.nthreads()
        threads = scheduling.planned_threads(client, cfg.cluster)
        sample = job.source.sample(SAMPLE)
        worker = sorted(nthreads)[0]
        probe = client.submit(_probe, sample, job.settings, workers=[worker], pure=False).result() if sample else None
    result = {"inputs": inputs, "start_s": round(ready, 2), "threads": threads,
              "threads_per_worker": max(nthreads.values()) if nthreads else None, "probe": probe}
    if increment:
        result["incremental"] = {"carried": increment.carried, "to_score": increment.to_score,
                                 "removed": increment.removed, "retried": increment.retried}
    to_score = increment.to_score if increment else inputs["documents"]
    result["estimates"] = _estimates(to_score, ready, probe, threads, result["threads_per_worker"])
    return result


def _probe(sample: Partition, settings: predict.Settings) -> Dict[str, Any]:
    """On one worker: the model's load (time, memory) and the time per document of a sample,
    read and scored as a run scores it."""
    before = _rss_mib()
    loading = time.perf_counter()
    model.predictor(settings.model)  # loaded once per process: its load, or the wait for its preload
    load_s = time.perf_counter() - loading
    predict.score(Partition(sample.uris[:WARM_UP], sample.sizes[:WARM_UP]), settings)  # the graph's first calls
    timing = time.perf_counter()
    predict.score(sample, settings)
    per_doc = (time.perf_counter() - timing) / len(sample)
    return {"documents": len(sample), "s_per_document": per_doc, "model_load_s": round(load_s, 3),
            "worker_rss_mib": round(_rss_mib(), 1), "rss_before_load_mib": round(before, 1)}


def _rss_mib() -> float:
    try:
        with open(f"/proc/{os.getpid()}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _estimates(documents: Optional[int], start_s: float, probe: Optional[Dict[str, Any]], threads: int,
               per_worker: Optional[int]) -> List[Dict[str, Any]]:
    """docs/s and wall time for this cluster and for 1, 2, 4, ... workers of its shape: each
    thread scoring at the sampled rate, after the start-up this plan itself took."""
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
             "wall_s": round(start_s + documents / (n * rate), 1)} for name, n in shapes]


def lines(result: Dict[str, Any]) -> List[str]:
    """The plan as a person reads it."""
    inputs = result["inputs"]
    out = [f"inputs: {inputs['documents']} documents" + (f", {inputs['bytes']:,} bytes" if inputs["bytes"] else "")]
    out += [f"  {bucket:>18}: {n}" for bucket, n in inputs["sizes"].items()]
    out += [f"would be errors: {n} ({why})" for why, n in inputs["skipped"].items()]
    if "incremental" in result:
        changes = result["incremental"]
        out.append(f"incremental: {changes['to_score']} to score (new or changed), {changes['carried']} carried "
                   f"unchanged, {changes['removed']} removed since the previous run")
    probe = result["probe"]
    if probe:
        out.append(f"model: loaded in {probe['model_load_s']:.2f} s on a worker, which then holds "
                   f"{probe['worker_rss_mib']:.0f} MiB")
        out.append(f"sample: {probe['documents']} documents at {1 / probe['s_per_document']:,.0f} docs/s on one thread")
    out.append(f"cluster: {result['threads']} thread(s), started with the model in {result['start_s']:.1f} s")
    for row in result["estimates"]:
        out.append(f"  {row['cluster']:>28}: {row['docs_per_s']:>10,.0f} docs/s, about {row['wall_s']:,.1f} s")
    return out
