"""Helpers for tests/test_misuse.py: small real models with a known behaviour, servers that
are not dask schedulers, and a moto S3 server a test can stop and start again."""

from __future__ import annotations

import contextlib
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Iterator, List, Optional

from conftest import wait_for_port

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def length_score(n_bytes: int) -> float:
    """What the models below give a document of n_bytes bytes (tf.strings.length counts bytes)."""
    import math

    return 1 / (1 + math.exp(-(n_bytes - 900.0) / 300.0))


def slow_model(path: Path, sleep_us: int = 25_000) -> Path:
    """A real SavedModel that scores by length and waits about 2 * sleep_us on every call,
    without using the CPU: runs of a few hundred documents at inference.batch_size=4 then
    last seconds, long enough to interrupt, on a machine whatever its speed."""
    import tensorflow as tf
    from tensorflow.python.data.experimental.ops import testing  # the SleepDataset op

    class Scorer(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def serve(self, texts):
            waited = tf.data.Dataset.range(1).apply(testing.sleep(sleep_us)).reduce(
                tf.constant(0, tf.int64), lambda total, x: total + x
            )  # 0, once the wait is over
            score = tf.sigmoid((tf.cast(tf.strings.length(texts), tf.float32) - 900.0) / 300.0)
            return {"score": score + tf.cast(waited, tf.float32)}

    scorer = Scorer()
    tf.saved_model.save(scorer, str(path), signatures={"serving_default": scorer.serve})
    return path


def nonfinite_model(path: Path) -> Path:
    """A real SavedModel that scores by length, except NaN for a document holding NANMARK
    and +inf for one holding INFMARK."""
    import tensorflow as tf

    class Scorer(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def serve(self, texts):
            score = tf.sigmoid((tf.cast(tf.strings.length(texts), tf.float32) - 900.0) / 300.0)
            nan = tf.strings.regex_full_match(texts, "(?s).*NANMARK.*")
            inf = tf.strings.regex_full_match(texts, "(?s).*INFMARK.*")
            score = tf.where(inf, tf.fill(tf.shape(score), float("inf")), score)
            score = tf.where(nan, tf.fill(tf.shape(score), float("nan")), score)
            return {"score": score}

    scorer = Scorer()
    tf.saved_model.save(scorer, str(path), signatures={"serving_default": scorer.serve})
    return path


def killer_model(path: Path, after_us: int = 1_000_000) -> Path:
    """A real SavedModel that scores by length, and ends the process that calls it on a
    batch holding a document with DIEMARK, after_us later (as a worker out of memory is
    ended, once it has ground for a while)."""
    import tensorflow as tf
    from tensorflow.python.data.experimental.ops import testing  # the SleepDataset op

    class Scorer(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def serve(self, texts):
            score = tf.sigmoid((tf.cast(tf.strings.length(texts), tf.float32) - 900.0) / 300.0)
            doomed = tf.reduce_any(tf.strings.regex_full_match(texts, "(?s).*DIEMARK.*"))

            def die():
                ground = tf.data.Dataset.range(1).apply(testing.sleep(after_us)).reduce(
                    tf.constant(0, tf.int64), lambda total, x: total + x)
                with tf.control_dependencies([ground]):
                    abort = tf.raw_ops.Abort(error_msg="DIEMARK")
                with tf.control_dependencies([abort]):
                    return tf.identity(score)

            return {"score": tf.cond(doomed, die, lambda: score)}

    scorer = Scorer()
    tf.saved_model.save(scorer, str(path), signatures={"serving_default": scorer.serve})
    return path


# ---------------------------------------------------------------- servers that are not schedulers


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def http_server() -> Iterator[int]:
    """A plain HTTP server on 127.0.0.1, in a thread of this process; yields its port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def banner_server(banner: bytes = b"SSH-2.0-OpenSSH_9.6\r\n") -> Iterator[int]:
    """A TCP server that greets every connection with banner (as sshd does) and then keeps
    it open, saying nothing more; yields its port."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    stop = threading.Event()
    held: List[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with contextlib.suppress(OSError):
                conn.sendall(banner)
            held.append(conn)  # read nothing, answer nothing, close nothing

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()


# ---------------------------------------------------------------- an S3 server to stop mid-run


class MotoServer:
    """moto's S3 server over HTTP on 127.0.0.1:port, in its own process (no IAM: any
    credentials are accepted). It keeps its data in memory: a restart starts empty."""

    KEY, SECRET = "testing-key", "testing-secret"

    def __init__(self, port: int, log: Path):
        self.port, self.log = port, log
        self.process: Optional[subprocess.Popen] = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> Dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.KEY,
            "AWS_SECRET_ACCESS_KEY": self.SECRET,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def start(self) -> "MotoServer":
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        wait_for_port(self.port)
        return self

    def kill(self) -> None:
        """kill -9, as a crashed or unplugged endpoint: no goodbye to open connections."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait(10)

    def client(self):
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=self.KEY, aws_secret_access_key=self.SECRET,
        )

    def upload(self, paths: List[Path], bucket: str, prefix: str) -> List[str]:
        """The files to s3://bucket/prefix/<name> (bucket created), returning the URIs."""
        client = self.client()
        client.create_bucket(Bucket=bucket)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda p: client.upload_file(str(p), bucket, f"{prefix}/{p.name}"), paths))
        return [f"s3://{bucket}/{prefix}/{p.name}" for p in paths]
