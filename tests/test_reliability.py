"""A job over many documents must not die for one bad file, must say what failed, and must
pick up where it stopped after a crash, Ctrl-C or SIGTERM."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from conftest import IMDB, read_jsonl, run_cli
from test_documents import make_mixed_folder
from test_errors import assert_user_error

# Tiny model calls keep these runs going for several seconds, long enough to interrupt.
SLOW = "inference.batch_size=4"


def poisoned_model(path: Path) -> None:
    """A real SavedModel that scores by length and fails on any batch holding 'POISON'."""
    import tensorflow as tf

    class Scorer(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def serve(self, texts):
            poisoned = tf.reduce_any(tf.strings.regex_full_match(texts, "(?s).*POISON.*"))
            tf.debugging.assert_equal(poisoned, False, message="poisoned document")
            return {"score": tf.sigmoid((tf.cast(tf.strings.length(texts), tf.float32) - 900.0) / 300.0)}

    scorer = Scorer()
    tf.saved_model.save(scorer, str(path), signatures={"serving_default": scorer.serve})


def test_a_document_the_model_fails_on_is_isolated(tmp_path, on_client):
    docs = tmp_path / "docs"
    docs.mkdir()
    for source in sorted((IMDB / "test" / "pos").glob("*.txt"))[:40]:
        shutil.copyfile(source, docs / source.name)
    (docs / "10_poison.txt").write_text("this review is POISON for the model")
    (docs / "99_poison.txt").write_text("more POISON")
    poisoned_model(tmp_path / "model")
    out = tmp_path / "res.jsonl"
    run = run_cli(
        f"inference.model_path={tmp_path / 'model'}", f"inference.input_data_dir={docs}",
        f"inference.output_path={out}", "inference.batch_size=16", "inference.error_budget=0.1", *on_client,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    errors = read_jsonl(tmp_path / "errors.jsonl")
    assert sorted(Path(e["filepath"]).name for e in errors) == ["10_poison.txt", "99_poison.txt"]
    assert all(e["error"].startswith("model failed") and "poisoned document" in e["error"] for e in errors)
    records = read_jsonl(out)
    assert len(records) == 40
    for r in records:
        length = len(Path(r["filepath"]).read_bytes())  # tf.strings.length counts bytes
        assert abs(r["logit_prob"] - 1 / (1 + np.exp(-(length - 900.0) / 300.0))) < 1e-5


def test_error_budget(models, tmp_path, on_client):
    docs, _ = make_mixed_folder(tmp_path)  # 34 documents, 4 of them bad: 11.8 %
    common = (f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={docs}",
              "inference.max_document_bytes=20000", *on_client)
    strict = run_cli(*common, f"inference.output_path={tmp_path}/strict/res.jsonl", cwd=tmp_path)
    assert strict.returncode == 3
    assert "Traceback" not in strict.stderr
    assert strict.stderr_lines[-1] == (
        "daskinfer: error: 4 of 34 documents failed, above inference.error_budget=0.01; "
        f"see {tmp_path}/strict/errors.jsonl"
    )
    assert len(read_jsonl(tmp_path / "strict" / "res.jsonl")) == 30  # everything is written all the same
    assert len(read_jsonl(tmp_path / "strict" / "errors.jsonl")) == 4
    summary = json.loads((tmp_path / "strict" / "summary.json").read_text())
    assert (summary["predicted"], summary["errors"]) == (30, 4)

    generous = run_cli(*common, f"inference.output_path={tmp_path}/generous/res.jsonl", "inference.error_budget=0.2", cwd=tmp_path)
    assert generous.returncode == 0, generous.stderr


def start(args, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "daskinfer", *args], cwd=cwd, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for_progress(out: Path, job: subprocess.Popen, lines: int = 1000) -> None:
    partial = Path(f"{out}.partial")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and job.poll() is None:
        if partial.exists() and partial.read_bytes().count(b"\n") >= lines:
            return
        time.sleep(0.05)
    raise AssertionError(f"no progress to interrupt: {job.poll()}, {job.stderr.read() if job.poll() is not None else ''}")


def assert_complete(out: Path, reference: dict) -> None:
    records = read_jsonl(out)
    assert [r["filepath"] for r in records] == sorted(reference)  # every document once, in order
    for r in records:
        assert abs(r["logit_prob"] - reference[r["filepath"]]) <= 1e-5


def test_resume_after_kill_9_of_the_driver_and_its_workers(models, many_small_docs, tmp_path):
    folder, reference = many_small_docs
    out = tmp_path / "res.jsonl"
    args = [f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={folder}",
            f"inference.output_path={out}", "inference.partition_size=250", SLOW, "cluster.n_workers=2"]
    job = start(args, tmp_path)
    wait_for_progress(out, job)
    os.killpg(job.pid, signal.SIGKILL)  # the driver and the LocalCluster it started
    job.wait(30)
    with open(f"{out}.partial", "ab") as f:
        f.write(b'{"time": "2026-11-25T10:00:00+0000", "filepath": "/torn')  # a line cut by the crash
    written_before = Path(f"{out}.partial").read_bytes().count(b"\n")

    refused = run_cli(*args, cwd=tmp_path)
    assert_user_error(refused, "inference.resume=true", f"{out}.partial")

    resumed = run_cli(*args, "inference.resume=true", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert_complete(out, reference)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["skipped"] == written_before > 0
    assert summary["predicted"] == len(reference) and summary["errors"] == 0

    again = run_cli(*args, "inference.resume=true", cwd=tmp_path)  # nothing left to do
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "summary.json").read_text())["skipped"] == len(reference)
    assert_complete(out, reference)


def test_sigterm_stops_quickly_and_prints_how_to_resume(models, many_small_docs, tmp_path):
    folder, reference = many_small_docs
    out = tmp_path / "run" / "res.jsonl"
    job = start([f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={folder}",
                 f"inference.output_path={out}", "inference.partition_size=250", SLOW], tmp_path)
    wait_for_progress(out, job)
    signalled = time.monotonic()
    job.send_signal(signal.SIGTERM)
    _, stderr = job.communicate(timeout=60)
    assert time.monotonic() - signalled < 15
    assert job.returncode == 130
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"daskinfer: error: interrupted; partial results kept for resuming into {out}; to resume: daskinfer ")
    assert Path(f"{out}.partial").exists() and not out.exists()

    command = shlex.split(last.split("to resume: ", 1)[1])
    assert command[0] == "daskinfer"
    finish = run_cli(*command[1:], cwd=tmp_path)
    assert finish.returncode == 0, finish.stderr
    assert_complete(out, reference)


def test_error_budget_outside_0_1_is_refused(models, test_docs, tmp_path):
    run = run_cli(f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={test_docs}",
                  "inference.error_budget=2", cwd=tmp_path)
    assert run.returncode == 2
    assert_user_error(run, "inference.error_budget must be a fraction within [0, 1]")


def test_a_task_reads_its_documents_once_its_workers_model_is_loaded(models, tmp_path, monkeypatch):
    """On Python 3.11 two threads building Python ASTs at once can fail one with "SystemError:
    AST constructor recursion depth mismatch" (CPython gh-106905): a first task reading from S3
    (s3fs's import parses source) while the preload's thread traced the model (autograph)
    failed a run so. A task therefore reads only once its worker's model is loaded."""
    import threading

    from daskinfer import model as loader
    from daskinfer import predict, reading
    from daskinfer.partitions import Partition

    fresh = tmp_path / "fresh.keras"  # loaded nowhere in this process yet
    shutil.copyfile(models["keras"][0], fresh)
    spec = loader.ModelSpec(str(fresh))
    reviews = sorted((IMDB / "test" / "pos").glob("*.txt"))[:5]
    loads_when_read, real = [], reading.read_all

    def read_all(*args, **kwargs):
        loads_when_read.append(loader.load_count(spec.uri))
        return real(*args, **kwargs)

    monkeypatch.setattr(reading, "read_all", read_all)
    preload = threading.Thread(target=loader.preload, args=(spec,))
    preload.start()  # as a worker's dask_setup starts it, just before its first task
    out = predict.score_piece(Partition([str(p) for p in reviews], [p.stat().st_size for p in reviews]),
                              predict.Settings(model=spec))
    preload.join()
    assert loads_when_read == [1]
    assert len(out.records) == len(reviews) and not out.errors and loader.load_count(spec.uri) == 1
