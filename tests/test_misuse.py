"""What users do wrong, or what goes wrong around them: two runs on one output, odd files,
models that return NaN, resumes after something changed, services that die mid-run, a full
disk, secrets on the command line, bad configuration, Ctrl-C.

Black-box: the real command line in child processes, on real files, models, a real
LocalCluster, real `dask scheduler` / `dask worker` processes and moto's S3 server.
Every user error is one line on stderr starting `daskinfer: error: `, a non-zero exit,
and no traceback. Each child runs in a process group of its own, killed whole at the end,
so that a run that hangs (on a FIFO, a fake scheduler...) fails its test and leaves nothing.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pytest
from conftest import IMDB, Run, free_port, read_jsonl
from dask_processes import start_cluster
from misuse_fakes import (MotoServer, banner_server, http_server, killer_model, length_score, nonfinite_model,
                          slow_model)
from test_errors import assert_user_error

# A run of the slow model on a few hundred documents lasts seconds, one small partition
# after another: long enough to interrupt, with results on disk from its first second.
SLOW = ("inference.batch_size=4", "inference.partition_size=20")
ONE_WORKER = ("cluster.n_workers=1", "cluster.threads_per_worker=1", "cluster.dashboard_address=null")
ERROR_PREFIX = "daskinfer: error: "
REVIEWS = sorted((IMDB / "test" / "pos").glob("*.txt")) + sorted((IMDB / "test" / "neg").glob("*.txt"))


# ---------------------------------------------------------------- running the command line


@dataclass
class Timed(Run):
    elapsed: float = 0.0


def child_env(env: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment a user's shell gives, as run_cli makes it: no DASK_* of the test's."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    full.update(env or {})
    return full


def start(args: Sequence[str], cwd: Path, env: Optional[Dict[str, str]] = None) -> subprocess.Popen:
    """`python -m daskinfer ARGS` in a process group of its own (its LocalCluster with it),
    with Ctrl-C's SIGINT at its default, as a terminal's foreground command has it: a test
    runner started as a background job ignores SIGINT, and its children would inherit that."""
    job = subprocess.Popen(
        [sys.executable, "-m", "daskinfer", *args], cwd=cwd, env=child_env(env), start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_as_a_terminal_starts_it,
    )
    job.started = time.monotonic()
    return job


def _as_a_terminal_starts_it() -> None:
    import resource

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    # No core files: the workers a test's model aborts (killer_model) would each write one.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def finish(job: subprocess.Popen, timeout: float) -> Timed:
    """Wait for job; past timeout, kill its whole process group and fail. Anything left of
    the group (workers of a LocalCluster) is killed either way."""
    try:
        stdout, stderr = job.communicate(timeout=max(1.0, timeout - (time.monotonic() - job.started)))
    except subprocess.TimeoutExpired:
        _kill_group(job)
        stdout, stderr = job.communicate()
        pytest.fail(f"still running after {timeout:g} s; its stderr:\n{stderr[-3000:]}")
    finally:
        _kill_group(job)
    return Timed(job.returncode, stdout, stderr, time.monotonic() - job.started)


def _kill_group(job: subprocess.Popen) -> None:
    try:
        os.killpg(job.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def cli(*args: str, cwd: Path, env: Optional[Dict[str, str]] = None, timeout: float = 180) -> Timed:
    return finish(start(args, cwd, env), timeout)


def wait_for_lines(path: Path, job: subprocess.Popen, lines: int = 20, timeout: float = 120) -> None:
    """Until path holds `lines` complete lines; fails if the job ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= lines:
            return
        if job.poll() is not None:
            _, stderr = job.communicate()
            _kill_group(job)
            pytest.fail(f"the run ended (exit {job.returncode}) before {path} had {lines} lines:\n{stderr[-3000:]}")
        time.sleep(0.05)
    _kill_group(job)
    pytest.fail(f"{path} did not get {lines} lines within {timeout:g} s")


def assert_no_traceback(run: Run) -> None:
    assert "Traceback" not in run.stderr, run.stderr
    assert "Traceback" not in run.stdout, run.stdout


def last_line(run: Run) -> str:
    assert run.stderr_lines, (run.returncode, run.stderr)
    return run.stderr_lines[-1]


def resume_args(line: str) -> List[str]:
    """The arguments of the `to resume: daskinfer ...` command printed at the end of line."""
    assert "to resume: " in line, line
    command = shlex.split(line.split("to resume: ", 1)[1])
    assert command[0] == "daskinfer", command
    return command[1:]


# ---------------------------------------------------------------- documents and models


def copy_reviews(folder: Path, count: int, offset: int = 0) -> List[str]:
    """count real reviews (aclImdb names) copied into folder; their absolute paths, sorted."""
    folder.mkdir(parents=True, exist_ok=True)
    for source in REVIEWS[offset:offset + count]:
        shutil.copyfile(source, folder / source.name)
    return sorted(str(folder / source.name) for source in REVIEWS[offset:offset + count])


def filepaths(path) -> List[str]:
    return [r["filepath"] for r in read_jsonl(path)]


def complete_lines(path: Path) -> List[dict]:
    data = path.read_bytes()
    return [json.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines()]


def summary_beside(results: Path) -> Path:
    """The run's summary: summary.json beside the results, or <stem>.summary.json when that
    name was taken by another run in the folder."""
    for name in ("summary.json", f"{results.stem}.summary.json"):
        if (results.parent / name).is_file():
            return results.parent / name
    raise AssertionError(f"no summary beside {results}: {sorted(p.name for p in results.parent.iterdir())}")


def errors_beside(results: Path) -> List[dict]:
    """Every error entry the run wrote beside results (final or .partial files), if any."""
    entries = []
    for path in sorted(results.parent.iterdir()):
        if "errors" in path.name and path.name.endswith((".jsonl", ".jsonl.partial")):
            entries += complete_lines(path)
    return entries


@pytest.fixture(scope="module")
def slow(tmp_path_factory) -> str:
    return str(slow_model(tmp_path_factory.mktemp("slow-model") / "model"))


@pytest.fixture(scope="module")
def killer(tmp_path_factory) -> str:
    return str(killer_model(tmp_path_factory.mktemp("killer-model") / "model"))


@pytest.fixture
def keras_model(models) -> str:
    return str(models["keras"][0])


def interrupted_run(slow_model_path: str, root: Path, n_docs: int = 400, extra: Sequence[str] = (),
                    settle_s: float = 0.0):
    """A run of the slow model stopped by SIGTERM once its results have some lines:
    (documents, output path, the run's arguments). settle_s: a pause between copying the
    documents and the run, to have them older than the slack a resume allows for clocks
    (resume_changes.SLACK_NS), so that it keeps their lines rather than scoring them again."""
    docs = copy_reviews(root / "docs", n_docs)
    time.sleep(settle_s)
    out = root / "out" / "res.jsonl"
    args = [f"inference.model_path={slow_model_path}", f"inference.input_data_dir={root / 'docs'}",
            f"inference.output_path={out}", *SLOW, *ONE_WORKER, *extra]
    job = start(args, root)
    wait_for_lines(Path(f"{out}.partial"), job)
    job.send_signal(signal.SIGTERM)
    run = finish(job, 60)
    assert run.returncode == 130, run.stderr
    assert not out.exists() and Path(f"{out}.partial").exists()
    return docs, out, args


# ---------------------------------------------------------------- 1. two runs, one output


def test_two_runs_on_one_output_path_the_second_refuses_with_the_holders_pid(keras_model, tmp_path, on_client):
    docs = copy_reviews(tmp_path / "docs", 200)
    for attempt in range(2):  # a race: give it more than one chance to show
        out = tmp_path / f"attempt-{attempt}" / "res.jsonl"
        args = [f"inference.model_path={keras_model}", f"inference.input_data_dir={tmp_path / 'docs'}",
                f"inference.output_path={out}", *on_client]
        jobs = [start(args, tmp_path), start(args, tmp_path)]
        runs = [finish(job, 180) for job in jobs]
        assert sorted(r.returncode for r in runs) == [0, 1], [(r.returncode, r.stderr) for r in runs]
        winner = 0 if runs[0].returncode == 0 else 1
        refused = runs[1 - winner]
        assert_user_error(refused, "in use by another run", str(jobs[winner].pid), single_line=False)
        assert filepaths(out) == docs  # every document once, sorted
        assert json.loads(summary_beside(out).read_text())["predicted"] == len(docs)


