"""The exploration notebook, the Docker entrypoint (as a plain script) and the Dockerfiles."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from conftest import REPO, assert_predictions, local_docs, read_jsonl
from nbclient import NotebookClient

NOTEBOOK = REPO / "notebooks" / "explore.ipynb"


def test_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_notebook_runs_top_to_bottom(models, test_docs, tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert "DATA_DIR = None" in first.source
    first.source = (f"DATA_DIR = {str(test_docs)!r}\nMODEL_PATH = {str(models['keras'][0])!r}\n"
                    f"OUTPUT_PATH = {str(tmp_path / 'nb' / 'res.jsonl')!r}")
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the histogram was not drawn"
    text = "".join(o.get("text", "") for o in outputs)
    assert "Dashboard: http://127.0.0.1:" in text
    accuracy = float(re.search(r"accuracy on 1600 labeled documents: ([\d.]+)", text).group(1))
    assert accuracy >= 0.7
    assert len(read_jsonl(tmp_path / "nb" / "res.jsonl")) == 1600


@pytest.mark.parametrize("dockerfile", sorted((REPO / "docker").glob("*.Dockerfile")), ids=lambda p: p.name)
def test_dockerfiles_pass_hadolint(dockerfile):
    done = subprocess.run([str(Path(sys.executable).parent / "hadolint"), str(dockerfile)], capture_output=True, text=True)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_batch_image_runs_as_uid_2222():
    text = (REPO / "docker" / "daskinfer-batch-inferencing.Dockerfile").read_text()
    assert "--uid 2222 --gid 2222" in text and "USER 2222:2222" in text
    assert "/home/aisg/from-ecs" in text and "entrypoint.sh" in text


def entrypoint(env: dict, *args: str, cwd: Path):
    full = {k: v for k, v in os.environ.items() if not k.startswith(("DASK_", "AWS_", "PRED_", "MODEL", "MLFLOW_"))}
    full["PATH"] = f"{Path(sys.executable).parent}:{full['PATH']}"
    full.update(env)
    return subprocess.run(["bash", str(REPO / "docker" / "entrypoint.sh"), *args], env=full, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_entrypoint_fetches_the_mlflow_model_once(s3_server, models, test_docs, reference_scores, tmp_path):
    uuid = "0123456789abcdef0123456789abcdef"
    s3_server.client().create_bucket(Bucket="mlruns")
    s3_server.upload_folder(models["mlflow"][0], "mlruns", f"mlflow-artifacts/{uuid}/artifacts/model")
    env = {**s3_server.env, "PRED_MODEL_UUID": uuid, "MODEL_BUCKET": "mlruns", "MODEL_PREFIX": "mlflow-artifacts",
           "MODELS_DIR": str(tmp_path / "from-ecs"), "INPUT_DATA_DIR": str(test_docs)}
    first = entrypoint(env, f"inference.output_path={tmp_path}/1/res.jsonl", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    fetched = tmp_path / "from-ecs" / uuid / "artifacts" / "model"
    assert (fetched / "MLmodel").is_file()
    assert_predictions(read_jsonl(tmp_path / "1" / "res.jsonl"), local_docs(test_docs), reference_scores["mlflow"])

    # a second start reuses the copy: it works even with the bucket gone from its settings
    second = entrypoint({**env, "MODEL_BUCKET": "no-such-bucket"}, f"inference.output_path={tmp_path}/2/res.jsonl", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert len(read_jsonl(tmp_path / "2" / "res.jsonl")) == 1600
    assert s3_server.secret not in first.stderr + second.stderr


def test_entrypoint_resolves_the_run_through_mlflow_when_a_tracking_server_is_set(
        mlflow_server, registered, test_docs, reference_scores, tmp_path):
    """With MLFLOW_TRACKING_URI, PRED_MODEL_UUID is runs:/<uuid>/model: no bucket to name."""
    env = {**mlflow_server.env, "PRED_MODEL_UUID": registered.legacy_run, "MODELS_DIR": str(tmp_path / "from-ecs"),
           "INPUT_DATA_DIR": str(test_docs), "HOME": str(tmp_path / "home")}
    done = entrypoint(env, f"inference.output_path={tmp_path}/res.jsonl", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert_predictions(read_jsonl(tmp_path / "res.jsonl"), local_docs(test_docs), reference_scores["mlflow"])
    # kept in the models volume, across starts of the container
    assert len(list((tmp_path / "from-ecs" / "mlflow-cache").glob("mlflow-*/model/MLmodel"))) == 1
    assert not (tmp_path / "from-ecs" / registered.legacy_run).exists()  # not the S3 layout's copy
    assert mlflow_server.password not in done.stdout + done.stderr


@pytest.mark.parametrize("missing, needle", [
    ("INPUT_DATA_DIR", "INPUT_DATA_DIR is not set"),
    ("PRED_MODEL_UUID", "set PRED_MODEL_UUID"),
    ("MODEL_BUCKET", "MODEL_BUCKET is not set"),
])
def test_entrypoint_missing_variable(missing, needle, test_docs, tmp_path):
    env = {"PRED_MODEL_UUID": "abc", "MODEL_BUCKET": "mlruns", "MODELS_DIR": str(tmp_path), "INPUT_DATA_DIR": str(test_docs)}
    del env[missing]
    done = entrypoint(env, cwd=tmp_path)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [f"daskinfer: error: {done.stderr.strip().split('error: ', 1)[1]}"]
    assert needle in done.stderr
