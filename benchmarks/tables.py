"""Short documents in one Parquet file against the same documents as files.

    python benchmarks/tables.py 1000000

Makes N one-line documents (Rotten Tomatoes snippets) twice: as rows of one Parquet file
(pyarrow's default row groups) and as N .txt files. Times, in one session and median of
`--repeat` rounds, each running every contender once (default 1: a million files take minutes
to write and to score):
  daskinfer CLI on the Parquet file  (inference.input_format=parquet)
  daskinfer CLI on the files
  a single process on the Parquet file: read the column, model.predict in batches of 256, write JSONL
and prints docs/s for each, and each against the single process.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RT = HERE.parent.parent / "shared" / "data" / "rt-polarity" / "utf8"


def snippets(n: int):
    lines = []
    for name in ("rt-polarity.pos", "rt-polarity.neg"):
        lines += (RT / name).read_text("utf-8").splitlines()
    return [lines[i % len(lines)] for i in range(n)]


def make_inputs(work: Path, n: int) -> tuple:
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = snippets(n)
    table = work / "docs.parquet"
    pq.write_table(pa.table({"text": texts}), table)
    folder = work / "docs"
    folder.mkdir()
    for i, text in enumerate(texts):
        (folder / f"{i:07d}.txt").write_text(text, "utf-8")
    return table, folder


def timed(cmd) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("n", type=int, nargs="?", default=1_000_000)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="daskinfer-tables-"))
    try:
        model = work / "model.keras"
        subprocess.run([sys.executable, str(HERE / "peers.py"), "train", str(model), "small"], check=True,
                       stderr=subprocess.DEVNULL)
        table, folder = make_inputs(work, args.n)
        cli = [sys.executable, "-m", "daskinfer", f"inference.model_path={model}"]
        runs = {
            "daskinfer, one Parquet file": lambda i: cli + [
                f"inference.input_data_dir={table}", "inference.input_format=parquet",
                f"inference.output_path={work}/table-{i}/res.jsonl"],
            "daskinfer, one file per document": lambda i: cli + [
                f"inference.input_data_dir={folder}", f"inference.output_path={work}/files-{i}/res.jsonl"],
            "single process, Parquet file": lambda i: [
                sys.executable, str(HERE / "peers.py"), "single-table", str(model), str(table), f"{work}/single-{i}.jsonl"],
        }
        # A million new files keep the disk busy for a while after they are written: without
        # the sync, the runs that came first took a fifth longer than the same command on a
        # quiet machine. Rounds take each contender in turn.
        os.sync()
        taken = {name: [] for name in runs}
        for i in range(args.repeat):
            for name, make in runs.items():
                taken[name].append(timed(make(i)))
        walls = {name: statistics.median(times) for name, times in taken.items()}
        base = walls["single process, Parquet file"]
        print(f"{args.n:,} short documents; median of {args.repeat} run(s)")
        for name, wall in walls.items():
            print(f"  {name:<34} {wall:7.1f} s  {args.n / wall:9,.0f} docs/s  {base / wall:5.2f}x the single process")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
