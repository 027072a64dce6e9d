"""Scale: the figures behind docs/scale.md (how far one driver goes, and what 100 million
documents cost). Prints figures; times nothing against a target.

    python benchmarks/scale.py [--only listing,cli,s3list,requests,scheduler,writer,manifest,plan]
                               [--files 1000000] [--s3-keys 100000] [--s3-run 10000]
                               [--plan-docs 40000,200000] [--repeat 2] [--latency-ms 20]

Everything it makes lives under one folder in /tmp, removed at the end; its servers listen
on 127.0.0.1 only. Sections:

  listing    driver memory of daskinfer.listing.list_documents over 100k and --files
             one-line local files (RSS of a fresh process before and after, and its peak),
             and the local listing rate (files/s)
  cli        a real CLI run over the --files local files: first result on disk (the
             .partial file growing), the log lines' arrival times, the whole run, driver peak RSS
  s3list     list_documents over --s3-keys objects on moto's S3 server (ThreadedMotoServer,
             127.0.0.1), without and with --latency-ms of latency per request: pages/s, keys/s,
             the driver's CPU per page
  requests   a real CLI run over --s3-run objects on the same server (inputs and results on
             S3, the model local): every request the server received, by kind, and what the
             same requests cost for 100 million objects at AWS list prices
  scheduler  a LocalCluster's cost per task (submit + gather of trivial tasks, and of
             partition-shaped ones), and from it the partition size that keeps that cost
             under 1% of a task's scoring time
  writer     the ordered writer's ceiling: JSONL units appended, flushed and fsynced as
             daskinfer/sink.py does, in MB/s and documents/s
  manifest   driver memory of reading a manifest of --files S3 URIs (daskinfer.manifest)
  plan       `daskinfer plan` then the real run, 40k and 200k documents (copies of
             ../shared/data/imdb-sample, as throughput.py makes them): estimate against
             measured wall time, --repeat interleaved rounds

Latency is emulated in the server: a WSGI wrapper around moto's application sleeps
--latency-ms in the request's own thread before handling it (werkzeug serves each
connection in a thread, so concurrent requests wait concurrently, as over a network). The
same wrapper counts every request, by method, level (bucket or object) and query.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from throughput import make_docs as make_imdb_copies  # noqa: E402  (copies of the review sample)
SHARED = HERE.parent.parent / "shared" / "data"
IMDB = SHARED / "imdb-sample"
RT = SHARED / "rt-polarity" / "utf8"
PY = sys.executable

# AWS S3 Standard, us-east-1, list prices assumed here (per 1,000 requests).
PRICE_PUT_LIST = 0.005   # PUT, COPY, POST, LIST
PRICE_GET_OTHER = 0.0004  # GET, SELECT, HEAD and all other requests (DELETE is free)


# ---------------------------------------------------------------------------------------------
# documents and model


def rt_lines() -> List[str]:
    lines: List[str] = []
    for name in ("rt-polarity.pos", "rt-polarity.neg"):
        lines += (RT / name).read_text("utf-8").splitlines()
    return lines


def make_small_files(folder: Path, n: int) -> float:
    """n one-line documents (Rotten Tomatoes snippets, as memory.py makes them)."""
    started = time.perf_counter()
    lines = [s.encode("utf-8") for s in rt_lines()]
    folder.mkdir(parents=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for i in range(n):
        fd = os.open(folder / f"{i:07d}.txt", flags, 0o644)
        os.write(fd, lines[i % len(lines)])
        os.close(fd)
    return time.perf_counter() - started


def train_model(work: Path) -> Path:
    model = work / "model.keras"
    if not model.exists():
        subprocess.run([PY, str(HERE / "peers.py"), "train", str(model), "small"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return model


# ---------------------------------------------------------------------------------------------
# listing memory and rate


CHILD_LIST = r"""
import json, os, resource, sys, time
def rss():
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
from daskinfer import listing
import s3fs, numpy  # imported before the first reading, so that only the listing is counted
url, options, warm, trace = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
if warm:  # the filesystem object, its session and its client made before the measurement
    listing.list_documents(warm, "*.txt", False, options)
if trace:  # a second, slower pass: Python's own allocations, by what holds them
    import tracemalloc
    tracemalloc.start()
