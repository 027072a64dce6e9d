"""Models named by MLflow URIs, and batch runs logged to MLflow, against a real `mlflow server`
(SQLite store, artifacts proxied to moto's S3 server, basic auth) holding models trained by
the tests: version 1 the legacy tf.keras SavedModel, version 2 the Keras 3 model."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Tuple

import pytest
from conftest import assert_predictions, free_port, local_docs, read_jsonl, run_cli
from mlflow_server import NAME  # the fixtures mlflow_server and registered: conftest.py
from test_errors import assert_user_error

from daskinfer import config, mlflow_models, model_files

REFERENCE = {1: "mlflow", 2: "keras"}  # version -> reference_scores' key for the same model


def score(server, uri: str, folder: Path, name: str, *extra: str, docs: Path, env: Dict[str, str] = None,
          machine: Path = None):
    """The CLI on docs with uri as the model, as an MLflow user runs it. machine (default:
    folder) holds the model cache and HOME, so that nothing is cached outside it."""
    machine = machine or folder
    (machine / "home").mkdir(parents=True, exist_ok=True)
    return run_cli(f"inference.model_path={uri}", f"inference.input_data_dir={docs}",
                   f"inference.output_path={folder}/{name}/res.jsonl", f"inference.model_cache_dir={machine}/cache",
                   "cluster.n_workers=1", *extra, cwd=folder, env={**server.env, "HOME": str(machine / "home"), **(env or {})})


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mlflow-runs")


def outputs(folder: Path, name: str) -> Tuple[list, dict]:
    return read_jsonl(folder / name / "res.jsonl"), json.loads((folder / name / "summary.json").read_text())


def cache_files(folder: Path) -> Dict[str, tuple]:
    return {str(p): (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


# ---------------------------------------------------------------- scoring by URI

@pytest.mark.parametrize("which", ["legacy", "keras3"])
def test_scores_by_run_uri(which, mlflow_server, registered, work, test_docs, reference_scores):
    """runs:/<run>/model: a run's artifacts (legacy) or the model an MLflow 3 run logged."""
    run_id, version = (registered.legacy_run, 1) if which == "legacy" else (registered.keras_run, 2)
    run = score(mlflow_server, f"runs:/{run_id}/model", work, f"runs-{which}", docs=test_docs)
    assert run.returncode == 0, run.stderr
    records, summary = outputs(work, f"runs-{which}")
    assert_predictions(records, local_docs(test_docs), reference_scores[REFERENCE[version]])
    assert mlflow_server.password not in run.stderr + run.stdout


@pytest.fixture(scope="module")
def version_one_twice(mlflow_server, registered, work, test_docs):
    """models:/<name>/1 scored twice on one machine (a cache of its own), evaluated against the
    aclImdb names."""
    machine = work / "v1-machine"
    args = ("inference.labels_from=aclimdb",)
    before = mlflow_server.downloads()
    first = score(mlflow_server, f"models:/{NAME}/1", work, "v1-first", *args, docs=test_docs, machine=machine)
    assert first.returncode == 0, first.stderr
    files, middle = cache_files(machine), mlflow_server.downloads()
    second = score(mlflow_server, f"models:/{NAME}/1", work, "v1-second", *args, docs=test_docs, machine=machine)
    assert second.returncode == 0, second.stderr
    return {"first": first, "second": second, "files": (files, cache_files(machine)), "machine": machine,
            "downloads": (middle - before, mlflow_server.downloads() - middle)}


def test_model_version_scores_every_document_in_order(version_one_twice, work, test_docs, reference_scores):
    for name in ("v1-first", "v1-second"):
        records, summary = outputs(work, name)
        assert_predictions(records, local_docs(test_docs), reference_scores["mlflow"])
        assert summary["evaluation"]["accuracy"] >= 0.7


def test_second_run_downloads_nothing(version_one_twice):
    first_files, second_files = version_one_twice["files"]
    assert first_files and second_files == first_files  # same files, untouched
    cache = version_one_twice["machine"] / "cache"
    models = [p.name for p in cache.iterdir() if not p.name.startswith(".")]
    assert len(models) == 1 and models[0].startswith("mlflow-"), models  # one copy, keyed by run and path
    assert not [p for p in cache.iterdir() if p.name.startswith(".download-")]
    first, second = version_one_twice["downloads"]
    assert first > 0 and second == 0


