"""S3 read stage: daskinfer's partition reads against one GET after another.

Starts moto's S3 server on 127.0.0.1, uploads N small review objects (copies of
../shared/data/imdb-sample under new names), then times, in this one process:
  sequential  one blocking GET per object (boto3 get_object in a loop)
  daskinfer   reading.read_all over the same objects, partition by partition
and prints both rates and their ratio.

    python benchmarks/s3_read.py [N=4000] [LATENCY_MS=0]

With LATENCY_MS, both readers go through a local TCP proxy that holds each request for
that long before passing it on, as a store across a network does (moto on loopback
answers in about 3 ms of its own CPU, which no client-side concurrency can beat).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3

from daskinfer import listing, partitions, reading

REPO = Path(__file__).resolve().parents[1]
IMDB = REPO.parent / "shared" / "data" / "imdb-sample"


def wait_for(port: int) -> None:
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError("moto_server did not start")


class LatencyProxy:
    """127.0.0.1:port -> 127.0.0.1:upstream, holding each client->server chunk latency_s."""

    def __init__(self, upstream: int, latency_s: float):
        self.upstream, self.latency_s = upstream, latency_s
        self.loop = asyncio.new_event_loop()
        server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    async def _serve(self, reader, writer):
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        await asyncio.gather(self._pump(reader, up_writer, self.latency_s), self._pump(up_reader, writer, 0))

    @staticmethod
    async def _pump(reader, writer, delay):
        try:
            while data := await reader.read(65536):
                if delay:
                    await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


def main(n: int = 4000, latency_ms: int = 0) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_ENDPOINT_URL=endpoint, AWS_DEFAULT_REGION="us-east-1")
    try:
        wait_for(port)
        if latency_ms:
            proxy = LatencyProxy(port, latency_ms / 1000)
            os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{proxy.port}"
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="bench")
        texts = [p.read_bytes() for p in sorted(IMDB.glob("*/*/*.txt"))]
        keys = [f"docs/{i:07d}.txt" for i in range(n)]
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda kv: s3.put_object(Bucket="bench", Key=kv[0], Body=kv[1]),
                          zip(keys, itertools.cycle(texts))))

        started = time.perf_counter()
        sequential = [s3.get_object(Bucket="bench", Key=k)["Body"].read() for k in keys]
        t_seq = time.perf_counter() - started

        docs = listing.list_documents("s3://bench/docs/")
        started = time.perf_counter()
        read = []
        for group in partitions.group(docs, 1000, 16 * 2**20):
            read.extend(reading.read_all(group, {}, 10 * 2**20))
        t_dask = time.perf_counter() - started
        assert read == sequential, "the two readers disagree"

        print(f"objects: {n}, bytes: {sum(map(len, read)):,}, added latency: {latency_ms} ms per request")
        print(f"sequential GETs : {t_seq:6.2f} s  {n / t_seq:8.0f} objects/s")
        print(f"daskinfer reads : {t_dask:6.2f} s  {n / t_dask:8.0f} objects/s")
        print(f"ratio           : {t_seq / t_dask:6.1f}x")
    finally:
        server.terminate()


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
