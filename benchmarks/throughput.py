"""Throughput: daskinfer against the alternatives, same model, same documents, one run.

    python benchmarks/throughput.py [--docs 40000] [--repeat 3] [--heavy] [--only a,b] [--against REV]
                                    [--set KEY=VALUE ...]

Makes N documents by copying ../shared/data/imdb-sample under new names, trains a small
Keras sentiment model (or, with --heavy, a 1-D CNN whose compute dominates), and times as
whole processes, median of --repeat rounds (each round runs every contender once):
  (a) daskinfer's CLI, default settings (LocalCluster sized to the machine)
  (b) the ideal single process: read all, predict in batches of 256, write JSONL
  (c) the original loop, model.predict once per file (on a sample: --loop-sample)
  (d) dask.bag.read_text, one partition per file, model cached per worker (on --bag-sample)
  (e) Ray Data, when ray is installed (pip install -e '.[benchmarks]')
  (f) the model alone on one core (predict time only, texts in memory), on --alone-sample;
      daskinfer's (a) is then compared with (cores x f)
  (g) with --against REV: daskinfer as it was at git revision REV (a temporary worktree put
      first on PYTHONPATH), to compare a change with what it changed, in the same rounds
  (h) with --set KEY=VALUE: daskinfer with those overrides, to weigh a setting against the
      defaults, e.g. --set inference.length_batching=false
Prints docs/s for each and the ratios to (b).
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

HERE = Path(__file__).resolve().parent
IMDB = HERE.parent.parent / "shared" / "data" / "imdb-sample"
PY = sys.executable


def make_docs(folder: Path, n: int) -> None:
    sources = sorted(IMDB.glob("*/*/*.txt"))
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        src = sources[i % len(sources)]
        shutil.copyfile(src, folder / f"{i:07d}_{src.stem.split('_')[1]}.txt")


def train(model_path: Path, heavy: bool) -> None:
    subprocess.run([PY, str(HERE / "peers.py"), "train", str(model_path), "heavy" if heavy else "small"], check=True)


def timed(cmd, cwd: Path, env=None) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=40_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--heavy", action="store_true")
    ap.add_argument("--loop-sample", type=int, default=1000)
    ap.add_argument("--bag-sample", type=int, default=4000)
    ap.add_argument("--alone-sample", type=int, default=10000)
    ap.add_argument("--only", default="a,b,c,d,e,f")
    ap.add_argument("--against", default=None, help="a git revision of daskinfer to time as (g)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="overrides for (h)")
    args = ap.parse_args()
    only = set(args.only.split(",")) | ({"g"} if args.against else set()) | ({"h"} if args.set else set())
    work = Path(tempfile.mkdtemp(prefix="daskinfer-bench-"))
    try:
        docs = work / "docs"
        make_docs(docs, args.docs)
        model = work / "model.keras"
        train(model, args.heavy)
        peers = [PY, str(HERE / "peers.py")]
        runs = {
            "a": (args.docs, lambda i: [PY, "-m", "daskinfer", f"inference.model_path={model}",
                                        f"inference.input_data_dir={docs}", f"inference.output_path={work}/a{i}/out.jsonl"]),
            "b": (args.docs, lambda i: [*peers, "single", str(model), str(docs), f"{work}/b{i}.jsonl"]),
            "c": (args.loop_sample, lambda i: [*peers, "loop", str(model), str(docs), f"{work}/c{i}.jsonl", str(args.loop_sample)]),
            "d": (args.bag_sample, lambda i: [*peers, "readtext", str(model), str(docs), f"{work}/d{i}", str(args.bag_sample)]),
            "e": (args.docs, lambda i: [*peers, "ray", str(model), str(docs), f"{work}/e{i}"]),
            "h": (args.docs, lambda i: [PY, "-m", "daskinfer", f"inference.model_path={model}", *args.set,
                                        f"inference.input_data_dir={docs}", f"inference.output_path={work}/h{i}/out.jsonl"]),
        }
        envs = {}
        if args.against:
            envs["g"] = worktree(args.against, work / "before")
            runs["g"] = (args.docs, lambda i: [PY, "-m", "daskinfer", f"inference.model_path={model}",
                                               f"inference.input_data_dir={docs}", f"inference.output_path={work}/g{i}/out.jsonl"])
        if "e" in only and subprocess.run([PY, "-c", "import ray"], capture_output=True).returncode != 0:
            print("(e) skipped: ray is not installed (pip install -e '.[benchmarks]')")
            only.discard("e")
        rates = {}
        if "f" in only:
            only.discard("f")
            alone = subprocess.run([*peers, "alone", str(model), str(docs), str(args.alone_sample)],
                                   check=True, capture_output=True, text=True)
            rates["f"] = float(alone.stdout.strip().splitlines()[-1])
            print(f"(f) model alone, one core: {rates['f']:8.0f} docs/s", flush=True)
        # Rounds take each contender in turn, so that the machine's drift over minutes (it
        # is shared) weighs on all of them alike.
        times = {key: [] for key in sorted(only)}
        for i in range(args.repeat):
            for key in times:
                times[key].append(timed(runs[key][1](i), work, envs.get(key)))
        for key, taken in times.items():
            n = runs[key][0]
            rates[key] = n / statistics.median(taken)
            shown = " ".join(f"{t:.2f}" for t in taken)
            print(f"({key}) {n:>8} docs  median {statistics.median(taken):7.2f} s  {rates[key]:8.0f} docs/s  ({shown})", flush=True)
        if "b" in rates:
            for key, rate in sorted(rates.items()):
                print(f"({key}) / (b) = {rate / rates['b']:.2f}x")
        if "a" in rates and "g" in rates:
            print(f"(a) / (g) = {rates['a'] / rates['g']:.2f}x  (this tree against {args.against})")
        if "a" in rates and "h" in rates:
            print(f"(a) / (h) = {rates['a'] / rates['h']:.2f}x  (defaults against {' '.join(args.set)})")
        if "a" in rates and "f" in rates:
            cores = os.cpu_count() or 1
            print(f"(a) / ({cores} cores x f) = {rates['a'] / (cores * rates['f']):.2f}")
        print(json.dumps({"docs": args.docs, "heavy": args.heavy, "docs_per_s": rates}))
    finally:
        if args.against:
            remove_worktree(work / "before")
        shutil.rmtree(work, ignore_errors=True)


def worktree(rev: str, folder: Path) -> dict:
    """The environment that runs daskinfer as it was at git revision rev: a worktree first on
    PYTHONPATH (the command must run outside the checkout, where -m would find this tree)."""
    subprocess.run(["git", "-C", str(HERE.parent), "worktree", "add", "--detach", str(folder), rev],
                   check=True, capture_output=True)
    return {**os.environ, "PYTHONPATH": str(folder)}


def remove_worktree(folder: Path) -> None:
    subprocess.run(["git", "-C", str(HERE.parent), "worktree", "remove", "--force", str(folder)], capture_output=True)


if __name__ == "__main__":
    main()
