"""Many small Parquet tables of small row groups against the same rows in bigger row groups:
what gathering small partitions into one scoring task is worth, whole processes, interleaved.

    python benchmarks/row_groups.py [--rows 2740] [--tables 41] [--group 20] [--repeat 3] [--against REV]

Writes --rows IMDb reviews (the sample, repeated) into --tables Parquet files twice: in row
groups of --group rows, and in one row group per file. Trains the transformer encoder of
benchmarks/transformer.py (a model whose cost grows with length, so batch sizes matter) and
times, in each round:
  (a) daskinfer, default settings, on the small row groups
  (b) daskinfer on the same files written with one row group each
  (g) with --against REV: daskinfer as it was at git revision REV, on the small row groups
and prints the medians and (a)/(b), (g)/(a) as ratios of wall times.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from throughput import IMDB, PY, remove_worktree, timed, worktree  # noqa: E402


def write_tables(folder: Path, rows: int, tables: int, group: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [p.read_text("utf-8") for p in sorted(IMDB.glob("*/*/*.txt"))]
    folder.mkdir(parents=True)
    per_table = -(-rows // tables)
    for n, start in enumerate(range(0, rows, per_table)):
        chunk = [texts[i % len(texts)] for i in range(start, min(rows, start + per_table))]
        table = pa.table({"id": list(range(start, start + len(chunk))), "text": chunk})
        pq.write_table(table, folder / f"part-{n:04d}.parquet", row_group_size=group or len(chunk))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2740)
    ap.add_argument("--tables", type=int, default=41)
    ap.add_argument("--group", type=int, default=20, help="rows per row group of (a)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--against", default=None, help="a git revision of daskinfer to time as (g)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="daskinfer-row-groups-"))
    try:
        model = work / "transformer.keras"
        subprocess.run([PY, str(HERE / "transformer.py"), "train", str(model)], check=True)
        write_tables(work / "small", args.rows, args.tables, args.group)
        write_tables(work / "whole", args.rows, args.tables, 0)
        daskinfer = [PY, "-m", "daskinfer", f"inference.model_path={model}", "inference.input_format=parquet",
                     "inference.id_column=id"]
        runs = {"a": ("small", None), "b": ("whole", None)}
        if args.against:
            runs["g"] = ("small", worktree(args.against, work / "before"))
        times = {key: [] for key in runs}
        for i in range(args.repeat):  # each round runs every contender once: drift weighs on all alike
            for key, (folder, env) in runs.items():
                times[key].append(timed([*daskinfer, f"inference.input_data_dir={work / folder}",
                                         f"inference.output_path={work}/{key}{i}/out.jsonl"], work, env))
                print(f"  round {i} ({key}) {times[key][-1]:.1f} s", flush=True)
        median = {key: statistics.median(taken) for key, taken in times.items()}
        for key, taken in times.items():
            print(f"({key}) {args.rows} rows in {args.tables} tables  median {median[key]:.1f} s "
                  f"({' '.join(f'{t:.1f}' for t in taken)})")
        print(f"(a) / (b) wall time = {median['a'] / median['b']:.2f}")
        if "g" in median:
            print(f"(g) / (a) wall time = {median['g'] / median['a']:.2f}")
    finally:
        if args.against:
            remove_worktree(work / "before")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
