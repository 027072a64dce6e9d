"""Incremental runs: score only what changed, against scoring everything again.

    python benchmarks/incremental.py [--docs 200000] [--new 0.01] [--changed 0.005] [--repeat 3] [--heavy]
    python benchmarks/incremental.py --unchanged 1000000

The first form makes N documents (copies of ../shared/data/imdb-sample under new names),
scores them once, then adds --new x N documents and rewrites --changed x N with other
text. Each round then times, as whole processes, (full) a plain run over the current
documents and (incr) an incremental run against the first run; interleaved, the ratio of
the medians is printed. With --heavy the model is the 1-D CNN of throughput.py, whose
compute dominates, as a transformer's does.

The second form makes N tiny documents (Rotten Tomatoes snippets), scores them, and runs
an incremental run with nothing changed, sampling the driver's peak RSS every 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from memory import make_docs as make_snippets  # noqa: E402
from throughput import make_docs, train  # noqa: E402


def daskinfer(*args: str) -> list:
    return [sys.executable, "-m", "daskinfer", *args]


def timed(cmd: list) -> tuple:
    """Wall seconds and the driver's peak RSS (MiB) of one whole process."""
    started = time.perf_counter()
    proc = psutil.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, proc.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.read().decode()[-2000:]}")
    return time.perf_counter() - started, peak / 2**20


def change(docs: Path, n: int, new: float, changed: float) -> None:
    """new x n documents added, changed x n (spread evenly) rewritten with other text."""
    sources = sorted(Path(HERE.parent.parent / "shared" / "data" / "imdb-sample").glob("*/*/*.txt"))
    names = sorted(os.listdir(docs))
    step = max(1, round(1 / changed)) if changed else len(names) + 1
    for k, name in enumerate(names[::step]):
        (docs / name).write_bytes(sources[(k * 7 + 3) % len(sources)].read_bytes() + b" (revised)")
    for i in range(int(n * new)):
        shutil.copyfile(sources[i % len(sources)], docs / f"new{i:07d}_1.txt")


def compare(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="daskinfer-incr-"))
    try:
        docs, model = work / "docs", work / "model.keras"
        make_docs(docs, args.docs)
        train(model, args.heavy)
        common = (f"inference.model_path={model}", f"inference.input_data_dir={docs}")
        base = work / "base" / "res.jsonl"
        wall, _ = timed(daskinfer(*common, f"inference.output_path={base}"))
        print(f"first run over {args.docs} documents: {wall:.1f} s", flush=True)
        change(docs, args.docs, args.new, args.changed)
        times: dict = {"full": [], "incr": []}
        for i in range(args.repeat):
            full, _ = timed(daskinfer(*common, f"inference.output_path={work}/full{i}/res.jsonl"))
            incr, rss = timed(daskinfer(*common, f"inference.output_path={work}/incr{i}/res.jsonl",
                                        f"inference.incremental_from={base}"))
            times["full"].append(full)
            times["incr"].append(incr)
            summary = json.loads((work / f"incr{i}" / "summary.json").read_text())
            print(f"round {i + 1}: full {full:.2f} s, incremental {incr:.2f} s (driver peak {rss:.0f} MiB; "
                  f"carried {summary['carried']}, scored {summary['scored']})", flush=True)
            shutil.rmtree(work / f"full{i}")
            shutil.rmtree(work / f"incr{i}")
        full, incr = statistics.median(times["full"]), statistics.median(times["incr"])
        print(f"median: full {full:.2f} s, incremental {incr:.2f} s: {full / incr:.2f}x faster")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def unchanged(n: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="daskinfer-incr-"))
    try:
        docs, model = work / "docs", work / "model.keras"
        make_snippets(docs, n)
        train(model, heavy=False)
        common = (f"inference.model_path={model}", f"inference.input_data_dir={docs}")
        wall, rss = timed(daskinfer(*common, f"inference.output_path={work}/base/res.jsonl"))
        print(f"first run over {n} documents: {wall:.1f} s, driver peak {rss:.0f} MiB", flush=True)
        wall, rss = timed(daskinfer(*common, f"inference.output_path={work}/again/res.jsonl",
                                    f"inference.incremental_from={work}/base"))
        print(f"incremental, nothing changed: {wall:.1f} s, driver peak RSS {rss:.0f} MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=200_000)
    ap.add_argument("--new", type=float, default=0.01)
    ap.add_argument("--changed", type=float, default=0.005)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--heavy", action="store_true")
    ap.add_argument("--unchanged", type=int, default=None, help="N documents, nothing changed: driver memory")
    options = ap.parse_args()
    if options.unchanged:
        unchanged(options.unchanged)
    else:
        compare(options)
