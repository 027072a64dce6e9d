"""Driver memory and time to first result: daskinfer's CLI on N tiny documents.

    python benchmarks/memory.py 40000 1000000

For each N, makes N one-line documents (Rotten Tomatoes snippets), runs the CLI and samples
the driver process's resident memory every 50 ms (workers are separate processes and not
counted). Prints the driver's peak RSS, the seconds until the first result reached the disk,
and the whole run's wall time.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
RT = HERE.parent.parent / "shared" / "data" / "rt-polarity" / "utf8"


def make_docs(folder: Path, n: int) -> None:
    lines = []
    for name in ("rt-polarity.pos", "rt-polarity.neg"):
        lines += (RT / name).read_text("utf-8").splitlines()
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"{i:07d}.txt").write_text(lines[i % len(lines)], "utf-8")


def measure(model: Path, docs: Path, out: Path) -> tuple:
    started = time.perf_counter()
    proc = psutil.Popen(
        [sys.executable, "-m", "daskinfer", f"inference.model_path={model}", f"inference.input_data_dir={docs}",
         f"inference.output_path={out}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    peak, first = 0, None
    partial = Path(f"{out}.partial")
    while proc.poll() is None:
        try:
            peak = max(peak, proc.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        if first is None and partial.exists() and partial.stat().st_size:
            first = time.perf_counter() - started
        time.sleep(0.05)
    if proc.returncode != 0:
        raise SystemExit(f"daskinfer failed with exit status {proc.returncode}")
    return peak / 2**20, first, time.perf_counter() - started


def main(sizes) -> None:
    work = Path(tempfile.mkdtemp(prefix="daskinfer-mem-"))
    try:
        model = work / "model.keras"
        subprocess.run([sys.executable, str(HERE / "peers.py"), "train", str(model), "small"], check=True,
                       stderr=subprocess.DEVNULL)
        for n in sizes:
            docs = work / f"docs-{n}"
            make_docs(docs, n)
            rss, first, wall = measure(model, docs, work / f"out-{n}" / "res.jsonl")
            print(f"{n:>9} docs  driver peak RSS {rss:6.0f} MiB  first result {first or 0:5.1f} s  wall {wall:7.1f} s", flush=True)
            shutil.rmtree(docs)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [40_000, 1_000_000])