@pytest.mark.parametrize("fmt, partial, advice", [
    ("jsonl", True, "res.jsonl.partial: add inference.resume=true to continue it, or remove"),
    ("jsonl", False, "res.jsonl.lock and no results: remove it, or add inference.resume=true"),  # killed at start-up
    ("parquet", True, "res.parquet.partial, which a Parquet output cannot continue: remove"),
    ("parquet", None, "res.parquet.partial, which a Parquet output cannot continue: remove"),  # its lock removed
])
def test_what_a_killed_run_left_is_named_with_advice_that_can_be_followed(fmt, partial, advice, keras_model,
                                                                         tmp_path):
    copy_reviews(tmp_path / "docs", 5)
    out = tmp_path / "out" / f"res.{fmt}"
    out.parent.mkdir()
    if partial is not None:
        Path(f"{out}.lock").write_text("{}")  # nobody holds it: its run was killed
    if partial in (True, None):
        Path(f"{out}.partial").write_bytes(b"")
    run = cli(f"inference.model_path={keras_model}", f"inference.input_data_dir={tmp_path / 'docs'}",
              f"inference.output_format={fmt}", f"inference.output_path={out}", cwd=tmp_path, timeout=120)
    assert_user_error(run, advice, code=1)
    assert ("resume" in last_line(run)) == (fmt == "jsonl")


def test_two_runs_with_the_default_output_in_one_folder_get_a_folder_each(keras_model, tmp_path, on_client):
    docs = copy_reviews(tmp_path / "docs", 100)
    args = [f"inference.model_path={keras_model}", f"inference.input_data_dir={tmp_path / 'docs'}", *on_client]
    for attempt in range(2):  # started together, they want the same <date>/<time> folder (a race)
        cwd = tmp_path / f"attempt-{attempt}"
        cwd.mkdir()
        jobs = [start(args, cwd), start(args, cwd)]
        runs = [finish(job, 180) for job in jobs]
        assert [r.returncode for r in runs] == [0, 0], [r.stderr for r in runs]
        locations = [last_line(r).split("Output result location: ", 1)[1] for r in runs]
        assert locations[0] != locations[1]
        for location in locations:
            assert re.fullmatch(
                re.escape(str(cwd)) + r"/outputs/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d(-\d+)?/batch-infer-res\.jsonl", location
            ), location
            assert filepaths(location) == docs
            summary = json.loads((Path(location).parent / "summary.json").read_text())
            assert summary["predicted"] == summary["documents"] == len(docs)


# ---------------------------------------------------------------- 2. sidecars


