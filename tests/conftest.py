from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DASKINFER_SHARED_DATA", REPO.parent / "shared" / "data"))
IMDB = SHARED_DATA / "imdb-sample"

sys.path.insert(0, str(Path(__file__).parent))


def read_labeled(folder: Path):
    """(texts, labels) of an aclImdb split: pos = 1, neg = 0."""
    texts, labels = [], []
    for label, sub in ((1, "pos"), (0, "neg")):
        for path in sorted((folder / sub).glob("*.txt")):
            texts.append(path.read_text("utf-8"))
            labels.append(label)
    return texts, labels


def rating_label(path: str) -> int:
    """aclImdb names are <id>_<rating>.txt: rating >= 7 is positive."""
    return int(Path(path).stem.split("_")[1]) >= 7


def read_jsonl(path) -> List[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# ---------------------------------------------------------------- running the suite in parallel

# pytest-xdist (`-n 3 --dist loadgroup`, in pyproject.toml) runs the tests on three workers. A
# test that needs one of these costly shared fixtures joins its group, and each group runs on
# one worker, so that the fixture starts once (the first name a test uses wins; an explicit
# xdist_group mark wins over all). Every other test is handed out alone, to whichever worker
# is free.
SHARED_FIXTURE_GROUPS = {
    "mlflow_server": "mlflow-server",      # `mlflow server` (tens of seconds to start) and the models on it
    "client": "local-cluster",             # the session's LocalCluster
    "cluster": "dask-processes",           # test_distributed's `dask scheduler` / `dask worker` processes
    "many_small_docs": "dask-processes",   # 30,000 files, and the runs that read them
    "s3_data": "s3-data",                  # the reviews and models uploaded to moto
    "attention": "attention",              # models trained by one module
    "four_class": "four-class",
}

# Tests handed out alone that take longest: started first, so that none is left running
# alone at the end while the other worker has nothing to do.
SLOW_FIRST = (
    "test_an_s3_endpoint_stopped_mid_run",
    "test_keras_hub_classifier_scored_end_to_end",
    "test_two_runs_with_the_default_output_in_one_folder",
    "test_the_dashboard_shows_while_a_run_scores",
    "test_notebook_runs_top_to_bottom",
    "test_a_scheduler_killed_mid_run",
    "test_demo_builds_a_model",
    "test_two_runs_on_one_output_path",
    "test_report_html_renders_offline",
    "test_a_resume_after_the_inputs_changed",
    "test_sigterm_during_start_up",
    "test_first_results_are_written_before_the_listing_ends",
    "test_an_incremental_run_killed_mid_way",
    "test_incremental_on_s3_uses_etags",
)


def _group(item) -> Optional[str]:
    marked = item.get_closest_marker("xdist_group")
    if marked is not None:
        return str(marked.args[0] if marked.args else marked.kwargs.get("name", "default"))
    return next((g for name, g in SHARED_FIXTURE_GROUPS.items() if name in item.fixturenames), None)


def pytest_collection_modifyitems(config, items):
    def slow_alone(item) -> int:
        return 0 if _group(item) is None and item.name.startswith(SLOW_FIRST) else 1

    items.sort(key=slow_alone)  # stable: the rest keep their order
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker and hasattr(config, "workerinput"):
        groups = {item.nodeid: group for item in items if (group := _group(item))}
        # beside this worker's base temporary folder: in the controller's, where the scheduler reads it
        (config._tmp_path_factory.getbasetemp().parent / f"xdist-groups-{worker}.json").write_text(json.dumps(groups))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """xdist's loadgroup, grouping by what the workers wrote (xdist's own loadgroup reads
    xdist_group marks through a node id that pytest 9 no longer lets it change)."""
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class SharedFixtureScheduling(LoadGroupScheduling):
        groups: Optional[Dict[str, str]] = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:
                self.groups = {}
                for path in config._tmp_path_factory.getbasetemp().glob("xdist-groups-*.json"):
                    self.groups.update(json.loads(path.read_text()))
            return self.groups.get(nodeid) or super()._split_scope(nodeid)  # else xdist's: a mark's group, or the test alone

    return SharedFixtureScheduling(config, log)


@pytest.fixture(scope="session", autouse=True)
def shared_data_present():
    if not IMDB.is_dir():
        pytest.exit(f"shared review data not found at {IMDB}", returncode=3)


@pytest.fixture(scope="session")
def test_docs(tmp_path_factory) -> Path:
    """../shared/data/imdb-sample/test flattened into one folder, aclImdb names kept."""
    folder = tmp_path_factory.mktemp("imdb-test")
    for sub in ("pos", "neg"):
        for path in (IMDB / "test" / sub).glob("*.txt"):
            shutil.copyfile(path, folder / path.name)
    return folder


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """{format: (path, in-process predict)} trained on the shared train split."""
    import models as builder

    texts, labels = read_labeled(IMDB / "train")
    return builder.save_all(tmp_path_factory.mktemp("models"), texts, labels)


@pytest.fixture(scope="session")
def reference_scores(models, test_docs):
    """{format: {absolute path: score}}: the same models called in-process on the test docs."""
    paths = sorted(str(p) for p in test_docs.glob("*.txt"))
    texts = [Path(p).read_text("utf-8") for p in paths]
    out, by_function = {}, {}
    for fmt, (_, predict) in models.items():
        if predict not in by_function:
            by_function[predict] = dict(zip(paths, map(float, predict(texts))))
        out[fmt] = by_function[predict]
    return out


@pytest.fixture(scope="session")
def many_small_docs(tmp_path_factory, models):
    """30,000 one-sentence documents (Rotten Tomatoes snippets) and the in-process scores."""
    folder = tmp_path_factory.mktemp("snippets")
    lines = []
    for name in ("rt-polarity.pos", "rt-polarity.neg"):
        lines += (SHARED_DATA / "rt-polarity" / "utf8" / name).read_text("utf-8").splitlines()
    texts = [lines[i % len(lines)] for i in range(30_000)]
    paths = [str(folder / f"{i:06d}_{'8' if i % len(lines) < 5331 else '2'}.txt") for i in range(len(texts))]
    for path, text in zip(paths, texts):
        Path(path).write_text(text, "utf-8")
    distinct = sorted(set(texts))  # the snippets come round three times: each is scored once
    score_of = dict(zip(distinct, map(float, models["keras"][1](distinct))))
    return folder, {path: score_of[text] for path, text in zip(paths, texts)}


NULL_ROWS = (5, 777, 1602)  # table rows whose text is missing: errors at their row numbers


@pytest.fixture(scope="session")
def reviews_table(test_docs, models):
    """The test reviews as rows (text with real newlines, id, label) and in-process scores."""
    paths = sorted(test_docs.glob("*.txt"))
    texts = [p.read_text("utf-8").replace("<br /><br />", "\n\n") for p in paths]
    rows = [{"text": t, "id": p.stem, "label": int(rating_label(p))} for p, t in zip(paths, texts)]
    for row in NULL_ROWS:
        rows.insert(row, {"text": None, "id": f"null-{row}", "label": 1})
    scores = dict(zip(texts, map(float, models["keras"][1](texts))))
    assert any("\n" in t and "," in t and '"' in t for t in texts)
    return rows, scores


@pytest.fixture(scope="session")
def table_files(tmp_path_factory, reviews_table) -> Dict[str, Path]:
    """The rows written as JSONL, as CSV (quoted fields holding commas, quotes and newlines)
    and as Parquet with several row groups."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows, _ = reviews_table
    folder = tmp_path_factory.mktemp("tables")
    frame = pd.DataFrame(rows)
    frame.to_json(folder / "reviews.jsonl", orient="records", lines=True, force_ascii=False)
    frame.to_csv(folder / "reviews.csv", index=False)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), folder / "reviews.parquet", row_group_size=400)
    assert pq.ParquetFile(folder / "reviews.parquet").metadata.num_row_groups == 5
    return {fmt: folder / f"reviews.{fmt}" for fmt in ("jsonl", "csv", "parquet")}


@pytest.fixture(scope="session")
def client():
    """A LocalCluster of two one-thread workers for tests that call the Python API."""
    import distributed

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            yield client


@pytest.fixture(scope="session")
def on_client(client) -> Tuple[str, ...]:
    """Command-line arguments for a run on the session's cluster (a scheduler address, as
    on several VMs) rather than on a LocalCluster of its own. Its workers have TensorFlow
    imported and the test models loaded: such a run costs 3 s of CPU, one that starts a
    cluster 12 s, and the suite runs on 2 cores. For tests of what a run does, not of how
    its cluster starts, stops or dies, and whose workers need no environment of the run's."""
    return (f"cluster.address={client.scheduler.address}",)


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    @property
    def stderr_lines(self) -> List[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def run_cli(*args: str, cwd: Path, env: Optional[Dict[str, str]] = None, timeout: float = 300, script: bool = False) -> Run:
    """`python -m daskinfer ARGS` (or the `daskinfer` console script) in a child process, as a user runs it."""
    program = [str(Path(sys.executable).parent / "daskinfer")] if script else [sys.executable, "-m", "daskinfer"]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    full_env.update(env or {})
    done = subprocess.run(
        [*program, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def assert_predictions(records: List[dict], expected: List[str], reference: Dict[str, float]) -> None:
    """What a user checks: every input once, sorted, the model's own scores, good accuracy.

    expected: every input's path or URI; reference: path or URI -> in-process score.
    """
    assert [r["filepath"] for r in records] == sorted(expected)
    for r in records:
        assert set(r) == {"time", "filepath", "logit_prob", "sentiment"}
        assert abs(r["logit_prob"] - reference[r["filepath"]]) <= 1e-5, r["filepath"]
        assert r["sentiment"] == ("positive" if r["logit_prob"] > 0.5 else "negative")
        assert r["time"].endswith("+0000") and len(r["time"]) == 24
    accuracy = sum((r["sentiment"] == "positive") == rating_label(r["filepath"]) for r in records) / len(records)
    assert accuracy >= 0.7, accuracy


def local_docs(folder: Path) -> List[str]:
    return [str(p) for p in folder.glob("*.txt")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@dataclass
class S3Server:
    """moto's S3 server over HTTP on 127.0.0.1, with IAM authentication switched on."""

    endpoint: str
    key: str
    secret: str

    @property
    def env(self) -> Dict[str, str]:
        """What a user exports to reach this store."""
        return {
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=self.key, aws_secret_access_key=self.secret,
        )

    def upload_folder(self, folder: Path, bucket: str, prefix: str) -> List[str]:
        """Every file under folder to s3://bucket/prefix/..., returning the URIs."""
        client, uris = self.client(), []
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            key = f"{prefix}/{path.relative_to(folder).as_posix()}"
            client.upload_file(str(path), bucket, key)
            uris.append(f"s3://{bucket}/{key}")
        return uris


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 endpoint: moto_server in its own process. The first three requests create
    an IAM user with full S3 access; from then on every request must be signed by it."""
    import boto3

    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port)
        endpoint = f"http://127.0.0.1:{port}"
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                           aws_access_key_id="setup", aws_secret_access_key="setup")
        iam.create_user(UserName="daskinfer")
        key = iam.create_access_key(UserName="daskinfer")["AccessKey"]
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName="daskinfer", PolicyName="s3", PolicyDocument=json.dumps(policy))
        yield S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        server.terminate()
        server.wait(10)
        log.close()


# The MLflow server's fixtures, registered once for the whole session (a test module that
# imported them would get a server of its own).
from mlflow_server import mlflow_server, registered  # noqa: E402,F401