def test_summary_names_the_resolved_version(version_one_twice, registered, work, mlflow_server):
    _, summary = outputs(work, "v1-first")
    model = summary["model"]
    assert model["uri"] == f"models:/{NAME}/1" and model["format"] == "savedmodel"
    assert model["resolved"]["version"] == 1 and model["resolved"]["name"] == NAME
    assert model["resolved"]["run_id"] == registered.legacy_run
    with mlflow_server.environment():
        assert model["sha256"] == model_files.digest(f"models:/{NAME}/1", {}, str(work / "v1-machine" / "cache"))["sha256"]


@pytest.fixture(scope="module")
def alias_moved(mlflow_server, registered, work, test_docs):
    """models:/<name>@champion scored with the alias on version 1, then on version 2. The
    first run also logs itself to MLflow (test_the_cli_logs_the_run_when_asked)."""
    uri = f"models:/{NAME}@champion"
    try:
        registered.set_champion(mlflow_server, 1)
        first = score(mlflow_server, uri, work, "champion-1", "inference.mlflow.log=true",
                      "inference.mlflow.run_name=cli-logged", docs=test_docs)
        registered.set_champion(mlflow_server, 2)
        second = score(mlflow_server, uri, work, "champion-2", docs=test_docs)
        with mlflow_server.environment():
            described = model_files.describe(uri, {}, str(work / "cache"))
    finally:
        registered.set_champion(mlflow_server, 1)
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    return described


def test_alias_moved_between_runs_scores_with_the_new_version(alias_moved, work, test_docs, reference_scores):
    for name, version in (("champion-1", 1), ("champion-2", 2)):
        records, _ = outputs(work, name)
        assert_predictions(records, local_docs(test_docs), reference_scores[REFERENCE[version]])
    assert alias_moved["resolved"]["version"] == 2 and alias_moved["resolved"]["alias"] == "champion"
    assert alias_moved["resolved"]["uri"] == f"models:/{NAME}/2" and alias_moved["format"] == "keras"


def test_summary_says_which_version_the_alias_named(alias_moved, work):
    for name, version in (("champion-1", 1), ("champion-2", 2)):
        _, summary = outputs(work, name)
        assert summary["model"]["uri"] == f"models:/{NAME}@champion"
        assert summary["model"]["resolved"]["version"] == version
        assert summary["model"]["resolved"]["alias"] == "champion"
    assert outputs(work, "champion-2")[1]["model"]["sha256"] == alias_moved["sha256"]


def test_an_alias_is_resolved_once_and_workers_load_the_pinned_version(mlflow_server, registered, tmp_path, models):
    """What a worker gets (the pinned URI) keeps naming version 1 after the alias moved."""
    from daskinfer import model

    texts = ["A wonderful, moving film.", "Dull and far too long; I walked out."]
    try:
        with mlflow_server.environment():
            resolved = mlflow_models.resolve(f"models:/{NAME}@champion")
            registered.set_champion(mlflow_server, 2)
            assert (resolved.pinned_uri, resolved.version, resolved.alias) == (f"models:/{NAME}/1", "1", "champion")
            assert mlflow_models.resolve(resolved.pinned_uri).version == "1"
            predict = model.predictor(model.ModelSpec(uri=resolved.pinned_uri, cache_dir=str(tmp_path)))
            scores = predict(texts).ravel()
    finally:
        registered.set_champion(mlflow_server, 1)
    expected = models["mlflow"][1](texts)
    assert abs(scores - expected).max() <= 1e-5


# ---------------------------------------------------------------- what the driver does

