"""A bucket is scored while it is listed: the first results reach the output before the
listing ends, and the output keeps the sorted order.

moto's S3 server behind a small HTTP proxy that holds back the last page of the listing
until the test has seen a result on disk: a run that waited for the whole listing before
scoring would never write one, and fails here."""

from __future__ import annotations

import http.client
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import IMDB, free_port, read_jsonl
from misuse_fakes import MotoServer

DOCS = sorted(IMDB.glob("*/*/*.txt"))[:1200]  # two listing pages: 1,000 keys, then 200


class HoldingProxy(http.server.ThreadingHTTPServer):
    """Forwards every request to moto; the last page of a paged listing waits for release."""

    def __init__(self, port: int, upstream: int):
        self.upstream, self.release, self.held = upstream, threading.Event(), threading.Event()
        super().__init__(("127.0.0.1", port), _Forward)


class _Forward(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream, timeout=60)
        upstream.request(self.command, self.path, body, dict(self.headers))
        reply = upstream.getresponse()
        data = reply.read()
        if "list-type=2" in self.path and "continuation-token" in self.path and b"<IsTruncated>false" in data:
            self.server.held.set()
            self.server.release.wait(300)
        self.send_response(reply.status)
        for name, value in reply.getheaders():
            if name.lower() not in ("transfer-encoding", "connection") and (
                    name.lower() != "content-length" or self.command == "HEAD"):
                self.send_header(name, value)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        upstream.close()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

    def log_message(self, *args) -> None:
        pass


def test_first_results_are_written_before_the_listing_ends(models, tmp_path):
    model, predict = models["keras"]
    moto = MotoServer(free_port(), tmp_path / "moto.log").start()
    proxy = HoldingProxy(free_port(), moto.port)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        client = moto.client()
        client.create_bucket(Bucket="big")
        names = [f"doc{i:05d}.txt" for i in range(len(DOCS))]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda pair: client.upload_file(str(pair[0]), "big", f"in/{pair[1]}"), zip(DOCS, names)))
        out = tmp_path / "out" / "res.jsonl"
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("DASK_")}, **moto.env,
               "AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.server_address[1]}"}
        job = subprocess.Popen(
            [sys.executable, "-m", "daskinfer", f"inference.model_path={model}", "inference.input_data_dir=s3://big/in/",
             f"inference.output_path={out}", "cluster.n_workers=1", "cluster.threads_per_worker=1",
             "cluster.dashboard_address=null"],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            partial, deadline = Path(f"{out}.partial"), time.monotonic() + 240
            while not (partial.exists() and partial.stat().st_size):
                assert job.poll() is None, job.stderr.read()[-3000:]
                assert time.monotonic() < deadline, "no result was written while the listing's last page was held"
                time.sleep(0.05)
            assert proxy.held.is_set() and not out.exists()  # the listing has not ended
            proxy.release.set()
            _, stderr = job.communicate(timeout=240)
        finally:
            proxy.release.set()
            try:
                os.killpg(job.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert job.returncode == 0, stderr[-3000:]
        assert f"Listed all {len(DOCS)} documents" in stderr
    finally:
        proxy.shutdown()
        moto.kill()
    records = read_jsonl(out)
    assert [r["filepath"] for r in records] == [f"s3://big/in/{name}" for name in names]  # sorted, each once
    scores = predict([p.read_text("utf-8") for p in DOCS])
    assert [r["logit_prob"] for r in records] == pytest.approx(list(map(float, scores)), abs=1e-5)
    summary = json.loads((out.parent / "summary.json").read_text())
    assert summary["documents"] == summary["predicted"] == len(DOCS)
    assert summary["inputs"]["count"] == len(DOCS)
