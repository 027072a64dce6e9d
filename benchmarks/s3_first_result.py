"""Listing to first result on S3: how long a run over a big bucket takes to write its first
result, now that the bucket is scored while it is listed, against a git revision that
listed it whole first.

    python benchmarks/s3_first_result.py [--keys 100000] [--latency-ms 20] [--against REV]

moto's S3 server runs in this process (ThreadedMotoServer on 127.0.0.1); the keys (tiny
documents) are put straight into its backend, so that making 100,000 of them takes seconds.
Every request of the runs goes through s3_read.py's LatencyProxy, which holds each request
--latency-ms, as a store across a network does. Each run is stopped once its first result
is on disk (reading 100,000 objects through a Python proxy is not what is measured here);
the two contenders alternate, --repeat rounds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from s3_read import LatencyProxy  # noqa: E402
from throughput import train  # noqa: E402

RT = HERE.parent.parent / "shared" / "data" / "rt-polarity" / "utf8" / "rt-polarity.pos"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fill_bucket(n: int) -> None:
    """n one-line documents in s3://bench/docs/, put into moto's backend directly."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    backend.create_bucket("bench", "us-east-1")
    lines = RT.read_text("utf-8").splitlines()
    for i in range(n):
        backend.put_object("bench", f"docs/{i:07d}.txt", lines[i % len(lines)].encode())


def first_result(cmd: list, out: Path, env: dict) -> float:
    started = time.perf_counter()
    # cwd away from the checkout: `python -m` puts the working folder first on sys.path,
    # where it would win over a revision's worktree on PYTHONPATH.
    job = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                           cwd=tempfile.gettempdir())
    partial = Path(f"{out}.partial")
    try:
        while not (partial.exists() and partial.stat().st_size):
            if job.poll() is not None:
                raise SystemExit(f"the run ended first ({job.returncode}): {job.stderr.read().decode()[-2000:]}")
            time.sleep(0.02)
        return time.perf_counter() - started
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--latency-ms", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--against", default=None, help="a git revision to compare with (a worktree on PYTHONPATH)")
    args = ap.parse_args()
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    work = Path(tempfile.mkdtemp(prefix="daskinfer-s3first-"))
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        fill_bucket(args.keys)
        proxy = LatencyProxy(port, args.latency_ms / 1000)
        model = work / "model.keras"
        train(model, heavy=False)
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}"}
        contenders = {"now": env}
        if args.against:
            tree = work / "against"
            subprocess.run(["git", "worktree", "add", "--detach", str(tree), args.against], check=True,
                           cwd=HERE.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            contenders[args.against] = {**env, "PYTHONPATH": str(tree)}
        times: dict = {name: [] for name in contenders}
        for i in range(args.repeat):
            for name, run_env in contenders.items():
                out = work / f"{name}-{i}" / "res.jsonl"
                cmd = [sys.executable, "-m", "daskinfer", f"inference.model_path={model}",
                       "inference.input_data_dir=s3://bench/docs/", f"inference.output_path={out}"]
                times[name].append(first_result(cmd, out, run_env))
                print(f"round {i + 1} {name}: first result after {times[name][-1]:.1f} s", flush=True)
        print(f"{args.keys} keys, {args.latency_ms} ms per request; median seconds to the first result:")
        for name, values in times.items():
            print(f"  {name:>12}: {statistics.median(values):.1f} s")
    finally:
        server.stop()
        if args.against:
            subprocess.run(["git", "worktree", "remove", "--force", str(work / "against")], cwd=HERE.parent,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