def test_digest_is_the_same_for_the_same_model_and_differs_between_versions(mlflow_server, registered, models, tmp_path):
    with mlflow_server.environment():
        here = model_files.describe(f"models:/{NAME}/1", {}, str(tmp_path / "machine-a"))
        there = model_files.describe(f"runs:/{registered.legacy_run}/model", {}, str(tmp_path / "machine-b"))
        other = model_files.digest(f"models:/{NAME}/2", {}, str(tmp_path / "machine-a"))
    assert here["sha256"] == there["sha256"] == model_files.digest(str(models["mlflow"][0]), {})["sha256"]
    assert other["sha256"] != here["sha256"] and set(other) == {"format", "sha256"}
    assert (here["format"], other["format"]) == ("savedmodel", "keras")
    assert here["resolved"]["run_id"] == there["resolved"]["run_id"] == registered.legacy_run
    assert model_files.describe(str(models["keras"][0]), {})["resolved"] is None


def test_uris_mlflow_resolves():
    assert all(map(mlflow_models.is_mlflow_uri, ["runs:/abc/model", "models:/a/1", "models:/a@b", "mlflow-artifacts:/1/x"]))
    assert not any(map(mlflow_models.is_mlflow_uri, ["/models/a", "s3://b/k", "models/a", None]))


def test_the_driver_resolves_and_digests_without_tensorflow(mlflow_server, registered, tmp_path):
    code = (
        "import sys\nfrom daskinfer import model_files\n"
        f"print(model_files.describe('models:/{NAME}@champion', {{}}, {str(tmp_path)!r})['resolved']['version'])\n"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**_environ(), **mlflow_server.env})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["1", "False False"]
    assert done.stderr == ""  # no progress bars, no MLflow chatter


def _environ() -> Dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}


# ---------------------------------------------------------------- errors

