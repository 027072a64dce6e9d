"""A real MLflow tracking server for the tests, and the models registered on it.

`mlflow server` runs in its own process on 127.0.0.1 with basic authentication on, its runs in
SQLite under a temporary folder, its artifacts proxied to moto's S3 server (the s3_server
fixture), as a team's server keeps them on S3-compatible storage. conftest.py registers the
fixtures once for the session: a test module must not import them (it would start a server of its own).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator

import pytest
from conftest import free_port

NAME = "sentiment"
TRAINING_EXPERIMENT = "sentiment-training"


@dataclass
class MlflowServer:
    url: str
    username: str
    password: str
    log: Path  # the server's output, with one access line per request

    @property
    def env(self) -> Dict[str, str]:
        """What an MLflow user exports to reach this server."""
        return {"MLFLOW_TRACKING_URI": self.url, "MLFLOW_TRACKING_USERNAME": self.username,
                "MLFLOW_TRACKING_PASSWORD": self.password}

    @contextlib.contextmanager
    def environment(self) -> Iterator[None]:
        """self.env in this process for the calls inside (MLflow reads credentials only from
        the environment), as it was afterwards. The tests' own downloads go through the server:
        moto's S3 with IAM on refuses the presigned URLs MLflow 3 would fetch them by."""
        wanted = {**self.env, "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false"}
        saved = {k: os.environ.get(k) for k in wanted}
        os.environ.update(wanted)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(self.url)

    def downloads(self) -> int:
        """How many of a model's files the server has sent so far (GET .../mlflow-artifacts/artifacts/<path>;
        a listing is GET .../artifacts?path=...). Not its MLmodel file, which every resolve reads
        (a few hundred bytes: a model logged again over the same path has a new one)."""
        text = self.log.read_text(errors="replace")
        sent = re.findall(r'"GET /api/2\.0/mlflow-artifacts/artifacts/(\S+) HTTP', text)
        return sum(1 for path in sent if not path.endswith("/MLmodel"))


@pytest.fixture(scope="session")
def mlflow_server(s3_server, tmp_path_factory) -> Iterator[MlflowServer]:
    folder = tmp_path_factory.mktemp("mlflow")
    s3_server.client().create_bucket(Bucket="mlflow")
    password = "pw-" + secrets.token_urlsafe(12)
    auth = folder / "basic_auth.ini"
    auth.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{folder}/auth.db\n"
        f"admin_username = admin\nadmin_password = {password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    port = free_port()
    env = {**os.environ, **s3_server.env, "MLFLOW_S3_ENDPOINT_URL": s3_server.endpoint,
           "MLFLOW_AUTH_CONFIG_PATH": str(auth), "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
           # no background job runner: seven more processes on two cores, for features not used here
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = folder / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1", "--app-name", "basic-auth", "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
             "--artifacts-destination", "s3://mlflow/artifacts"],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True,
        )
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", server, log)
        yield MlflowServer(f"http://127.0.0.1:{port}", "admin", password, log)
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the uvicorn worker it started
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)


def _wait_healthy(url: str, server: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Until /health answers: starting takes 10 to 30 s on two busy cores (database migrations)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"mlflow server not healthy within {timeout} s")


@dataclass
class Registered:
    """The models on the server: version 1 the legacy tf.keras SavedModel (as autolog stored it,
    a run's artifacts/model), version 2 the Keras 3 model (an MLflow 3 logged model)."""

    name: str
    legacy_run: str
    keras_run: str
    experiment_id: str
    sklearn_run: str  # a run whose model is not a TensorFlow one

    def set_champion(self, server: MlflowServer, version: int) -> None:
        with server.environment():
            server.client().set_registered_model_alias(self.name, "champion", str(version))


@pytest.fixture(scope="session")
def registered(mlflow_server, models) -> Registered:
    """Both models logged and registered, alias champion on version 1."""
    import mlflow

    with mlflow_server.environment():
        client = mlflow_server.client()
        experiment = client.create_experiment(TRAINING_EXPERIMENT)
        legacy = client.create_run(experiment, run_name="tf-keras-2 autolog")
        client.log_artifacts(legacy.info.run_id, str(models["mlflow"][0]), "model")
        client.set_terminated(legacy.info.run_id)
        _register(mlflow, f"runs:/{legacy.info.run_id}/model")
        keras_run = _log_keras3(mlflow, experiment, models["keras"][0])
        _register(mlflow, f"runs:/{keras_run}/model")
        client.set_registered_model_alias(NAME, "champion", "1")
        sklearn = _log_sklearn_like(client, experiment, Path(mlflow_server.log).parent / "sklearn-model")
    return Registered(NAME, legacy.info.run_id, keras_run, experiment, sklearn)


def _register(mlflow, source: str) -> None:
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        mlflow.register_model(source, NAME)


def _log_keras3(mlflow, experiment: str, keras_file: Path) -> str:
    """The Keras 3 model logged the MLflow 3 way (mlflow.keras.log_model), in a run of its own."""
    import keras

    model = keras.saving.load_model(keras_file)
    with mlflow.start_run(experiment_id=experiment, run_name="keras 3") as run:
        # requirements given: otherwise MLflow infers them by loading the model in a subprocess
        mlflow.keras.log_model(model, name="model", pip_requirements=["keras", "tensorflow"])
    return run.info.run_id


def _log_sklearn_like(client, experiment: str, folder: Path) -> str:
    """A run whose artifacts/model is an MLflow model of another flavor (scikit-learn)."""
    folder.mkdir()
    (folder / "MLmodel").write_text("flavors:\n  sklearn:\n    pickled_model: model.pkl\n")
    (folder / "model.pkl").write_bytes(b"not a TensorFlow model")
    run = client.create_run(experiment, run_name="sklearn")
    client.log_artifacts(run.info.run_id, str(folder), "model")
    client.set_terminated(run.info.run_id)
    return run.info.run_id