def test_a_second_results_file_in_a_folder_gets_sidecars_of_its_own(keras_model, tmp_path, on_client):
    docs = copy_reviews(tmp_path / "docs", 40)
    folder = tmp_path / "results"
    common = (f"inference.model_path={keras_model}", f"inference.input_data_dir={tmp_path / 'docs'}", *on_client)
    first = cli(*common, f"inference.output_path={folder / 'a.jsonl'}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    sidecars = ("errors.jsonl", "summary.json", "config.yaml", "report.html", "ledger.parquet")
    before = {name: (folder / name).read_bytes() for name in sidecars}
    assert json.loads(before["summary.json"])["predicted"] == len(docs)

    second = cli(*common, f"inference.output_path={folder / 'b.jsonl'}", "inference.threshold=0.7", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert {name: (folder / name).read_bytes() for name in sidecars} == before  # run A's, untouched
    assert filepaths(folder / "b.jsonl") == docs
    assert json.loads((folder / "b.summary.json").read_text())["predicted"] == len(docs)
    assert (folder / "b.errors.jsonl").read_text() == ""
    assert "threshold: 0.7" in (folder / "b.config.yaml").read_text()
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["a.jsonl", *sidecars, "b.jsonl", "b.errors.jsonl", "b.summary.json", "b.config.yaml", "b.report.html",
         "b.ledger.parquet"]
    )


@pytest.mark.parametrize("name,output_format", [("errors.jsonl", "jsonl"), ("ledger.parquet", "parquet")])
def test_a_results_file_named_like_a_sidecar_keeps_its_sidecars_apart(keras_model, tmp_path, on_client, name,
                                                                       output_format):
    docs = copy_reviews(tmp_path / "docs", 30)
    results = tmp_path / "out" / name
    done = cli(f"inference.model_path={keras_model}", f"inference.input_data_dir={tmp_path / 'docs'}",
               f"inference.output_path={results}", f"inference.output_format={output_format}", *on_client,
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    stem = name.split(".")[0]
    summary = json.loads((tmp_path / "out" / f"{stem}.summary.json").read_text())
    assert summary["predicted"] == summary["documents"] == len(docs)
    assert (tmp_path / "out" / f"{stem}.errors.jsonl").read_text() == ""
    if output_format == "jsonl":
        assert filepaths(results) == docs
    else:
        import pyarrow.parquet as pq

        assert pq.read_table(results).column("filepath").to_pylist() == [str(d) for d in docs]
        assert pq.read_table(tmp_path / "out" / f"{stem}.ledger.parquet").num_rows == len(docs)


# ---------------------------------------------------------------- 3. NaN and inf


def _refuse(constant: str):
    raise ValueError(f"not strict JSON: {constant}")


def test_a_score_that_is_not_finite_is_an_error_entry_and_the_results_stay_strict_json(tmp_path, on_client):
    docs = copy_reviews(tmp_path / "docs", 40)
    (tmp_path / "docs" / "5000_1.txt").write_text("a review the model answers NANMARK to")
    (tmp_path / "docs" / "5001_10.txt").write_text("a review the model answers INFMARK to")
    model = nonfinite_model(tmp_path / "model")
    out = tmp_path / "out" / "res.jsonl"
    run = cli(f"inference.model_path={model}", f"inference.input_data_dir={tmp_path / 'docs'}",
              f"inference.output_path={out}", "inference.error_budget=0.5", *on_client, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    lines = out.read_text("utf-8").splitlines()
    records = [json.loads(line, parse_constant=_refuse) for line in lines]  # no NaN, no Infinity
    assert [r["filepath"] for r in records] == docs
    for r in records:
        assert math.isfinite(r["logit_prob"])
        assert abs(r["logit_prob"] - length_score(len(Path(r["filepath"]).read_bytes()))) < 1e-5
    errors = {Path(e["filepath"]).name: e["error"] for e in read_jsonl(out.parent / "errors.jsonl")}
    assert set(errors) == {"5000_1.txt", "5001_10.txt"}
    assert all("non-finite" in error for error in errors.values()), errors
    summary = json.loads(summary_beside(out).read_text())
    assert (summary["documents"], summary["predicted"], summary["errors"]) == (42, 40, 2)


# ---------------------------------------------------------------- 3b. a document its workers die on

# dask gives a task up once one worker died running it, not four (its default): each
# death costs a worker's restart, and the same code runs either way.
GIVE_UP_AT_ONCE = {"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}


def test_a_document_that_kills_its_workers_is_an_error_entry_and_the_rest_is_scored(killer, tmp_path):
    """Each worker that meets it dies (as one out of memory is ended): dask gives up on its
    partition, whose other documents are then scored one at a time, their results joined
    (test_sink: in Parquet too)."""
    docs = copy_reviews(tmp_path / "docs", 40)
    poison = tmp_path / "docs" / f"{Path(docs[20]).stem}_poison.txt"  # mid-partition
    poison.write_text("a review the workers die on: DIEMARK")
    out = tmp_path / "out" / "res.jsonl"
    run = cli(f"inference.model_path={killer}", f"inference.input_data_dir={tmp_path / 'docs'}",
              f"inference.output_path={out}", "inference.error_budget=0.1",
              "cluster.n_workers=2", "cluster.threads_per_worker=1", "cluster.dashboard_address=null", cwd=tmp_path,
              timeout=300)  # at dask's own allowed failures: at 0 and at 1, even with one task a worker at a time
    # (worker-saturation 1.0), an innocent document alone was given up too now and then
    assert run.returncode == 0, run.stderr
    assert "scoring them one at a time" in run.stderr
    records = read_jsonl(out)
    assert [r["filepath"] for r in records] == docs
    for r in records:
        assert abs(r["logit_prob"] - length_score(len(Path(r["filepath"]).read_bytes()))) < 1e-5
    [error] = read_jsonl(out.parent / "errors.jsonl")
    assert error["filepath"] == str(poison) and error["error"].startswith("KilledWorker: ") and error["transient"]
    summary = json.loads(summary_beside(out).read_text())
    assert (summary["documents"], summary["predicted"], summary["errors"]) == (41, 40, 1)


def test_workers_that_die_on_every_document_stop_the_run_rather_than_restart_for_each(killer, tmp_path):
    """As a model too big for the workers' memory would: after the two shortest documents
    alone, the run stops, instead of a worker's death or four per document."""
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(12):
        (folder / f"{i:02d}.txt").write_text(f"review {i} " * (i + 1) + "DIEMARK")
    out = tmp_path / "out" / "res.jsonl"
    run = cli(f"inference.model_path={killer}", f"inference.input_data_dir={folder}", f"inference.output_path={out}",
              "inference.partition_size=12", *ONE_WORKER, cwd=tmp_path, env=GIVE_UP_AT_ONCE, timeout=300)
    assert run.returncode == 1, run.stderr
    assert "two shortest documents" in last_line(run) and str(folder / "00.txt") in last_line(run), run.stderr
    assert not out.exists()  # (and nothing was written to resume from)
    assert run.stderr.count("Abort_op intentional failure") <= 4  # the partition, then two documents alone


def test_a_table_row_its_workers_die_on_stops_the_run_with_how_to_resume(killer, tmp_path):
    """Table rows are read by tasks of their own, which die with the workers: the run stops,
    keeping what it wrote, and says how to resume (with workers that have more memory)."""
    import pandas as pd

    texts = [Path(path).read_text("utf-8") for path in copy_reviews(tmp_path / "docs", 30)]
    texts[20] = "a row the workers die on: DIEMARK"
    table = tmp_path / "rows.parquet"
    pd.DataFrame({"text": texts}).to_parquet(table)
    out = tmp_path / "out" / "res.jsonl"
    run = cli(f"inference.model_path={killer}", f"inference.input_data_dir={table}", "inference.input_format=parquet",
              f"inference.output_path={out}", "inference.partition_size=10", *ONE_WORKER, cwd=tmp_path,
              env=GIVE_UP_AT_ONCE, timeout=300)
    assert run.returncode == 1, run.stderr
    assert "workers kept dying" in last_line(run) and "to resume:" in run.stderr, run.stderr
    assert not out.exists() and Path(f"{out}.partial").exists()


# ---------------------------------------------------------------- 4. a resume that is not the same run


def test_a_resume_with_nothing_to_resume_says_so(keras_model, tmp_path, on_client):
    """A resume on an output no run wrote (a typo in the path): every document is scored, and the
    log says why, rather than a resume that quietly does everything again."""
    docs = copy_reviews(tmp_path / "docs", 10)
    out = tmp_path / "out" / "res.jsonl"
    run = cli(f"inference.model_path={keras_model}", f"inference.input_data_dir={tmp_path / 'docs'}",
              f"inference.output_path={out}", "inference.resume=true", *on_client, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert f"Nothing to resume in {out} (no earlier run's lines there): scoring every document" in run.stderr
    assert filepaths(out) == docs


def test_a_resume_with_another_threshold_model_or_input_folder_is_refused(slow, keras_model, tmp_path, on_client):
    docs, out, args = interrupted_run(slow, tmp_path)
    partial = Path(f"{out}.partial")
    kept = partial.read_bytes()

    threshold = cli(*args, "inference.resume=true", "inference.threshold=0.7", cwd=tmp_path)
    assert_user_error(threshold, "inference.threshold", single_line=False)
    assert partial.read_bytes() == kept and not out.exists()

    other_model = [a for a in args if not a.startswith("inference.model_path=")] + [f"inference.model_path={keras_model}"]
    model = cli(*other_model, "inference.resume=true", cwd=tmp_path)
    assert_user_error(model, single_line=False)
    assert "model" in last_line(model).replace(keras_model, "").replace(slow, ""), last_line(model)
    assert partial.read_bytes() == kept and not out.exists()

    # another folder's documents: their lines would replace the interrupted run's, which were dropped
    shutil.copytree(tmp_path / "docs", tmp_path / "elsewhere")
    elsewhere = [a for a in args if not a.startswith("inference.input_data_dir=")] + [
        f"inference.input_data_dir={tmp_path / 'elsewhere'}"]
    moved = cli(*elsewhere, "inference.resume=true", *on_client, cwd=tmp_path)
    assert_user_error(moved, f"inputs from {tmp_path / 'docs'} now {tmp_path / 'elsewhere'}", code=2, single_line=False)
    assert partial.read_bytes() == kept and not out.exists()

    resumed = cli(*args, "inference.resume=true", *on_client, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert filepaths(out) == docs


def test_a_resume_after_its_table_changed_is_refused(slow, tmp_path, on_client):
    """A table's rows are known by number: a row added at the top would shift every one."""
    texts = [path.read_text("utf-8") for path in REVIEWS[:400]]
    table = tmp_path / "reviews.jsonl"
    table.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = tmp_path / "out" / "res.jsonl"
    args = [f"inference.model_path={slow}", f"inference.input_data_dir={table}", "inference.input_format=jsonl",
            f"inference.output_path={out}", *SLOW, *ONE_WORKER]
    job = start(args, tmp_path)
    wait_for_lines(Path(f"{out}.partial"), job)
    job.send_signal(signal.SIGTERM)
    assert finish(job, 60).returncode == 130
    kept, stat, partial = table.read_bytes(), table.stat(), Path(f"{out}.partial").read_bytes()
    table.write_bytes(json.dumps({"text": "a new first row"}).encode() + b"\n" + kept)
    refused = cli(*args, "inference.resume=true", cwd=tmp_path)
    assert_user_error(refused, f"the table {table} changed since", single_line=False)
    assert Path(f"{out}.partial").read_bytes() == partial and not out.exists()

    table.write_bytes(kept)  # as it was, modification time included: the resume goes on
    os.utime(table, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    lock = Path(f"{out}.lock")
    state = json.loads(lock.read_text())
    lock.write_text(json.dumps({**state, "prediction": {k: v for k, v in state["prediction"].items() if k != "tables"}}))
    older = cli(*args, "inference.resume=true", cwd=tmp_path)  # as a run of a daskinfer before versions left it
    assert_user_error(older, "by a daskinfer that did not record its tables' versions", single_line=False)
    lock.write_text(json.dumps(state))
    resumed = cli(*args, "inference.resume=true", *on_client, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert filepaths(out) == [f"{table}#{i}" for i in range(400)]


def test_a_resume_that_adds_to_a_finished_output_is_held_to_its_settings_and_tables(keras_model, tmp_path, on_client):
    """A finished output has no lock file left to record what made it: its summary and ledger
    say, and a resume with another threshold, or after a table changed, refuses as it would
    for an interrupted run, leaving the results as they were."""
    docs = copy_reviews(tmp_path / "docs", 30)
    out = tmp_path / "out" / "res.jsonl"
    args = [f"inference.model_path={keras_model}", f"inference.input_data_dir={tmp_path / 'docs'}",
            f"inference.output_path={out}", *on_client]
    assert cli(*args, cwd=tmp_path).returncode == 0
    finished = out.read_bytes()
    refused = cli(*args, "inference.resume=true", "inference.threshold=0.9", cwd=tmp_path)
    assert_user_error(refused, "inference.threshold=0.5 now 0.9", single_line=False)
    assert out.read_bytes() == finished and json.loads(summary_beside(out).read_text())["settings"]["threshold"] == 0.5
    assert not Path(f"{out}.lock").exists()  # nothing to resume is recorded: a later run is not refused for it
    moved = tmp_path / "moved" / "res.jsonl"
    shutil.copytree(out.parent, moved.parent)
    refused = cli(*[a for a in args if not a.startswith("inference.output_path=")], f"inference.output_path={moved}",
                  "inference.resume=true", "inference.threshold=0.9", cwd=tmp_path)
    assert_user_error(refused, "inference.threshold=0.5 now 0.9", single_line=False)
    assert sorted(p.name for p in moved.parent.iterdir()) == sorted(p.name for p in out.parent.iterdir())
    added = copy_reviews(tmp_path / "docs", 5, offset=30)
    resumed = cli(*args, "inference.resume=true", cwd=tmp_path)  # the same settings: what is new is added
    assert resumed.returncode == 0, resumed.stderr
    assert filepaths(out) == sorted(docs + added)

    table = tmp_path / "reviews.jsonl"
    table.write_text("".join(json.dumps({"text": path.read_text("utf-8")}) + "\n" for path in REVIEWS[:20]))
    table_out = tmp_path / "tables" / "res.jsonl"
    table_args = [f"inference.model_path={keras_model}", f"inference.input_data_dir={table}",
                  "inference.input_format=jsonl", f"inference.output_path={table_out}", *on_client]
    assert cli(*table_args, cwd=tmp_path).returncode == 0
    finished = table_out.read_bytes()
    table.write_text(json.dumps({"text": "a new first row"}) + "\n" + table.read_text())
    refused = cli(*table_args, "inference.resume=true", cwd=tmp_path)
    assert_user_error(refused, f"the table {table} changed since", single_line=False)
    assert table_out.read_bytes() == finished


# ---------------------------------------------------------------- 5. inputs changed before the resume


def test_a_resume_after_the_inputs_changed_writes_exactly_the_current_inputs_sorted(slow, tmp_path, on_client):
    docs, out, args = interrupted_run(slow, tmp_path)
    done = [r["filepath"] for r in complete_lines(Path(f"{out}.partial"))]
    assert len(done) >= 20
    removed = done[::2][:10]  # already scored, then deleted
    for path in removed:
        os.unlink(path)
    added = []
    for i, source in enumerate(REVIEWS[1000:1005]):  # new, and sorted before what was done
        added.append(str(tmp_path / "docs" / f"0000{i}_new_{source.name}"))
        shutil.copyfile(source, added[-1])
    current = sorted(set(docs) - set(removed) | set(added))

    resumed = cli(*args, "inference.resume=true", *on_client, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert filepaths(out) == current  # each current input once, none of the removed, in sorted order
    summary = json.loads(summary_beside(out).read_text())
    assert summary["documents"] == summary["predicted"] + summary["errors"] == len(current), summary


def _rewrite(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def test_a_resume_scores_again_what_changed_after_it_was_scored(slow, tmp_path, on_client):
    """A document scored (or found empty) before the interruption, then rewritten: the resume
    writes it as it is now, once, and the ledger a later incremental run trusts says so."""
    empty = tmp_path / "docs" / "0000_empty.txt"  # sorted first: an error entry before the stop
    empty.parent.mkdir(parents=True)
    empty.write_text("")
    docs, out, args = interrupted_run(slow, tmp_path)
    done = [r["filepath"] for r in complete_lines(Path(f"{out}.partial"))]
    assert len(done) >= 20
    assert json.loads(Path(f"{out}.partial").parent.joinpath("errors.jsonl.partial").read_text())["filepath"] == str(empty)
    longer, emptied, copied = done[3], done[7], done[11]
    _rewrite(longer, "a review rewritten much longer than before " * 60)
    _rewrite(emptied, "")
    _rewrite(str(empty), "no longer empty: a short review")
    other = next(r for r in REVIEWS[1000:] if r.stat().st_size != os.path.getsize(copied))
    shutil.copy2(other, copied)  # as cp -p and rsync -a do: new content, the source's older mtime
    assert os.stat(copied).st_mtime_ns < os.stat(longer).st_mtime_ns

    resumed = cli(*args, "inference.resume=true", *on_client, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    everything = sorted(docs + [str(empty)])
    results = {r["filepath"]: r for r in read_jsonl(out)}
    errors = {e["filepath"]: e for e in read_jsonl(out.parent / "errors.jsonl")}
    assert sorted([*results, *errors]) == everything and not set(results) & set(errors)
    assert list(errors) == [emptied] and "empty" in errors[emptied]["error"]
    for path in (longer, str(empty), copied):
        assert abs(results[path]["logit_prob"] - length_score(os.path.getsize(path))) <= 1e-5, path
    summary = json.loads(summary_beside(out).read_text())
    assert summary["documents"] == summary["predicted"] + summary["errors"] == len(everything), summary

    again = cli(*args, "inference.resume=false", f"inference.incremental_from={out.parent}",
                f"inference.output_path={tmp_path / 'again' / 'res.jsonl'}", *on_client, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    carried = {r["filepath"]: r for r in read_jsonl(tmp_path / "again" / "res.jsonl")}
    for path in (longer, str(empty), copied):  # carried, as the resume wrote them: as they are now
        assert abs(carried[path]["logit_prob"] - length_score(os.path.getsize(path))) <= 1e-5, path


def test_a_resumed_runs_drift_and_report_describe_its_whole_output(slow, tmp_path, on_client):
    """summary.json's drift and report.html describe the results file they are published
    with: after a resume, the lines of the interrupted run too, not only what the resume scored."""
    from daskinfer import records, run_report

    reference = tmp_path / "reference.jsonl"  # an earlier run's results, all scored 0.3 (negative)
    reference.write_text("".join(json.dumps({"time": "2026-12-01T00:00:00+0000", "filepath": f"/old/{i}.txt",
                                             "logit_prob": 0.3, "sentiment": "negative"}) + "\n" for i in range(50)))
    docs, out, args = interrupted_run(slow, tmp_path, extra=(f"inference.reference={reference}",), settle_s=2.5)
    before = complete_lines(Path(f"{out}.partial"))
    resumed = cli(*args, "inference.resume=true", *on_client, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    published = read_jsonl(out)
    assert [r["filepath"] for r in published] == docs
    expected = run_report.drift(records.stats(published, []), run_report.reference_stats(str(reference), {}),
                                str(reference))
    resumed_part = run_report.drift(records.stats(published[len(before):], []),
                                    run_report.reference_stats(str(reference), {}), str(reference))
    assert expected != resumed_part  # the interrupted run's lines weigh: this test can tell
    summary = json.loads(summary_beside(out).read_text())
    assert summary["skipped"] == len(before)  # kept, not scored again
    assert summary["drift"] == expected
    shown = {label: n for label, n in re.findall(r"<th>label: (\w+)</th><td[^>]*>(\d+)</td>",
                                                   (out.parent / "report.html").read_text())}
    assert shown == {label: str(n) for label, n in records.stats(published, [])["labels"].items()}, shown


def test_a_resume_adding_to_a_finished_output_scores_again_what_changed_since(slow, tmp_path, on_client):
    docs = copy_reviews(tmp_path / "docs", 30)
    out = tmp_path / "out" / "res.jsonl"
    args = [f"inference.model_path={slow}", f"inference.input_data_dir={tmp_path / 'docs'}",
            f"inference.output_path={out}", *on_client]
    assert cli(*args, cwd=tmp_path).returncode == 0
    _rewrite(docs[5], "short now")
    resumed = cli(*args, "inference.resume=true", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    results = read_jsonl(out)
    assert [r["filepath"] for r in results] == docs
    assert abs(results[5]["logit_prob"] - length_score(len("short now"))) <= 1e-5
    assert abs(results[6]["logit_prob"] - length_score(os.path.getsize(docs[6]))) <= 1e-5


# ---------------------------------------------------------------- 6-8. odd files


@pytest.mark.parametrize("output_format", ["jsonl", "parquet", "a notebook's DataFrame"])
def test_a_file_name_that_is_not_utf8_is_scored_and_written_as_valid_utf8(output_format, models, tmp_path, client,
                                                                          on_client):
    docs = copy_reviews(tmp_path / "docs", 20)
    name = os.fsencode(str(tmp_path / "docs")) + b"/caf\xe9.txt"
    text = REVIEWS[500].read_text("utf-8")
    fd = os.open(name, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, text.encode("utf-8"))
    os.close(fd)
    args = [f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={tmp_path / 'docs'}"]
    shown = str(tmp_path / "docs") + "/caf\\xe9.txt"  # the byte as Python shows it: Arrow's strings are UTF-8
    if output_format == "a notebook's DataFrame":
        import daskinfer

        records = daskinfer.records_bag(daskinfer.load_config(args)).to_dataframe().compute().to_dict("records")
        odd = shown
    else:
        out = tmp_path / "out" / f"res.{output_format}"
        run = cli(*args, f"inference.output_path={out}", f"inference.output_format={output_format}", *on_client,
                  cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        if output_format == "jsonl":
            raw = out.read_bytes()
            raw.decode("utf-8")  # strict: no lone surrogate written raw
            records = [json.loads(line) for line in raw.splitlines()]
            odd = os.fsdecode(name)  # '.../caf\udce9.txt', written by json as \udce9
        else:
            import pyarrow.parquet

            records, odd = pyarrow.parquet.read_table(out).to_pylist(), shown
    assert sorted(r["filepath"] for r in records) == sorted(docs + [odd])
    record = next(r for r in records if r["filepath"] == odd)
    assert abs(record["logit_prob"] - float(models["keras"][1]([text])[0])) <= 1e-5


def test_a_fifo_among_the_documents_is_an_error_entry_not_a_hang(keras_model, tmp_path, on_client):
    docs = copy_reviews(tmp_path / "docs", 20)
    os.mkfifo(tmp_path / "docs" / "x.txt")
    out = tmp_path / "out" / "res.jsonl"
    run = cli(f"inference.model_path={keras_model}", f"inference.input_data_dir={tmp_path / 'docs'}",
              f"inference.output_path={out}", "inference.error_budget=0.5", *on_client, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    assert filepaths(out) == docs
    errors = read_jsonl(out.parent / "errors.jsonl")
    assert [Path(e["filepath"]).name for e in errors] == ["x.txt"]
    assert "not a regular file" in errors[0]["error"], errors


def test_a_link_to_itself_is_an_error_entry(keras_model, tmp_path, on_client):
    docs = copy_reviews(tmp_path / "docs", 20)
    os.symlink("self.txt", tmp_path / "docs" / "self.txt")
    out = tmp_path / "out" / "res.jsonl"
    run = cli(f"inference.model_path={keras_model}", f"inference.input_data_dir={tmp_path / 'docs'}",
              f"inference.output_path={out}", "inference.error_budget=0.5", *on_client, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    assert_no_traceback(run)
    assert filepaths(out) == docs
    assert [Path(e["filepath"]).name for e in read_jsonl(out.parent / "errors.jsonl")] == ["self.txt"]


def test_a_recursive_listing_goes_round_a_link_loop_once(keras_model, tmp_path, on_client):
    docs = copy_reviews(tmp_path / "docs", 20) + copy_reviews(tmp_path / "docs" / "sub", 5, offset=100)
    os.symlink("..", tmp_path / "docs" / "sub" / "loop")
    os.mkfifo(tmp_path / "docs" / "a-pipe")  # not named as the glob asks: no input, no error
    out = tmp_path / "out" / "res.jsonl"
    run = cli(f"inference.model_path={keras_model}", f"inference.input_data_dir={tmp_path / 'docs'}",
              f"inference.output_path={out}", "inference.recursive=true", *on_client, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr  # the default error budget: the loop is no error of a document
    assert_no_traceback(run)
    assert filepaths(out) == sorted(docs)  # each real document once, none again through sub/loop/
    assert read_jsonl(out.parent / "errors.jsonl") == []


def test_hidden_files_are_no_inputs_unless_asked_for(keras_model, tmp_path, on_client):
    """A folder copied from a Mac holds a binary "._" resource fork beside each file, and a
    notebook's .ipynb_checkpoints/ a copy of each file opened in it: no documents of the run
    (Python's glob would not list them either), so no error entries failing the run at the
    default error budget, nor reviews scored twice. include_hidden=true scores them."""
    docs = copy_reviews(tmp_path / "docs", 10)
    forks = [str(Path(p).with_name("._" + Path(p).name)) for p in docs[:3]]
    for fork in forks:
        Path(fork).write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        \xff\xfe\x00")
    copies = copy_reviews(tmp_path / "docs" / ".ipynb_checkpoints", 2)
    args = (f"inference.model_path={keras_model}", f"inference.input_data_dir={tmp_path / 'docs'}",
            "inference.recursive=true", *on_client)
    out = tmp_path / "out" / "res.jsonl"
    run = cli(*args, f"inference.output_path={out}", cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    assert filepaths(out) == docs
    assert read_jsonl(out.parent / "errors.jsonl") == []
    assert "Left out 5 hidden file(s)" in run.stderr and "inference.include_hidden=true" in run.stderr

    every = tmp_path / "every" / "res.jsonl"
    run = cli(*args, f"inference.output_path={every}", "inference.include_hidden=true", "inference.error_budget=0.5",
              cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    assert sorted(filepaths(every)) == sorted(docs + copies)
    assert sorted(e["filepath"] for e in read_jsonl(every.parent / "errors.jsonl")) == sorted(forks)


# ---------------------------------------------------------------- 9. output paths that name folders


@pytest.mark.parametrize("case", ["trailing slash", "existing folder"])
def test_an_output_path_that_is_a_folder_is_a_configuration_error(case, keras_model, tmp_path):
    copy_reviews(tmp_path / "docs", 40)
    if case == "trailing slash":
        output = f"{tmp_path}/out/"
    else:
        (tmp_path / "existing").mkdir()
        output = str(tmp_path / "existing")
    run = cli(f"inference.model_path={keras_model}", f"inference.input_data_dir={tmp_path / 'docs'}",
              f"inference.output_path={output}", cwd=tmp_path, timeout=60)
    assert run.elapsed < 60
    assert_user_error(run, "inference.output_path", code=2)
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".partial")]
    assert not (tmp_path / "outputs").exists()


def test_an_output_path_where_no_file_can_be_made_is_named_in_one_line(keras_model, tmp_path):
    copy_reviews(tmp_path / "docs", 5)
    run = cli(f"inference.model_path={keras_model}", f"inference.input_data_dir={tmp_path / 'docs'}",
              "inference.output_path=/proc/daskinfer-res.jsonl", cwd=tmp_path, timeout=60)
    assert_user_error(run, "cannot write the output /proc/daskinfer-res.jsonl")
    assert ".lock" not in last_line(run)


# ---------------------------------------------------------------- 10. a cluster.address that is no scheduler


@pytest.mark.parametrize("case", ["http server", "ssh banner", "http url", "not a url"])
def test_a_scheduler_address_that_is_no_scheduler_is_one_line_within_a_minute(case, keras_model, tmp_path):
    copy_reviews(tmp_path / "docs", 20)
    with http_server() as http_port, banner_server() as ssh_port:
        address = {
            "http server": f"tcp://127.0.0.1:{http_port}",
            "ssh banner": f"tcp://127.0.0.1:{ssh_port}",
            "http url": f"http://127.0.0.1:{http_port}",
            "not a url": "notaurl",
        }[case]
        run = cli(f"inference.model_path={keras_model}", f"inference.input_data_dir={tmp_path / 'docs'}",
                  f"cluster.address={address}", cwd=tmp_path, timeout=60,
                  env={"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "5s"})
    assert run.returncode in (1, 2), (run.returncode, run.stderr)
    assert_user_error(run, address, single_line=False)  # after, at most, the line that says it waits
    assert [line.split("] - ", 1)[-1] for line in run.stderr_lines[:-1]] in ([], [f"Waiting for the dask scheduler at {address}, for up to 5 s "
                                          "(distributed.comm.timeouts.connect)"]), run.stderr
    assert not (tmp_path / "outputs").exists()


# ---------------------------------------------------------------- 11. the scheduler dies mid-run


def test_a_scheduler_killed_mid_run_ends_with_how_to_resume_and_the_resume_completes(slow, tmp_path):
    docs = copy_reviews(tmp_path / "docs", 400)
    out = tmp_path / "out" / "res.jsonl"
    env = {"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "5s"}
    (tmp_path / "cluster-1").mkdir()
    first = start_cluster(tmp_path / "cluster-1", n_workers=1)
    try:
        job = start([f"inference.model_path={slow}", f"inference.input_data_dir={tmp_path / 'docs'}",
                     f"inference.output_path={out}", f"cluster.address={first.address}", *SLOW], tmp_path, env)
        wait_for_lines(Path(f"{out}.partial"), job)
        first.scheduler.send_signal(signal.SIGKILL)  # kill -9 the scheduler
        run = finish(job, 120)
    finally:
        first.close()
    assert run.returncode not in (0, None), run.stderr
    assert_no_traceback(run)
    line = last_line(run)
    assert line.startswith(ERROR_PREFIX) and "to resume:" in line, run.stderr
    assert not out.exists()

    (tmp_path / "cluster-2").mkdir()
    second = start_cluster(tmp_path / "cluster-2", n_workers=1)
    try:
        args = [a if not a.startswith("cluster.address=") else f"cluster.address={second.address}"
                for a in resume_args(line)]
        assert f"cluster.address={second.address}" in args
        resumed = cli(*args, cwd=tmp_path, env=env)
    finally:
        second.close()
    assert resumed.returncode == 0, resumed.stderr
    assert filepaths(out) == docs


# ---------------------------------------------------------------- 12. the S3 endpoint dies mid-run


def test_an_s3_endpoint_stopped_mid_run_is_not_hundreds_of_error_entries_and_resumes(slow, tmp_path):
    paths = [Path(p) for p in copy_reviews(tmp_path / "docs", 400)]
    moto = MotoServer(free_port(), tmp_path / "moto.log").start()
    try:
        uris = sorted(moto.upload(paths, "reviews", "batch"))
        out = tmp_path / "out" / "res.jsonl"
        args = [f"inference.model_path={slow}", "inference.input_data_dir=s3://reviews/batch/",
                f"inference.output_path={out}", *SLOW, *ONE_WORKER]
        job = start(args, tmp_path, moto.env)
        wait_for_lines(Path(f"{out}.partial"), job)
        moto.kill()
        run = finish(job, 120)
        assert run.returncode != 0, run.stderr
        assert_no_traceback(run)
        errors = errors_beside(out)
        assert all(e.get("transient") is True for e in errors), (
            f"{len(errors)} error entries for documents that merely could not be reached: {errors[:2]}")
        if not errors:
            assert "to resume:" in last_line(run), run.stderr

        moto.start()  # the same port, and the same objects uploaded again
        moto.upload(paths, "reviews", "batch")
        resumed = cli(*args, "inference.resume=true", cwd=tmp_path, env=moto.env)
    finally:
        moto.kill()
    assert resumed.returncode == 0, resumed.stderr
    assert filepaths(out) == uris


def test_a_resume_scores_again_an_object_written_to_the_bucket_since(slow, tmp_path):
    """A listed bucket's object replaced after it was scored, before the resume: its new
    version is scored (by its LastModified), the others done before are kept."""
    paths = [Path(p) for p in copy_reviews(tmp_path / "docs", 400)]
    moto = MotoServer(free_port(), tmp_path / "moto.log").start()
    try:
        uris = sorted(moto.upload(paths, "reviews", "batch"))
        time.sleep(2.5)  # the objects older than the slack a resume allows for clocks
        out = tmp_path / "out" / "res.jsonl"
        args = [f"inference.model_path={slow}", "inference.input_data_dir=s3://reviews/batch/",
                f"inference.output_path={out}", *SLOW, *ONE_WORKER]
        job = start(args, tmp_path, moto.env)
        wait_for_lines(Path(f"{out}.partial"), job)
        job.send_signal(signal.SIGTERM)
        assert finish(job, 60).returncode == 130
        done = [r["filepath"] for r in complete_lines(Path(f"{out}.partial"))]
        replaced = done[4]
        text = "rewritten in the bucket, much longer than before " * 50
        moto.client().put_object(Bucket="reviews", Key=replaced.split("/", 3)[3], Body=text.encode())
        resumed = cli(*args, "inference.resume=true", cwd=tmp_path, env=moto.env)
    finally:
        moto.kill()
    assert resumed.returncode == 0, resumed.stderr
    results = {r["filepath"]: r for r in read_jsonl(out)}
    assert sorted(results) == uris
    assert abs(results[replaced]["logit_prob"] - length_score(len(text))) <= 1e-5
    assert json.loads(summary_beside(out).read_text())["skipped"] == len(done) - 1


# ---------------------------------------------------------------- 13. disk full


@pytest.fixture
def small_disk(tmp_path):
    """A 32 KiB tmpfs (root only): room for the first partitions' results, not for all."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_ends_the_run_with_one_line_and_how_to_resume(keras_model, small_disk, tmp_path, on_client):
    copy_reviews(tmp_path / "docs", 400)  # about 130 bytes of results each: 52 KB
    out = small_disk / "res.jsonl"
    run = cli(f"inference.model_path={keras_model}", f"inference.input_data_dir={tmp_path / 'docs'}",
              f"inference.output_path={out}", "inference.partition_size=50", *on_client, cwd=tmp_path, timeout=120)
    if out.exists():  # published: its summary with it
        json.loads(summary_beside(out).read_text())
    assert run.returncode != 0, run.stderr
    assert_no_traceback(run)
    line = last_line(run)
    assert line.startswith(ERROR_PREFIX), run.stderr
    assert "no space" in line.lower() and "to resume:" in line, line
    assert len([ln for ln in run.stderr_lines if ln.startswith(ERROR_PREFIX)]) == 1, run.stderr


# ---------------------------------------------------------------- 14. secrets


@pytest.mark.parametrize("options", [
    ["storage.options.secret=SUPERSECRET123"],
    ["storage.options={key: SUPERSECRETKEY9, secret: SUPERSECRET123, endpoint_url: 'http://127.0.0.1:9'}"],
    ["storage.options.client_kwargs.endpoint_url=http://admin:SUPERSECRET123@127.0.0.1:9",
     "storage.options.headers.Authorization=Bearer SUPERSECRETKEY9"],
])
def test_secrets_never_reach_the_terminal_or_the_output_folder(options, slow, tmp_path):
    copy_reviews(tmp_path / "docs", 400)
    out = tmp_path / "out" / "res.jsonl"
    job = start([f"inference.model_path={slow}", f"inference.input_data_dir={tmp_path / 'docs'}",
                 f"inference.output_path={out}", *SLOW, *ONE_WORKER, *options], tmp_path)
    partial = Path(f"{out}.partial")
    deadline = time.monotonic() + 120
    while job.poll() is None and time.monotonic() < deadline:  # the options may also make it fail: fine
        if partial.exists() and partial.read_bytes().count(b"\n") >= 20:
            job.send_signal(signal.SIGTERM)  # the interrupted line prints a command to resume
            break
        time.sleep(0.05)
    run = finish(job, 180)
    assert run.returncode != 0 and run.stderr_lines, run.stderr  # interrupted (or refused)
    for secret in ("SUPERSECRET123", "SUPERSECRETKEY9"):
        assert secret not in run.stderr and secret not in run.stdout, run.stderr
        leaked = [p for p in (tmp_path / "out").rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
        assert leaked == []
    resume = [line for line in run.stderr_lines if "to resume" in line]
    if resume:  # named as left out, not passed as *** (which would fail the resume)
        assert "add back storage.options" in resume[0] and "***" not in resume[0], resume[0]


def test_a_resume_command_names_the_secrets_it_leaves_out_and_keeps_those_from_variables():
    from daskinfer.cli import resume_hint

    hint = resume_hint(["storage.options.key=${oc.env:AWS_KEY}", "storage.options.secret=S3CR3T"], "o.jsonl")
    assert "add back storage.options.secret (left out as secret)" in hint and "S3CR3T" not in hint
    assert resume_args(hint.replace("to resume, add back storage.options.secret (left out as secret) to:",
                                    "to resume:")) == [
        "storage.options.key=${oc.env:AWS_KEY}", "inference.resume=true", "inference.output_path=o.jsonl"]


def test_a_scheduler_address_with_a_password_is_refused_without_showing_it(keras_model, tmp_path):
    run = cli(f"inference.model_path={keras_model}", f"inference.input_data_dir={tmp_path}",
              "cluster.address=tcp://bob:SUPERSECRET123@127.0.0.1:1", cwd=tmp_path)
    assert_user_error(run, "cluster.address: a scheduler address with a password in it is refused")
    assert "SUPERSECRET123" not in run.stderr + run.stdout


@pytest.mark.parametrize("where", ["model_path", "input_data_dir", "reference", "a manifest line"])
def test_a_uri_with_a_password_in_it_is_refused_without_showing_it(where, keras_model, tmp_path):
    """It would be written wherever the URI is: logs, error entries, records, the ledger."""
    docs = copy_reviews(tmp_path / "docs", 3)
    secret = "SUPERSECRET123"
    uri = f"s3://AKIAEXAMPLE:{secret}@reviews/batch/" if where == "input_data_dir" else (
        f"https://bob:{secret}@127.0.0.1:9/{'a.txt' if where == 'a manifest line' else 'm.keras'}")
    args = {"model_path": keras_model, "input_data_dir": str(tmp_path / "docs"), "reference": None}
    if where == "a manifest line":
        (tmp_path / "manifest.txt").write_text("\n".join([*docs, uri]) + "\n")
        del args["input_data_dir"]
        args["input_manifest"] = str(tmp_path / "manifest.txt")
    else:
        args[where] = uri
    run = cli(*(f"inference.{k}={v}" for k, v in args.items() if v), f"inference.output_path={tmp_path / 'out' / 'r.jsonl'}",
              *ONE_WORKER, cwd=tmp_path)
    assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr
    assert [line for line in run.stderr_lines if line.startswith(ERROR_PREFIX)] == run.stderr_lines[-1:]
    assert "password in it is refused" in last_line(run) and secret not in run.stderr + run.stdout
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- 15. bad configuration


CONFIG_FILES = {
    "broken yaml": b"inference:\n  batch_size: [1, 2\n  threshold: : :\n",
    "binary file": bytes(range(256)) * 4,
    "top-level list": b"- inference.batch_size=8\n- cluster.n_workers=2\n",
    "a key given twice": b"inference:\n  batch_size: 8\n  batch_size: 9\n",
    "a section given twice": b"inference:\n  batch_size: 8\ninference:\n  threshold: 0.6\n",
}


@pytest.mark.parametrize("case", [*CONFIG_FILES, "a folder"])
def test_a_config_file_that_is_no_mapping_is_one_line(case, keras_model, tmp_path):
    copy_reviews(tmp_path / "docs", 20)
    if case == "a folder":
        config = tmp_path / "conf.d"
        config.mkdir()
    else:
        config = tmp_path / "job.yaml"
        config.write_bytes(CONFIG_FILES[case])
    run = cli("--config", str(config), f"inference.model_path={keras_model}",
              f"inference.input_data_dir={tmp_path / 'docs'}", cwd=tmp_path, timeout=60)
    assert_user_error(run, str(config), code=2)


@pytest.mark.parametrize("text, message", [
    ("cluster: 5\n", "cluster is a group of keys, not a value (5): set its keys, as cluster.KEY=VALUE"),
    ("inference:\n  mlflow: true\n",
     "inference.mlflow is a group of keys, not a value (True): set its keys, as inference.mlflow.KEY=VALUE"),
    ("inference:\n  labels: positive\n", "inference.labels is a list: write it as [a, b]"),
    ("inference.batch_size: 8\n",
     "unknown key 'inference.batch_size': a --config file nests it, 'inference:' on one line, 'batch_size: ...' "
     "indented below"),
])
def test_a_config_file_of_the_wrong_shape_names_the_key_in_the_users_terms(text, message, tmp_path):
    from daskinfer.config import load_config
    from daskinfer.errors import ConfigError

    config = tmp_path / "job.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError) as refused:
        load_config(["inference.model_path=m", f"inference.input_data_dir={tmp_path}"], str(config))
    assert str(refused.value) == message


@pytest.mark.parametrize("name, output_format", [("res.jsonl", "parquet"), ("res.parquet", "jsonl")])
def test_an_output_named_for_the_other_format_is_refused(name, output_format, tmp_path):
    """A Parquet file named .jsonl (or JSON lines named .parquet) would mislead every reader."""
    from daskinfer.config import load_config
    from daskinfer.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"is named \.{name.split('.')[1]}, but inference.output_format="
                                          rf"{output_format}: set inference.output_format"):
        load_config(["inference.model_path=m", f"inference.input_data_dir={tmp_path}",
                     f"inference.output_path={tmp_path / name}", f"inference.output_format={output_format}"])


@pytest.mark.parametrize("name", ["res.jsonl.gz", "res.parquet.zst"])
def test_an_output_named_as_compressed_is_refused(name, tmp_path):
    """The results are written as plain JSON lines (or Parquet): under a .gz name a reader would
    fail on them, or a pipeline that gunzips every .gz would."""
    from daskinfer.config import load_config
    from daskinfer.errors import ConfigError

    output_format = name.split(".")[1]
    with pytest.raises(ConfigError, match=rf"is named \.{name.rsplit('.', 1)[1]}, but the results are written "
                                          rf"uncompressed: name the file \.{output_format}"):
        load_config(["inference.model_path=m", f"inference.input_data_dir={tmp_path}",
                     f"inference.output_path={tmp_path / name}", f"inference.output_format={output_format}"])


def test_a_misspelt_storage_option_is_a_configuration_error(keras_model, tmp_path):
    run = cli(f"inference.model_path={keras_model}", "inference.input_data_dir=s3://reviews/batch/",
              "storage.options.endpont_url=http://127.0.0.1:9", cwd=tmp_path, timeout=60,
              env={"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "us-east-1"})
    assert_user_error(run, "endpont_url", code=2)


@pytest.mark.parametrize("override", [
    "cluster.threads_per_worker=0",
    "cluster.threads_per_worker=-1",
    "cluster.tf_intra_op_threads=-5",
    "cluster.n_workers=0",
    "cluster.n_workers=-2",
    "cluster.n_workers=100000",  # the driver started processes for ever, deaf to SIGTERM
    "cluster.adapt.maximum=100000",
])
def test_a_cluster_shape_that_cannot_run_is_refused_at_once(override, keras_model, tmp_path):
    copy_reviews(tmp_path / "docs", 20)
    run = cli(f"inference.model_path={keras_model}", f"inference.input_data_dir={tmp_path / 'docs'}", override,
              cwd=tmp_path, timeout=90)
    assert run.elapsed < 20, (run.elapsed, run.stderr)
    assert_user_error(run, override.split("=")[0], code=2)
    assert not (tmp_path / "outputs").exists()


def test_labels_written_as_a_comma_list_say_how_to_write_a_list(keras_model, tmp_path):
    copy_reviews(tmp_path / "docs", 20)
    run = cli(f"inference.model_path={keras_model}", f"inference.input_data_dir={tmp_path / 'docs'}",
              "inference.labels=neg,pos", cwd=tmp_path, timeout=60)
    assert_user_error(run, "inference.labels", "[", code=2)


def test_a_misspelt_key_suggests_the_right_one_in_a_short_line(keras_model, tmp_path):
    copy_reviews(tmp_path / "docs", 20)
    run = cli(f"inference.model_path={keras_model}", f"inference.input_data_dir={tmp_path / 'docs'}",
              "inference.bach_size=3", cwd=tmp_path, timeout=60)
    assert_user_error(run, "inference.bach_size", "inference.batch_size", code=2)
    assert len(last_line(run)) < 200, last_line(run)


# ---------------------------------------------------------------- 16. Ctrl-C and an early SIGTERM


def test_ctrl_c_in_a_terminal_stops_cleanly_with_how_to_resume(slow, tmp_path):
    copy_reviews(tmp_path / "docs", 400)
    out = tmp_path / "out" / "res.jsonl"
    job = start([f"inference.model_path={slow}", f"inference.input_data_dir={tmp_path / 'docs'}",
                 f"inference.output_path={out}", *SLOW, "cluster.n_workers=2", "cluster.threads_per_worker=1",
                 "cluster.dashboard_address=null"], tmp_path)
    wait_for_lines(Path(f"{out}.partial"), job)
    os.killpg(job.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    run = finish(job, 60)
    assert "Traceback" not in run.stderr, run.stderr
    assert not [ln for ln in run.stderr_lines if "KeyboardInterrupt" in ln], run.stderr
    assert run.returncode == 130, run.stderr
    line = last_line(run)
    assert line.startswith(ERROR_PREFIX) and "to resume:" in line, run.stderr


def _catches_sigterm(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(next(ln for ln in status.splitlines() if ln.startswith("SigCgt:")).split()[1], 16)
    return bool(caught & (1 << (signal.SIGTERM - 1)))


def test_sigterm_during_start_up_stops_cleanly(slow, tmp_path):
    copy_reviews(tmp_path / "docs", 400)
    for delay in (1.5, 2.0, 2.5):  # somewhere in the cluster's start-up, on any machine
        out = tmp_path / f"after-{delay}" / "res.jsonl"
        job = start([f"inference.model_path={slow}", f"inference.input_data_dir={tmp_path / 'docs'}",
                     f"inference.output_path={out}", *SLOW], tmp_path)
        # (On a slow machine, not before daskinfer is listening for SIGTERM at all: until
        # then, the default action ends any program.)
        while time.monotonic() - job.started < delay or not _catches_sigterm(job.pid):
            assert job.poll() is None and time.monotonic() - job.started < 30, job.communicate()
            time.sleep(0.02)
        job.send_signal(signal.SIGTERM)
        run = finish(job, 60)
        assert "Traceback" not in run.stderr, (delay, run.stderr)
        assert "AssertionError" not in run.stderr, (delay, run.stderr)
        assert run.returncode == 130 or "interrupted" in last_line(run), (delay, run.returncode, run.stderr)
        assert run.returncode != 0, run.stderr
        assert last_line(run).startswith(ERROR_PREFIX), (delay, run.stderr)


def _starting_its_cluster(pid: int) -> bool:
    """Whether the run pid is starting its LocalCluster (its scheduler listens) while the
    forkserver that its workers come from is still there, importing TensorFlow (or done)."""
    import psutil

    try:
        driver = psutil.Process(pid)
        listening = any(c.status == psutil.CONN_LISTEN for c in driver.net_connections("tcp"))
        forking = any("forkserver" in " ".join(c.cmdline()) for c in driver.children())
    except psutil.NoSuchProcess:
        return False
    return listening and forking


def test_ctrl_c_while_the_forkserver_imports_tensorflow_stops_cleanly(keras_model, tmp_path):
    """A terminal's Ctrl-C reaches the forkserver too, which spends its first seconds
    importing TensorFlow: the run still ends with one line and 130, not tracebacks."""
    copy_reviews(tmp_path / "docs", 40)
    job = start([f"inference.model_path={keras_model}", f"inference.input_data_dir={tmp_path / 'docs'}",
                 f"inference.output_path={tmp_path / 'out' / 'res.jsonl'}", *SLOW], tmp_path)
    while not _starting_its_cluster(job.pid):
        assert job.poll() is None and time.monotonic() - job.started < 60, job.communicate()
        time.sleep(0.01)
    os.killpg(job.pid, signal.SIGINT)
    run = finish(job, 60)
    assert "Traceback" not in run.stderr, run.stderr
    assert not [ln for ln in run.stderr_lines if "KeyboardInterrupt" in ln], run.stderr
    assert run.returncode == 130, run.stderr
    assert last_line(run).startswith(ERROR_PREFIX), run.stderr


# ---------------------------------------------------------------- 17. fail fast


def test_no_matching_files_fails_before_a_cluster_starts(keras_model, tmp_path):
    copy_reviews(tmp_path / "docs", 20)
    common = (f"inference.model_path={keras_model}", f"inference.input_data_dir={tmp_path / 'docs'}")
    # How long this machine, as loaded as it is now, takes to start daskinfer and refuse a
    # configuration: no cluster either way.
    baseline = cli(*common, "inference.batch_size=0", cwd=tmp_path, timeout=60)
    assert baseline.returncode == 2, baseline.stderr
    run = cli(*common, "inference.input_glob=*.md", cwd=tmp_path, timeout=60)
    assert_user_error(run, "no files matching '*.md'")
    # Starting a LocalCluster (its workers import TensorFlow) takes seconds: about 4.4 s here
    # where the refusal above takes 0.3 s. Nothing to score is known before any of that.
    assert run.elapsed < min(8.0, max(3.0, 5 * baseline.elapsed)), (run.elapsed, baseline.elapsed)


def test_resume_without_an_output_path_is_a_configuration_error(keras_model, tmp_path):
    copy_reviews(tmp_path / "docs", 20)
    run = cli(f"inference.model_path={keras_model}", f"inference.input_data_dir={tmp_path / 'docs'}",
              "inference.resume=true", cwd=tmp_path, timeout=60)
    assert_user_error(run, "inference.output_path", code=2)
    assert not (tmp_path / "outputs").exists()


# ---------------------------------------------------------------- 18. small things users try


def test_version(tmp_path):
    run = cli("--version", cwd=tmp_path, timeout=60)
    assert run.returncode == 0, run.stderr
    assert re.search(r"\d+\.\d+", run.stdout + run.stderr), (run.stdout, run.stderr)


def test_a_folder_holding_a_keras_file_is_a_model(models, reference_scores, tmp_path, on_client):
    docs = copy_reviews(tmp_path / "docs", 40)
    folder = tmp_path / "model-dir"
    folder.mkdir()
    shutil.copyfile(models["keras"][0], folder / "model.keras")
    out = tmp_path / "out" / "res.jsonl"
    run = cli(f"inference.model_path={folder}", f"inference.input_data_dir={tmp_path / 'docs'}",
              f"inference.output_path={out}", *on_client, cwd=tmp_path)
    if run.returncode != 0:  # refusing is fine, if the line says which file it found
        assert_user_error(run, str(folder / "model.keras"), single_line=False)
        return
    reference = {Path(p).name: s for p, s in reference_scores["keras"].items()}
    records = read_jsonl(out)
    assert [r["filepath"] for r in records] == docs
    assert all(abs(r["logit_prob"] - reference[Path(r["filepath"]).name]) <= 1e-5 for r in records)


@pytest.mark.parametrize("bad", [2, 150])  # in the head the driver reads, and past it
def test_a_malformed_jsonl_table_line_is_an_error_entry_and_the_rest_is_scored(bad, keras_model, tmp_path, on_client):
    table = tmp_path / "table" / "reviews.jsonl"
    table.parent.mkdir()
    rows = [json.dumps({"text": source.read_text("utf-8")}) for source in REVIEWS[:200]]
    rows[bad] = '{"text": "a review cut short'
    rows[bad + 1] = '["a list, not an object"]'
    rows[bad + 2] = '{"text": "which of two reviews", "text": "is meant cannot be told"}'  # json would keep the last
    rows[bad + 3] = '{"text": "a fine film", "meta": {"text": 1}}'  # a key nested under another: fine
    table.write_text("\n".join(rows) + "\n")
    run = cli(f"inference.model_path={keras_model}", f"inference.input_data_dir={table}", "inference.error_budget=0.05",
              "inference.input_format=jsonl", f"inference.output_path={tmp_path / 'res.jsonl'}", *on_client,
              cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    assert [r["filepath"] for r in read_jsonl(tmp_path / "res.jsonl")] == [
        f"{table}#{i}" for i in range(200) if i not in (bad, bad + 1, bad + 2)]
    errors = read_jsonl(tmp_path / "errors.jsonl")
    assert [(e["filepath"], e["error"].split(":")[:2]) for e in errors] == [
        (f"{table}#{bad}", ["ValueError", " not a JSON object"]), (f"{table}#{bad + 1}", ["ValueError", " holds a JSON list, not an object"]),
        (f"{table}#{bad + 2}", ["ValueError", " holds the key 'text' more than once"])]


@pytest.mark.parametrize("bad", [2, 150])  # in the head the driver reads, and past it
def test_a_csv_row_of_too_many_fields_is_an_error_entry_and_the_rest_is_scored(bad, keras_model, tmp_path, on_client):
    """An unquoted comma in a review: that row is an error entry that says why, not scored cut
    short at the comma (pandas' fast parser drops extra fields when asked for some columns)."""
    import csv
    import io

    table = tmp_path / "table" / "reviews.csv"
    table.parent.mkdir()
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", "text"])
    writer.writerows([i, source.read_text("utf-8")] for i, source in enumerate(REVIEWS[:200]))
    lines = out.getvalue().split("\n")
    lines[bad + 1] = f"{bad},a fine film, warm and funny"  # +1: the header
    table.write_text("\n".join(lines))
    run = cli(f"inference.model_path={keras_model}", f"inference.input_data_dir={table}", "inference.error_budget=0.05",
              "inference.input_format=csv", "inference.id_column=id", f"inference.output_path={tmp_path / 'res.jsonl'}",
              *on_client, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    records = read_jsonl(tmp_path / "res.jsonl")
    assert [(r["filepath"], r["id"]) for r in records] == [(f"{table}#{i}", i) for i in range(200) if i != bad]
    assert [(e["filepath"], e["error"]) for e in read_jsonl(tmp_path / "errors.jsonl")] == [
        (f"{table}#{bad}", "ValueError: holds 3 fields where the header names 2 (a field holding a comma must be quoted)")]


def test_a_jsonl_table_of_no_json_at_all_is_one_line(keras_model, tmp_path):
    table = tmp_path / "reviews.jsonl"
    table.write_text("this is a plain text file\nnamed as JSON lines\n")
    run = cli(f"inference.model_path={keras_model}", f"inference.input_data_dir={table}",
              "inference.input_format=jsonl", f"inference.output_path={tmp_path / 'res.jsonl'}", cwd=tmp_path,
              timeout=120)
    assert_user_error(run, "line 1 is not valid JSON", code=1)


def test_results_under_a_regular_file_fail_naming_the_output(keras_model, tmp_path):
    copy_reviews(tmp_path / "docs", 20)
    (tmp_path / "file.txt").write_text("a regular file")
    run = cli(f"inference.model_path={keras_model}", f"inference.input_data_dir={tmp_path / 'docs'}",
              f"inference.output_path={tmp_path / 'file.txt' / 'res.jsonl'}", cwd=tmp_path, timeout=120)
    assert_user_error(run, single_line=False)
    assert "output" in last_line(run).replace(str(tmp_path), ""), last_line(run)