@pytest.fixture
def hanging_server():
    """A port that accepts connections and never answers: a server that hangs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


ERRORS = {
    "unknown name": ("models:/no-such-model/1", {}, "no registered model named 'no-such-model'"),
    "unknown version": (f"models:/{NAME}/7", {}, f"registered model '{NAME}' has no version 7 (it has 1, 2)"),
    "unknown alias": (f"models:/{NAME}@nope", {}, f"registered model '{NAME}' has no alias 'nope' (it has champion)"),
    "unknown run": ("runs:/" + "0" * 32 + "/model", {}, "no MLflow run 00000000000000000000000000000000"),
    "run without the artifact": ("runs:/{legacy}/no-such-model", {}, "has no artifact 'no-such-model' (it has model)"),
    "model name mistyped (MLflow 3)": ("runs:/{keras}/modle", {},
                                       "has no artifact 'modle' (it has no artifacts; models it logged: model)"),
    "not a TensorFlow model": ("runs:/{sklearn}/model", {}, "has flavors ['sklearn'], expected tensorflow or keras"),
    "server down": (f"models:/{NAME}@champion", {"MLFLOW_TRACKING_URI": "down"}, "cannot reach the MLflow tracking server"),
    "server hangs": (f"models:/{NAME}@champion", {"MLFLOW_TRACKING_URI": "hangs"}, "no answer within 5 s"),
    "refused credentials": (f"models:/{NAME}@champion", {"MLFLOW_TRACKING_PASSWORD": "not-the-password"},
                            "refused access to MLflow model"),
    "no tracking server set": (f"models:/{NAME}@champion", {"MLFLOW_TRACKING_URI": ""},
                               "needs an MLflow tracking server, and none is set"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_are_one_line_quick_and_before_any_worker(case, mlflow_server, registered, hanging_server, tmp_path):
    uri, env, needle = ERRORS[case]
    uri = uri.format(legacy=registered.legacy_run, sklearn=registered.sklearn_run, keras=registered.keras_run)
    urls = {"down": f"http://127.0.0.1:{free_port()}", "hangs": hanging_server}
    env = {k: urls.get(v, v) for k, v in env.items()}
    started = time.monotonic()
    # the inputs are checked before the model: any folder with files will do
    run = score(mlflow_server, uri, tmp_path, "out", "inference.input_glob=*.py", docs=Path(__file__).parent, env=env)
    elapsed = time.monotonic() - started
    assert elapsed < 30, elapsed
    assert_user_error(run, needle, code=2 if case == "no tracking server set" else 1)
    if case != "no tracking server set":
        assert uri in run.stderr
    assert mlflow_server.password not in run.stderr + run.stdout
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()


# ---------------------------------------------------------------- logging the batch run

LOGGING_ERRORS = {
    "server down": ({"MLFLOW_TRACKING_URI": "down"}, "cannot reach the MLflow tracking server", 1),
    "refused credentials": ({"MLFLOW_TRACKING_PASSWORD": "not-the-password"}, "refused access", 1),
    "no tracking server set": ({"MLFLOW_TRACKING_URI": ""}, "needs an MLflow tracking server, and none is set", 2),
}


@pytest.mark.parametrize("case", list(LOGGING_ERRORS))
def test_a_run_to_log_fails_before_any_work_when_mlflow_cannot_take_its_record(case, mlflow_server, models, tmp_path):
    """inference.mlflow.log=true with a model from a plain file: the tracking server is asked
    before the first document is scored, not after an hour of scoring."""
    env, needle, code = LOGGING_ERRORS[case]
    env = {k: f"http://127.0.0.1:{free_port()}" if v == "down" else v for k, v in env.items()}
    run = score(mlflow_server, str(models["keras"][0]), tmp_path, "out", "inference.mlflow.log=true",
                "inference.input_glob=*.py", docs=Path(__file__).parent, env=env)
    assert_user_error(run, needle, code=code)
    assert "Scoring" not in run.stderr
    assert not (tmp_path / "out").exists()
    assert mlflow_server.password not in run.stderr + run.stdout



def _logging_config(*extra: str):
    return config.load_config([f"inference.model_path=models:/{NAME}/1", "inference.input_data_dir=.",
                               "inference.labels_from=aclimdb", "inference.mlflow.log=true", *extra])


def _sidecars(folder: Path) -> Dict[str, str]:
    return {"summary": str(folder / "summary.json"), "errors": str(folder / "errors.jsonl"),
            "config": str(folder / "config.yaml")}


def test_log_run_records_the_batch_run_next_to_the_training_run(version_one_twice, mlflow_server, registered, work):
    folder = work / "v1-first"
    summary = json.loads((folder / "summary.json").read_text())
    cfg = _logging_config("inference.mlflow.log_results=true", "inference.mlflow.run_name=batch-v1")
    with mlflow_server.environment():
        run_id = mlflow_models.log_run(cfg, summary, _sidecars(folder), str(folder / "res.jsonl"))
    with mlflow_server.environment():
        client = mlflow_server.client()
        run = client.get_run(run_id)
        listed = {a.path for a in client.list_artifacts(run_id)} | {a.path for a in client.list_artifacts(run_id, "results")}
        import mlflow

        logged = mlflow.artifacts.load_text(f"runs:/{run_id}/results/res.jsonl")
    assert run.info.status == "FINISHED" and run.info.run_name == "batch-v1"
    assert run.info.experiment_id == registered.experiment_id  # beside the training run
    metrics = run.data.metrics
    for key in ("documents", "predicted", "errors", "docs_per_s", "elapsed_s"):
        assert metrics[key] == pytest.approx(summary[key]), key
    assert metrics["accuracy"] == pytest.approx(summary["evaluation"]["accuracy"]) and metrics["accuracy"] >= 0.7
    for label in ("negative", "positive"):
        assert metrics[f"f1_{label}"] == pytest.approx(summary["evaluation"]["per_label"][label]["f1"])
    params = run.data.params
    assert params["model_uri"] == f"models:/{NAME}/1" and params["model_resolved_uri"] == f"models:/{NAME}/1"
    assert (params["threshold"], params["labels"], params["batch_size"]) == ("0.5", "negative,positive", "256")
    assert run.data.tags["daskinfer.model_run_id"] == registered.legacy_run
    assert run.data.tags["daskinfer.model_version"] == "1"
    assert {"summary.json", "errors.jsonl", "config.yaml", "results/res.jsonl"} <= listed
    assert logged == (folder / "res.jsonl").read_text()


def test_log_run_failure_is_one_line_and_keeps_the_results(version_one_twice, mlflow_server, work):
    folder = work / "v1-first"
    summary = json.loads((folder / "summary.json").read_text())
    before = hashlib.sha256((folder / "res.jsonl").read_bytes()).hexdigest()
    cfg = _logging_config("inference.mlflow.experiment=daskinfer-tests")
    down = {**mlflow_server.env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
    started = time.monotonic()
    with mlflow_server.environment(), pytest.MonkeyPatch.context() as patch:
        for key, value in down.items():
            patch.setenv(key, value)
        with pytest.raises(Exception) as failed:
            mlflow_models.log_run(cfg, summary, _sidecars(folder), str(folder / "res.jsonl"))
    assert time.monotonic() - started < 30
    message = str(failed.value)
    assert type(failed.value).__name__ == "LogFailed" and "\n" not in message
    assert message.startswith("not logged to MLflow: ") and "cannot reach the MLflow tracking server" in message
    assert mlflow_server.password not in message
    assert hashlib.sha256((folder / "res.jsonl").read_bytes()).hexdigest() == before
    off = config.load_config([f"inference.model_path=models:/{NAME}/1", "inference.input_data_dir=."])
    assert mlflow_models.log_run(off, summary, _sidecars(folder), str(folder / "res.jsonl")) is None


def test_a_run_over_its_error_budget_is_logged_as_failed(version_one_twice, mlflow_server, work):
    folder = work / "v1-first"
    summary = json.loads((folder / "summary.json").read_text())
    failing = {**summary, "errors": summary["documents"] // 2}  # the CLI exits 3 for it
    cfg = _logging_config("inference.mlflow.experiment=daskinfer-tests")
    with mlflow_server.environment():
        status = {name: mlflow_server.client().get_run(
            mlflow_models.log_run(cfg, counts, _sidecars(folder), str(folder / "res.jsonl"))).info.status
            for name, counts in (("within", summary), ("over", failing))}
    assert status == {"within": "FINISHED", "over": "FAILED"}


def test_the_cli_logs_the_run_when_asked(alias_moved, mlflow_server, registered, work):
    """alias_moved's first run: models:/<name>@champion (version 1) with inference.mlflow.log=true."""
    _, summary = outputs(work, "champion-1")
    with mlflow_server.environment():
        found = mlflow_server.client().search_runs([registered.experiment_id], "attributes.run_name = 'cli-logged'")
    assert len(found) == 1
    assert found[0].data.metrics["predicted"] == summary["predicted"] == 1600
    assert found[0].data.params["model_uri"] == f"models:/{NAME}@champion"
    assert found[0].data.tags["daskinfer.model_version"] == "1"