before = rss()
cpu0 = time.process_time(); t0 = time.perf_counter()
docs = listing.list_documents(url, "*.txt", False, options)
took = time.perf_counter() - t0; cpu = time.process_time() - cpu0
after = rss()
def hwm():  # this process's peak RSS (ru_maxrss would keep the parent's peak across exec)
    with open(f"/proc/{os.getpid()}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
peak = hwm()
# fsspec keeps its filesystem objects (one per set of options) for the life of the process,
# and s3fs's keeps every listed page in its directory cache: what is left once that is dropped
cached = 0
traced_kept = tracemalloc.get_traced_memory()[0] if trace else 0
for inst in list(s3fs.S3FileSystem._cache.values()):
    cached += sum(len(v) for v in inst.dircache.values())
    inst.invalidate_cache()
import gc; gc.collect()
traced = {}
if trace:
    traced = {"traced_after_drop": tracemalloc.get_traced_memory()[0]}
print(json.dumps(traced | {"n": len(docs), "s": took, "cpu_s": cpu, "rss_before": before, "rss_after": after,
                  "peak": peak, "name_len": len(docs.names[0]) if len(docs) else 0,
                  "dircache_entries": cached, "rss_without_dircache": rss(), "traced_kept": traced_kept}))
"""


def list_in_child(url: str, options: Optional[dict] = None, env: Optional[dict] = None,
                  warm: str = "", trace: bool = False) -> Dict[str, Any]:
    out = subprocess.run([PY, "-c", CHILD_LIST, url, json.dumps(options or {}), warm, "1" if trace else "0"],
                         capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"listing {url} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def section_listing(work: Path, files: int, folders: Dict[int, Path], report: Dict[str, Any]) -> None:
    print("\n== listing: driver memory and local listing rate (warm page cache) ==", flush=True)
    rows = {}
    for n, folder in sorted(folders.items()):
        runs = [list_in_child(str(folder)) for _ in range(2)]
        best = min(runs, key=lambda r: r["s"])
        kept = (best["rss_after"] - best["rss_before"]) / n
        peak = (best["peak"] - best["rss_before"]) / n
        rows[n] = {"seconds": [round(r["s"], 2) for r in runs], "files_per_s": round(n / best["s"]),
                   "cpu_s": round(best["cpu_s"], 2), "bytes_per_doc_kept": round(kept, 1),
                   "bytes_per_doc_peak": round(peak, 1), "rss_after_mib": round(best["rss_after"] / 2**20, 1),
                   "rss_before_mib": round(best["rss_before"] / 2**20, 1), "name_len": best["name_len"]}
        print(f"{n:>9} files: listed in {', '.join(f'{r:.2f}' for r in rows[n]['seconds'])} s "
              f"({rows[n]['files_per_s']:,} files/s, CPU {rows[n]['cpu_s']:.2f} s); "
              f"RSS {rows[n]['rss_before_mib']:.0f} -> {rows[n]['rss_after_mib']:.0f} MiB: "
              f"{kept:.0f} B/document kept, {peak:.0f} B/document at the peak "
              f"(names of {best['name_len']} characters)", flush=True)
    # Where a local listing's time goes: reading the folder's entries, or a stat() for each.
    n = max(folders)
    for label, stat_too in (("names only (scandir)", False), ("names and stat() (as list_documents)", True)):
        t0, c0 = time.perf_counter(), time.process_time()
        with os.scandir(folders[n]) as entries:
            got = [(e.name, e.stat().st_size) if stat_too else e.name for e in entries]
        took, cpu = time.perf_counter() - t0, time.process_time() - c0
        t1 = time.perf_counter()
        sorted(got)
        sort_s = time.perf_counter() - t1
        rows[f"scandir_{'stat' if stat_too else 'names'}"] = {"s": round(took, 2), "cpu_s": round(cpu, 2),
                                                             "sort_s": round(sort_s, 2)}
        print(f"{n:>9} files, {label}: {took:.2f} s ({cpu:.2f} s CPU), sorting them {sort_s:.2f} s", flush=True)
    n = min(folders)
    traced = list_in_child(str(folders[n]), trace=True)
    rows["traced_bytes_per_doc"] = round(traced["traced_kept"] / n, 1)
    print(f"by tracemalloc (another pass, {n:,} files): the Listing holds {rows['traced_bytes_per_doc']:.0f} B/document",
          flush=True)
    report["listing"] = rows


CHILD_MANIFEST = r"""
import json, os, resource, sys, time
def rss():
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
from daskinfer.manifest import Manifest
before = rss()
t0 = time.perf_counter()
m = Manifest(sys.argv[1])
took = time.perf_counter() - t0
with open(f"/proc/{os.getpid()}/status") as f:  # VmHWM: ru_maxrss would keep the parent's peak across exec
    peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
print(json.dumps({"n": len(m), "s": took, "rss_before": before, "rss_after": rss(), "peak": peak}))
"""


def section_manifest(work: Path, n: int, report: Dict[str, Any]) -> None:
    print(f"\n== manifest: driver memory of a manifest of {n:,} S3 URIs (counted once, as a run opens it) ==", flush=True)
    path = work / "manifest.txt"
    with open(path, "w") as f:
        for i in range(n):
            f.write(f"s3://bucket/batch-2024-06/docs/{i:09d}_8.txt\n")
    out = subprocess.run([PY, "-c", CHILD_MANIFEST, str(path)], check=True, capture_output=True, text=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    row = {"documents": n, "seconds": round(res["s"], 2), "peak_bytes_per_doc": round((res["peak"] - res["rss_before"]) / n, 1),
           "kept_bytes_per_doc": round((res["rss_after"] - res["rss_before"]) / n, 1)}
    print(f"{n:,} entries read in {row['seconds']} s ({n / res['s']:,.0f}/s); driver RSS peak +{row['peak_bytes_per_doc']:.0f} "
          f"B/document while reading (the set of paths seen), {row['kept_bytes_per_doc']:.0f} B/document after", flush=True)
    path.unlink()
    report["manifest"] = row


# ---------------------------------------------------------------------------------------------
# a CLI run watched from outside


def watch_run(cmd: List[str], out: Path, env: Optional[dict] = None) -> Dict[str, Any]:
    """Run cmd; sample the driver's RSS every 50 ms, note when out.partial first has bytes,
    and when each stderr line arrived."""
    import psutil

    started = time.perf_counter()
    # cwd away from the checkout: `python -m` puts the working folder first on sys.path,
    # where it would win over a revision's worktree on PYTHONPATH.
    proc = psutil.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=tempfile.gettempdir())
    lines: List[tuple] = []

    def read_err():
        for raw in proc.stderr:
            lines.append((time.perf_counter() - started, raw.decode("utf-8", "replace").rstrip()))

    reader = threading.Thread(target=read_err, daemon=True)
    reader.start()
    peak, first, last, size = 0, None, None, 0
    partial = Path(f"{out}.partial")
    while proc.poll() is None:
        try:
            peak = max(peak, proc.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        try:
            grown = partial.stat().st_size
        except FileNotFoundError:
            grown = size
        if grown != size:  # the results file grew (a unit written): the first and the last time
            size, last = grown, time.perf_counter() - started
            first = first or last
        time.sleep(0.05)
    wall = time.perf_counter() - started
    reader.join(5)
    if proc.returncode != 0:
        print("\n".join(line for _, line in lines[-20:]))
        raise SystemExit(f"daskinfer failed with exit status {proc.returncode}")
    return {"wall_s": wall, "first_result_s": first, "last_result_s": last, "driver_peak_mib": peak / 2**20,
            "log": lines}


def section_cli(work: Path, model: Path, docs: Path, n: int, report: Dict[str, Any],
                contenders: Dict[str, Optional[dict]], repeat: int) -> None:
    """Real runs over n local files, each contender (this tree, and a git revision's
    worktree) in turn in every round."""
    print(f"\n== cli: a real run over {n:,} local one-line files ==", flush=True)
    report["cli"] = {name: [] for name in contenders}
    for i in range(repeat):
        for name, env in contenders.items():
            out = work / "cli-out" / "res.jsonl"
            res = watch_run([PY, "-m", "daskinfer", f"inference.model_path={model}", f"inference.input_data_dir={docs}",
                             f"inference.output_path={out}"], out, env)
            summary = json.loads((out.parent / "summary.json").read_text())
            print(f"round {i + 1} {name}: first result on disk {res['first_result_s']:.2f} s, whole run "
                  f"{res['wall_s']:.2f} s (summary: {summary['documents']:,} documents, "
                  f"{summary['docs_per_s']:,.0f} docs/s), driver peak RSS {res['driver_peak_mib']:.0f} MiB; "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
            if i == 0:
                for at, line in res["log"]:
                    if line.strip():
                        print(f"  {at:7.2f} s  {line[:140]}")
            report["cli"][name].append({k: v for k, v in res.items() if k != "log"} | {
                "documents": summary["documents"], "elapsed_s": summary["elapsed_s"],
                "docs_per_s": summary["docs_per_s"], "log": [(round(at, 2), line[:200]) for at, line in res["log"]]})
            shutil.rmtree(out.parent)
    for name, runs in report["cli"].items():
        print(f"  {name:>10}: first result median {statistics.median(r['first_result_s'] for r in runs):.2f} s, "
              f"whole run median {statistics.median(r['wall_s'] for r in runs):.2f} s")


# ---------------------------------------------------------------------------------------------
# moto's S3 server with a counting, delaying wrapper


SERVER = r"""
import collections, json, os, sys, threading, time
from urllib.parse import parse_qs
import moto.server
from moto.moto_server import threaded_moto_server as ms  # the module ThreadedMotoServer's names live in
from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends

state = {"latency": 0.0, "counts": collections.Counter()}
lock = threading.Lock()

def kind(method, path, query):
    parts = path.lstrip("/").split("/", 1)
    level = "object" if len(parts) == 2 and parts[1] else ("bucket" if parts[0] else "service")
    names = ",".join(sorted(k for k in parse_qs(query, keep_blank_values=True)
                            if k in ("list-type", "uploads", "uploadId", "partNumber", "delete", "location", "versioning")))
    return f"{method} {level}" + (f" ?{names}" if names else "")

def populate(q):
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    bucket, prefix, n = q["bucket"][0], q["prefix"][0], int(q["n"][0])
    if bucket not in backend.buckets:
        backend.create_bucket(bucket, "us-east-1")
    texts = [b"x"]
    if q.get("texts", ["tiny"])[0] == "imdb":
        import glob
        texts = [open(p, "rb").read() for p in sorted(glob.glob(os.path.join(q["imdb"][0], "*/*/*.txt")))]
    for i in range(n):
        backend.put_object(bucket, f"{prefix}{i:07d}.txt", texts[i % len(texts)])
    return {"bucket": bucket, "prefix": prefix, "n": n}

def wrap(app):
    def wrapped(environ, start_response):
        path, query = environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", "")
        if path.startswith("/__scale__/"):
            q = parse_qs(query)
            what = path[len("/__scale__/"):]
            if what == "counts":
                with lock:
                    body = dict(state["counts"])
                    if q.get("reset"):
                        state["counts"].clear()
            elif what == "latency":
                state["latency"] = float(q["ms"][0]) / 1000
                body = {"latency_ms": state["latency"] * 1000}
            elif what == "populate":
                body = populate(q)
            elif what == "cpu":
                t = os.times()
                body = {"cpu_s": t.user + t.system}
            data = json.dumps(body).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
            return [data]
        with lock:
            state["counts"][kind(environ["REQUEST_METHOD"], path, query)] += 1
        if state["latency"]:
            time.sleep(state["latency"])
        return app(environ, start_response)
    return wrapped

class Server(moto.server.ThreadedMotoServer):
    def _server_entry(self):
        try:
            app = wrap(ms.DomainDispatcherApplication(ms.create_backend_app))
            self._server = ms.make_server(self._ip_address, self._port, app, True,
                                          request_handler=ms.MotoRequestHandler)
        except BaseException:
            import traceback
            traceback.print_exc()
            os._exit(1)  # the parent reads end of file instead of "ready"
        self._server_ready_event.set()
        self._server.serve_forever()

server = Server("127.0.0.1", int(sys.argv[1]), verbose=False)
server.start()
print("ready", flush=True)
sys.stdin.read()  # until the parent closes our stdin
server.stop()
"""


class S3:
    def __init__(self, log: Path):
        self.log = open(log, "wb")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.proc = subprocess.Popen([PY, "-c", SERVER, str(self.port)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit("the moto server did not start")
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                    "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": "us-east-1"}

    def call(self, what: str, **query) -> Any:
        q = "&".join(f"{k}={v}" for k, v in query.items())
        with urllib.request.urlopen(f"{self.endpoint}/__scale__/{what}?{q}", timeout=3600) as r:
            return json.loads(r.read())

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(10)
        self.log.close()


def section_s3list(s3: S3, n: int, latency_ms: float, report: Dict[str, Any]) -> None:
    print(f"\n== s3list: list_documents over {n:,} objects on moto (127.0.0.1) ==", flush=True)
    started = time.perf_counter()
    s3.call("populate", bucket="bench", prefix="list/", n=n)
    s3.call("populate", bucket="bench", prefix="warm/", n=1)
    print(f"({n:,} objects put into moto's backend directly in {time.perf_counter() - started:.1f} s)")
    rows = {}
    for ms in (0, latency_ms):
        s3.call("latency", ms=ms)
        s3.call("counts", reset=1)
        cpu0 = s3.call("cpu")["cpu_s"]
        res = list_in_child("s3://bench/list/", env=s3.env, warm="s3://bench/warm/")
        server_cpu = s3.call("cpu")["cpu_s"] - cpu0
        counts = s3.call("counts", reset=1)
        pages = sum(v for k, v in counts.items() if k.startswith("GET bucket") and "list-type" in k)
        rows[ms] = {"seconds": round(res["s"], 2), "pages": pages, "pages_per_s": round(pages / res["s"], 1),
                    "keys_per_s": round(n / res["s"]), "client_cpu_ms_per_page": round(1000 * res["cpu_s"] / pages, 1),
                    "server_cpu_ms_per_page": round(1000 * server_cpu / pages, 1),
                    "bytes_per_doc_kept": round((res["rss_after"] - res["rss_before"]) / n, 1),
                    "bytes_per_doc_peak": round((res["peak"] - res["rss_before"]) / n, 1),
                    "dircache_entries": res["dircache_entries"],
                    "bytes_per_doc_without_dircache": round((res["rss_without_dircache"] - res["rss_before"]) / n, 1),
                    "requests": counts}
        r = rows[ms]
        print(f"latency {ms:>3g} ms: {r['seconds']:.2f} s, {pages} pages, {r['pages_per_s']} pages/s, "
              f"{r['keys_per_s']:,} keys/s; client CPU {r['client_cpu_ms_per_page']} ms/page, moto CPU "
              f"{r['server_cpu_ms_per_page']} ms/page; driver memory {r['bytes_per_doc_kept']:.0f} B/document kept "
              f"(peak {r['bytes_per_doc_peak']:.0f}; {r['dircache_entries']:,} entries in s3fs's directory cache, "
              f"{r['bytes_per_doc_without_dircache']:.0f} B/document once it is dropped); requests {counts}",
              flush=True)
    s3.call("latency", ms=0)
    traced = list_in_child("s3://bench/list/", env=s3.env, warm="s3://bench/warm/", trace=True)
    held = {"listing_bytes_per_doc": round(traced["traced_after_drop"] / n, 1),
            "s3fs_dircache_bytes_per_doc": round((traced["traced_kept"] - traced["traced_after_drop"]) / n, 1)}
    print(f"by tracemalloc (another pass): the Listing holds {held['listing_bytes_per_doc']:.0f} B/document, "
          f"s3fs's directory cache {held['s3fs_dircache_bytes_per_doc']:.0f} B/document more "
          f"(kept for the life of the driver: fsspec caches the filesystem object)", flush=True)
    rows["traced"] = held
    report["s3list"] = rows


def classify(counts: Dict[str, int]) -> Dict[str, int]:
    out = {"LIST": 0, "GET": 0, "HEAD": 0, "PUT/POST": 0, "DELETE": 0, "other": 0}
    for key, n in counts.items():
        method = key.split()[0]
        if method == "GET" and (" bucket" in key or "uploads" in key) and "uploadId" not in key:
            out["LIST"] += n
        elif method == "GET":
            out["GET"] += n
        elif method == "HEAD":
            out["HEAD"] += n
        elif method in ("PUT", "POST"):
            out["PUT/POST"] += n
        elif method == "DELETE":
            out["DELETE"] += n
        else:
            out["other"] += n
    return out


def section_requests(s3: S3, model: Path, work: Path, n: int, report: Dict[str, Any]) -> None:
    print(f"\n== requests: a real CLI run over {n:,} objects on moto (inputs and results on S3, model local) ==",
          flush=True)
    s3.call("populate", bucket="run", prefix="docs/", n=n, texts="imdb", imdb=str(IMDB))
    s3.call("counts", reset=1)
    out = work / "s3-run-unused.jsonl"  # the results go to S3; nothing grows locally
    res = watch_run([PY, "-m", "daskinfer", f"inference.model_path={model}", "inference.input_data_dir=s3://run/docs/",
                     "inference.output_path=s3://run/out/res.jsonl"], out, env=s3.env)
    counts = s3.call("counts", reset=1)
    classes = classify(counts)
    print(f"run: {res['wall_s']:.2f} s; requests by kind: {json.dumps(counts, sort_keys=True)}")
    print(f"by price class: {classes}")
    # What grows with the number of objects: the GETs (one per object) and the LIST pages
    # (one per 1,000 keys); the rest (bucket checks, the upload) is per run or per output part.
    per_object_get = classes["GET"] / n
    pages = math.ceil(n / 1000)
    fixed_list = classes["LIST"] - pages
    big = 100_000_000
    list_100m = math.ceil(big / 1000) + max(0, fixed_list)
    get_100m = round(per_object_get * big)
    # Results: ~150 B a record with an s3:// filepath; s3fs uploads parts of its block size
    # (S3FileSystem.default_block_size, 50 MiB), plus the create and the complete requests.
    import s3fs

    out_bytes = 150 * big
    parts = math.ceil(out_bytes / s3fs.S3FileSystem.default_block_size) + 2
    cost = {"LIST": list_100m / 1000 * PRICE_PUT_LIST, "GET": get_100m / 1000 * PRICE_GET_OTHER,
            "HEAD and other": classes["HEAD"] / 1000 * PRICE_GET_OTHER,
            "PUT (results upload)": parts / 1000 * PRICE_PUT_LIST}
    print(f"per object: {per_object_get:.3f} GET; LIST pages {classes['LIST']} for {pages} pages of keys")
    print(f"100M objects at ${PRICE_PUT_LIST}/1k LIST+PUT, ${PRICE_GET_OTHER}/1k GET: "
          f"{list_100m:,} LIST = ${cost['LIST']:.2f}, {get_100m:,} GET = ${cost['GET']:.2f}, "
          f"~{parts:,} PUT for {out_bytes / 1e9:.0f} GB of results = ${cost['PUT (results upload)']:.2f}; "
          f"total ${sum(cost.values()):.2f} per run", flush=True)
    report["requests"] = {"objects": n, "wall_s": res["wall_s"], "counts": counts, "classes": classes,
                          "per_100m": {"LIST": list_100m, "GET": get_100m, "PUT": parts},
                          "cost_100m_usd": {k: round(v, 2) for k, v in cost.items()}}


# ---------------------------------------------------------------------------------------------
# scheduler cost per task


def _noop(x):
    return x


def _count(part):
    return len(part)


def _results(part):
    """What a scoring task returns, in size: a JSONL line of ~150 B for each document."""
    line = b'{"time": "2026-11-30T12:00:00+0000", "filepath": "%s", "logit_prob": 0.1234567, "sentiment": "negative"}\n'
    return b"".join(line % uri.encode() for uri in part.uris)


def section_scheduler(per_doc_us: float, report: Dict[str, Any], n_tasks: int = 4000) -> None:
    print("\n== scheduler: a LocalCluster's cost per task (2 workers x 1 thread, processes) ==", flush=True)
    import psutil
    from distributed import Client, LocalCluster

    sys.path.insert(0, str(HERE.parent))
    from daskinfer.partitions import Partition

    me = psutil.Process()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=50) as cluster, Client(cluster) as client:
        workers = [psutil.Process(pid) for pid in client.run(os.getpid).values()]

        def cpu():
            own = me.cpu_times()
            return own.user + own.system, sum(w.cpu_times().user + w.cpu_times().system for w in workers)

        part = Partition([f"s3://bucket/prefix/docs/{i:09d}_8.txt" for i in range(2000)], [950] * 2000)
        client.gather([client.submit(_noop, i, pure=False) for i in range(200)])  # warm up
        rows = {}
        for label, fn, arg, window in (
            ("trivial, all submitted then gathered", _noop, None, None),
            ("trivial, window of 6 in order (daskinfer's pattern)", _noop, None, 6),
            ("partition of 2,000 URIs, window of 6", _count, part, 6),
            ("partition in, its 2,000 JSONL records out, window of 6", _results, part, 6),
        ):
            n = n_tasks if arg is None else n_tasks // 4
            d0, w0 = cpu()
            t0 = time.perf_counter()
            if window is None:
                client.gather([client.submit(fn, i, pure=False) for i in range(n)])
            else:
                pending = []
                for i in range(n):
                    pending.append(client.submit(fn, arg if arg is not None else i, pure=False, priority=-i))
                    if len(pending) >= window:
                        pending.pop(0).result()
                for f in pending:
                    f.result()
            wall = time.perf_counter() - t0
            d1, w1 = cpu()
            rows[label] = {"tasks": n, "us_per_task": round(1e6 * wall / n), "driver_cpu_us": round(1e6 * (d1 - d0) / n),
                           "workers_cpu_us": round(1e6 * (w1 - w0) / n)}
            r = rows[label]
            print(f"{label:>55}: {r['us_per_task']:>6} us/task wall, driver (client + scheduler) CPU "
                  f"{r['driver_cpu_us']} us, workers' CPU {r['workers_cpu_us']} us", flush=True)
    out = rows["partition in, its 2,000 JSONL records out, window of 6"]
    result_mb = len(_results(part)) / 1e6
    out["result_mb"] = round(result_mb, 3)
    print(f"results through the driver: {result_mb:.2f} MB a task, {result_mb * 1e6 / out['us_per_task']:.0f} MB/s "
          f"at {out['us_per_task']} us a task")
    # The cost a task adds, all processes together, is what the 1% compares with; on two busy
    # cores the wall per task of a saturated stream is that cost (the CPU is the limit).
    worst = rows["partition of 2,000 URIs, window of 6"]
    cost_us = max(worst["driver_cpu_us"] + worst["workers_cpu_us"], rows["trivial, all submitted then gathered"]["us_per_task"])
    size = math.ceil(100 * cost_us / per_doc_us)
    sched_us = worst["driver_cpu_us"]
    print(f"per-document scoring cost {per_doc_us:.1f} us on one thread: a task costing {cost_us} us stays under 1% "
          f"of its partition's scoring time from {size:,} documents a partition")
    print(f"one scheduler (driver CPU {sched_us} us a task) handles at most ~{1e6 / sched_us:,.0f} tasks/s; partitions "
          f"of 2,000 documents at {per_doc_us:.0f} us keep it under half busy up to "
          f"~{0.5 * 2000 * per_doc_us / sched_us:,.0f} worker threads")
    report["scheduler"] = {"rows": rows, "per_doc_us": per_doc_us, "task_cost_us": cost_us,
                           "partition_for_1pct": size, "scheduler_us": sched_us}


# ---------------------------------------------------------------------------------------------
# the writer's ceiling


def section_writer(work: Path, report: Dict[str, Any], total: int = 1_000_000) -> None:
    print("\n== writer: JSONL units appended, flushed and fsynced (as daskinfer/sink.py), one driver ==", flush=True)
    sys.path.insert(0, str(HERE.parent))
    from daskinfer import records

    rows = {}
    for unit in (200, 2000, 20000):
        recs = [{"time": records.now(), "filepath": f"s3://bucket/batch-2024-06/docs/{i:09d}_8.txt",
                 "logit_prob": 0.123456789 + i * 1e-9, "sentiment": "negative"} for i in range(unit)]
        data = records.jsonl(recs)
        path = work / f"writer-{unit}.jsonl.partial"
        units = max(1, total // unit)
        with open(path, "ab") as f:
            t0 = time.perf_counter()
            for _ in range(units):
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            wall = time.perf_counter() - t0
        written = units * len(data)
        rows[unit] = {"mb_per_s": round(written / wall / 1e6, 1), "docs_per_s": round(units * unit / wall),
                      "bytes_per_record": round(len(data) / unit, 1), "ms_per_unit": round(1000 * wall / units, 2)}
        r = rows[unit]
        print(f"units of {unit:>6}: {r['mb_per_s']:>7} MB/s, {r['docs_per_s']:>10,} docs/s "
              f"({r['ms_per_unit']} ms a unit, {r['bytes_per_record']} B a record)", flush=True)
        path.unlink()
    report["writer"] = rows


# ---------------------------------------------------------------------------------------------
# plan against the run


def section_plan(work: Path, model: Path, sizes: List[int], repeat: int, report: Dict[str, Any],
                 one_worker: bool = False) -> float:
    print("\n== plan: `daskinfer plan` estimate against the real run ==", flush=True)
    per_doc = []
    rows = {}
    shapes = [("default", [])] + ([("1x1", ["cluster.n_workers=1", "cluster.threads_per_worker=1"])] if one_worker else [])
    for n in sizes:
        docs = work / f"imdb-{n}"
        make_imdb_copies(docs, n)
        rows[n] = []
        for i, (shape, extra) in ((i, shape) for i in range(repeat) for shape in shapes):
            args = [f"inference.model_path={model}", f"inference.input_data_dir={docs}", *extra]
            t0 = time.perf_counter()
            plan = subprocess.run([PY, "-m", "daskinfer", "plan", *args], check=True, capture_output=True, text=True)
            plan_wall = time.perf_counter() - t0
            estimate = float(re.search(r"this cluster:\s+([\d,.]+) docs/s, about ([\d,.]+) s", plan.stdout)
                             .group(2).replace(",", ""))
            est_rate = float(re.search(r"this cluster:\s+([\d,.]+) docs/s", plan.stdout).group(1).replace(",", ""))
            sample = float(re.search(r"sample: \d+ documents on \d+ thread\(s\) at once, ([\d,]+) docs/s a thread", plan.stdout).group(1).replace(",", ""))
            start = float(re.search(r"started with the model ([\d.]+) s after the process", plan.stdout).group(1))
            per_doc.append(1e6 / sample)
            out = work / f"plan-run-{n}-{i}" / "res.jsonl"
            res = watch_run([PY, "-m", "daskinfer", *args, f"inference.output_path={out}"], out)
            summary = json.loads((out.parent / "summary.json").read_text())
            row = {"cluster": shape, "estimate_s": estimate, "last_result_s": round(res["last_result_s"] or 0, 2), "estimate_docs_per_s": est_rate, "plan_start_s": start,
                   "sample_docs_per_s_one_thread": sample, "plan_wall_s": round(plan_wall, 2),
                   "measured_wall_s": round(res["wall_s"], 2), "measured_elapsed_s": summary["elapsed_s"],
                   "first_result_s": round(res["first_result_s"] or 0, 2), "measured_docs_per_s": summary["docs_per_s"],
                   "error_pct": round(100 * (estimate - res["wall_s"]) / res["wall_s"], 1)}
            rows[n].append(row)
            print(f"{n:>7} docs, {shape}, round {i + 1}: estimate {estimate:.1f} s (start {start:.1f} s + {n:,} at "
                  f"{est_rate:,.0f} docs/s; sample {sample:,.0f} docs/s a thread), measured {res['wall_s']:.2f} s "
                  f"whole process ({summary['elapsed_s']:.2f} s in run(), results written from {row['first_result_s']:.2f} "
                  f"to {row['last_result_s']:.2f} s, "
                  f"{summary['docs_per_s']:,.0f} docs/s): error {row['error_pct']:+.1f}%", flush=True)
            shutil.rmtree(out.parent)
        shutil.rmtree(docs)
    report["plan"] = rows
    return statistics.median(per_doc) if per_doc else 0.0


# ---------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="listing,cli,s3list,requests,scheduler,writer,manifest,plan")
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--s3-keys", type=int, default=100_000)
    ap.add_argument("--s3-run", type=int, default=10_000)
    ap.add_argument("--plan-docs", default="40000,200000")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--latency-ms", type=float, default=20)
    ap.add_argument("--plan-one-worker", action="store_true",
                    help="plan section: also plan and run on one worker of one thread, in the same rounds")
    ap.add_argument("--per-doc-us", type=float, default=None,
                    help="per-document scoring cost for the scheduler section (default: the plan section's sample)")
    ap.add_argument("--folder", default=None, help="listing and cli sections: an existing folder of --files files")
    ap.add_argument("--against", default=None,
                    help="cli section: also run a git revision (a worktree on PYTHONPATH), interleaved")
    ap.add_argument("--json", default=None, help="also write every figure to this JSON file")
    args = ap.parse_args()
    only = set(args.only.split(","))
    work = Path(tempfile.mkdtemp(prefix="daskinfer-scale-", dir="/tmp"))
    report: Dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(),
                              "loadavg_start": os.getloadavg()}
    s3: Optional[S3] = None
    print(f"work folder {work}; load average {os.getloadavg()[0]:.2f}", flush=True)
    try:
        model = train_model(work) if only & {"cli", "requests", "plan"} else None
        per_doc_us = args.per_doc_us
        if "plan" in only:
            measured = section_plan(work, model, [int(x) for x in args.plan_docs.split(",")], args.repeat, report,
                                    args.plan_one_worker)
            per_doc_us = per_doc_us or measured
        if "scheduler" in only:
            section_scheduler(per_doc_us or 30.0, report)
        if "writer" in only:
            section_writer(work, report)
        if "manifest" in only:
            section_manifest(work, args.files, report)
        if only & {"s3list", "requests"}:
            s3 = S3(work / "moto.log")
            if "s3list" in only:
                section_s3list(s3, args.s3_keys, args.latency_ms, report)
            if "requests" in only:
                section_requests(s3, model, work, args.s3_run, report)
            s3.close()
            s3 = None
        if only & {"listing", "cli"}:
            folders = {}
            for n in sorted({100_000, args.files}):
                if n > args.files or (args.folder and n != args.files):
                    continue
                if args.folder:  # made before (by make_small_files): a million files take minutes to make
                    folders[n] = Path(args.folder)
                    continue
                folders[n] = work / f"small-{n}"
                took = make_small_files(folders[n], n)
                print(f"({n:,} one-line files made in {took:.0f} s)", flush=True)
            subprocess.run(["sync"], check=False)
            if "listing" in only:
                section_listing(work, args.files, folders, report)
            if "cli" in only:
                contenders: Dict[str, Optional[dict]] = {"now": None}
                if args.against:
                    tree = work / "against"
                    subprocess.run(["git", "worktree", "add", "--detach", str(tree), args.against], check=True,
                                   cwd=HERE.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    contenders[args.against] = {**os.environ, "PYTHONPATH": str(tree)}
                try:
                    section_cli(work, model, folders[args.files], args.files, report, contenders, args.repeat)
                finally:
                    if args.against:
                        subprocess.run(["git", "worktree", "remove", "--force", str(work / "against")],
                                       cwd=HERE.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        if s3 is not None:
            s3.close()
        shutil.rmtree(work, ignore_errors=True)
        report["loadavg_end"] = os.getloadavg()
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1, default=str))
        print(f"\nload average at the end {os.getloadavg()[0]:.2f}; {work} removed", flush=True)


if __name__ == "__main__":
    main()