def test_a_model_logged_again_over_a_runs_artifacts_is_scored_as_it_is_now(mlflow_server, registered, models, tmp_path,
                                                                          test_docs, reference_scores, on_client):
    """A run's artifacts can be written again (a nightly job logging its retrained model to the
    same run): the next run on the same machine scores with the model as it is now, not the
    copy cached before, and its summary's sha256 says it changed (what an incremental run
    compares). On the session's workers, which have no MLflow settings: they fetch what the
    driver resolved, from this machine's cache, without asking the tracking server."""
    import shutil

    retrained = tmp_path / "retrained"
    shutil.copytree(models["mlflow"][0], retrained)
    shutil.rmtree(retrained / "data" / "model")
    shutil.copytree(models["keras3-export"][0], retrained / "data" / "model")
    mlmodel = retrained / "MLmodel"
    mlmodel.write_text(mlmodel.read_text().replace("06:30:00", "07:45:00"))
    with mlflow_server.environment():
        client = mlflow_server.client()
        run_id = client.create_run(registered.experiment_id, run_name="logged twice").info.run_id
        client.log_artifacts(run_id, str(models["mlflow"][0]), "model")
    summaries = []
    for name, logged, reference in (("before", None, "mlflow"), ("after", retrained, "keras3-export")):
        if logged:
            with mlflow_server.environment():
                client.log_artifacts(run_id, str(logged), "model")
        run = score(mlflow_server, f"runs:/{run_id}/model", tmp_path, name, *on_client, docs=test_docs)
        assert run.returncode == 0, run.stderr
        records, summary = outputs(tmp_path, name)
        assert_predictions(records, local_docs(test_docs), reference_scores[reference])
        summaries.append(summary["model"])
    assert summaries[0]["sha256"] != summaries[1]["sha256"]
    assert summaries[0]["resolved"]["content"] != summaries[1]["resolved"]["content"]


def test_an_interrupted_run_on_an_alias_is_resumed_on_the_version_it_began_with(mlflow_server, tmp_path, test_docs):
    """The resume command printed at SIGTERM names the version the alias named when the run
    began: the alias may move before the resume, which then still continues the same model."""
    import signal

    from misuse_fakes import slow_model
    from test_misuse import resume_args

    name = f"{NAME}-slow"
    with mlflow_server.environment():
        client = mlflow_server.client()
        run = client.create_run(client.get_experiment_by_name("Default").experiment_id).info
        client.log_artifacts(run.run_id, str(slow_model(tmp_path / "slow")), "model")
        client.create_registered_model(name)
        for _ in range(2):
            client.create_model_version(name, f"{run.artifact_uri}/model", run.run_id)
        client.set_registered_model_alias(name, "nightly", "1")
    (tmp_path / "home").mkdir()
    out = tmp_path / "out" / "res.jsonl"
    args = [f"inference.model_path=models:/{name}@nightly", f"inference.input_data_dir={test_docs}",
            f"inference.output_path={out}", f"inference.model_cache_dir={tmp_path}/cache", "inference.batch_size=4",
            "inference.partition_size=20", "cluster.n_workers=1"]
    env = {**os.environ, **mlflow_server.env, "HOME": str(tmp_path / "home")}
    job = subprocess.Popen([sys.executable, "-m", "daskinfer", *args], cwd=tmp_path, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    partial, deadline = Path(f"{out}.partial"), time.monotonic() + 180
    while not (partial.exists() and partial.read_bytes().count(b"\n") >= 20) and time.monotonic() < deadline:
        assert job.poll() is None, job.stderr.read()[-2000:]
        time.sleep(0.05)
    job.send_signal(signal.SIGTERM)
    _, stderr = job.communicate(timeout=120)
    assert job.returncode == 130, stderr
    hint = resume_args(stderr.strip().splitlines()[-1])
    assert f"inference.model_path=models:/{name}/1" in hint and not any("@nightly" in arg for arg in hint)

    with mlflow_server.environment():
        mlflow_server.client().set_registered_model_alias(name, "nightly", "2")
    resumed = run_cli(*hint, cwd=tmp_path, env={**mlflow_server.env, "HOME": str(tmp_path / "home")})
    assert resumed.returncode == 0, resumed.stderr
    assert [r["filepath"] for r in read_jsonl(out)] == sorted(local_docs(test_docs))


def test_a_runs_uri_finds_its_model_among_many_of_the_same_name(mlflow_server, registered, tmp_path):
    """runs:/<run>/model of an MLflow 3 run, in an experiment where a sweep has since logged a
    hundred more models named "model": it still names that run's model (MLflow pages them)."""
    with mlflow_server.environment():
        client = mlflow_server.client()
        experiment = client.get_run(registered.keras_run).info.experiment_id
        for _ in range(101):
            client.create_logged_model(experiment, name="model")
        resolved = mlflow_models.resolve(f"runs:/{registered.keras_run}/model")
        [own] = [m for m in client.search_logged_models([experiment], filter_string="name = 'model'", max_results=200)
                 if m.source_run_id == registered.keras_run]
    assert resolved.location == own.artifact_location.rstrip("/")


def test_a_deleted_experiment_to_log_into_is_refused_before_any_work(mlflow_server, models, tmp_path):
    with mlflow_server.environment():
        client = mlflow_server.client()
        client.delete_experiment(client.create_experiment("nightly-scores-gone"))
    run = score(mlflow_server, str(models["keras"][0]), tmp_path, "out", "inference.mlflow.log=true",
                "inference.mlflow.experiment=nightly-scores-gone", "inference.input_glob=*.py",
                docs=Path(__file__).parent)
    assert_user_error(run, "inference.mlflow.experiment=nightly-scores-gone: that MLflow experiment is deleted",
                      code=2)
    assert "Scoring" not in run.stderr and not (tmp_path / "out").exists()
