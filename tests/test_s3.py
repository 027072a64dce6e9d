"""Inputs, models and outputs on S3, against moto's S3 server over HTTP, configured only
the way users configure AWS tools: AWS_* environment variables (or storage.options)."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import assert_predictions, local_docs, read_jsonl, run_cli
from test_errors import assert_user_error


@pytest.fixture(scope="session")
def s3_data(s3_server, test_docs, models, reference_scores):
    """The test reviews under s3://reviews/imdb/test/ and the models under s3://models/."""
    client = s3_server.client()
    for bucket in ("reviews", "models", "results"):
        client.create_bucket(Bucket=bucket)
    paths = sorted(test_docs.glob("*.txt"))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda p: client.upload_file(str(p), "reviews", f"imdb/test/{p.name}"), paths))
    s3_server.upload_folder(models["keras3-export"][0], "models", "exported")
    client.upload_file(str(models["keras"][0]), "models", "sentiment.keras")
    s3_server.upload_folder(models["mlflow"][0], "models", "mlflow-run/artifacts/model")
    uris = {f"s3://reviews/imdb/test/{p.name}": str(p) for p in paths}
    return {
        "uris": sorted(uris),
        # in-process scores keyed by the S3 URI of the same review
        "reference": {fmt: {u: scores[p] for u, p in uris.items()} for fmt, scores in reference_scores.items()},
    }


def read_object(s3_server, bucket: str, key: str) -> bytes:
    return s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read()


def test_inputs_model_and_output_on_s3(s3_server, s3_data, tmp_path):
    run = run_cli(
        "inference.model_path=s3://models/exported",
        "inference.input_data_dir=s3://reviews/imdb/test/",
        "inference.output_path=s3://results/run1/batch-infer-res.jsonl",
        f"inference.model_cache_dir={tmp_path}/cache",
        cwd=tmp_path, env=s3_server.env,
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr_lines[-1].endswith("Output result location: s3://results/run1/batch-infer-res.jsonl")
    body = read_object(s3_server, "results", "run1/batch-infer-res.jsonl").decode()
    records = [json.loads(line) for line in body.splitlines()]
    assert_predictions(records, s3_data["uris"], s3_data["reference"]["keras3-export"])
    summary = json.loads(read_object(s3_server, "results", "run1/summary.json"))
    assert summary["predicted"] == 1600 and set(summary["model_loads"].values()) == {1}
    assert read_object(s3_server, "results", "run1/errors.jsonl") == b""
    listed = s3_server.client().list_objects_v2(Bucket="results", Prefix="run1/")["Contents"]
    everything = run.stdout + run.stderr + "".join(  # the ledger is Parquet: bytes, read as text
        read_object(s3_server, "results", o["Key"]).decode(errors="replace") for o in listed
    )
    assert "run1/ledger.parquet" in {o["Key"] for o in listed}
    assert s3_server.secret not in everything
    assert not any(s3_server.secret in p.read_text(errors="ignore") for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".pb")


def test_local_inputs_with_a_model_file_on_s3_downloaded_once(s3_server, s3_data, test_docs, reference_scores, tmp_path):
    out = tmp_path / "res.jsonl"
    cache = tmp_path / "cache"
    args = ("inference.model_path=s3://models/sentiment.keras", f"inference.input_data_dir={test_docs}",
            f"inference.model_cache_dir={cache}")
    run = run_cli(*args, f"inference.output_path={out}", cwd=tmp_path, env=s3_server.env)
    assert run.returncode == 0, run.stderr
    assert_predictions(read_jsonl(out), local_docs(test_docs), reference_scores["keras"])
    copies = [p for p in cache.rglob("sentiment.keras")]
    assert len(copies) == 1 and not [p for p in cache.iterdir() if p.name.startswith(".download")]
    stamp = copies[0].stat().st_mtime_ns
    again = run_cli(*args, f"inference.output_path={tmp_path}/again.jsonl", cwd=tmp_path, env=s3_server.env)
    assert again.returncode == 0, again.stderr
    assert list(cache.rglob("sentiment.keras")) == copies and copies[0].stat().st_mtime_ns == stamp


def test_s3_inputs_and_mlflow_model_through_storage_options(s3_server, s3_data, tmp_path):
    """Credentials in the config instead of the environment; they never reach config.yaml."""
    out = tmp_path / "out" / "res.jsonl"
    run = run_cli(
        "inference.model_path=s3://models/mlflow-run/artifacts/model",
        "inference.input_data_dir=s3://reviews/imdb/test",
        f"inference.output_path={out}",
        f"inference.model_cache_dir={tmp_path}/cache",
        f"storage.options={{endpoint_url: '{s3_server.endpoint}', key: {s3_server.key}, secret: '{s3_server.secret}'}}",
        cwd=tmp_path, env={"AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""},
    )
    assert run.returncode == 0, run.stderr
    assert_predictions(read_jsonl(out), s3_data["uris"], s3_data["reference"]["mlflow"])
    saved = (out.parent / "config.yaml").read_text()
    assert s3_server.secret not in saved and s3_server.key not in saved and "secret: '***'" in saved
    assert s3_server.secret not in run.stderr


@pytest.mark.parametrize(
    "case, input_dir, env_change, needle",
    [
        ("missing bucket", "s3://no-such-bucket/docs/", {}, "bucket not found: no-such-bucket"),
        ("wrong secret", "s3://reviews/imdb/test/", {"AWS_SECRET_ACCESS_KEY": "not-the-secret"}, "access denied to s3://reviews/imdb/test/"),
        ("unreachable endpoint", "s3://reviews/imdb/test/", {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, "cannot reach the storage for s3://reviews/imdb/test/"),
        ("empty prefix", "s3://reviews/nothing-here/", {}, "no files matching '*.txt' in s3://reviews/nothing-here/"),
        ("missing output bucket", "s3://reviews/imdb/test/", {},
         "bucket not found: no-such-bucket (output s3://no-such-bucket/scores/res.jsonl)"),
    ],
)
def test_s3_errors_are_one_line_and_quick(case, input_dir, env_change, needle, s3_server, s3_data, tmp_path):
    started = time.monotonic()
    output = ("inference.output_path=s3://no-such-bucket/scores/res.jsonl",) if "output" in case else ()
    run = run_cli(
        "inference.model_path=s3://models/exported", f"inference.input_data_dir={input_dir}", *output,
        cwd=tmp_path, env={**s3_server.env, **env_change},
    )
    assert time.monotonic() - started < 60
    assert_user_error(run, needle)
    assert s3_server.secret not in run.stderr + run.stdout
    assert not Path(tmp_path / "outputs").exists() and "Scoring" not in run.stderr  # before any cluster


@pytest.mark.parametrize("listed_by", ["listing", "manifest"])
def test_an_empty_object_is_an_empty_document_as_a_local_file_is(listed_by, s3_server, s3_data, test_docs, models,
                                                                 reference_scores, tmp_path):
    client = s3_server.client()
    reviews = sorted(test_docs.glob("*.txt"))[:4]
    for path in reviews:
        client.upload_file(str(path), "reviews", f"with-empty/{path.name}")
    client.put_object(Bucket="reviews", Key="with-empty/0_empty.txt", Body=b"")
    uris = [f"s3://reviews/with-empty/{p.name}" for p in reviews]
    if listed_by == "listing":
        inputs = "inference.input_data_dir=s3://reviews/with-empty/"
    else:  # sizes unknown: the empty object is read like any other
        manifest = tmp_path / "manifest.txt"
        manifest.write_text("\n".join(["s3://reviews/with-empty/0_empty.txt", *uris]) + "\n")
        inputs = f"inference.input_manifest={manifest}"
    run = run_cli(f"inference.model_path={models['keras'][0]}", inputs, f"inference.output_path={tmp_path}/res.jsonl",
                  "inference.error_budget=0.5", cwd=tmp_path, env=s3_server.env)
    assert run.returncode == 0, run.stderr
    reference = {f"s3://reviews/with-empty/{p.name}": reference_scores["keras"][str(p)] for p in reviews}
    assert_predictions(read_jsonl(tmp_path / "res.jsonl"), uris, reference)
    errors = read_jsonl(tmp_path / "errors.jsonl")
    assert [(e["filepath"], e["error"]) for e in errors] == [("s3://reviews/with-empty/0_empty.txt",
                                                             "ValueError: empty document")]


def test_hidden_objects_are_no_inputs_as_in_a_local_folder(s3_server, s3_data, test_docs, models, reference_scores,
                                                           tmp_path):
    """The bucket is scored as it is listed (object_listing): a synced folder's "._" forks
    and .ipynb_checkpoints/ copies are left out there as in a local folder's listing."""
    client = s3_server.client()
    reviews = sorted(test_docs.glob("*.txt"))[:4]
    for path in reviews:
        client.upload_file(str(path), "reviews", f"synced/{path.name}")
        client.put_object(Bucket="reviews", Key=f"synced/._{path.name}", Body=b"\x00\x05\x16\x07Mac OS X \xff")
    client.upload_file(str(reviews[0]), "reviews", f"synced/.ipynb_checkpoints/{reviews[0].name}")
    run = run_cli(f"inference.model_path={models['keras'][0]}", "inference.input_data_dir=s3://reviews/synced/",
                  "inference.recursive=true", f"inference.output_path={tmp_path}/res.jsonl", cwd=tmp_path,
                  env=s3_server.env)
    assert run.returncode == 0, run.stderr
    uris = [f"s3://reviews/synced/{p.name}" for p in reviews]
    reference = {f"s3://reviews/synced/{p.name}": reference_scores["keras"][str(p)] for p in reviews}
    assert_predictions(read_jsonl(tmp_path / "res.jsonl"), uris, reference)
    assert read_jsonl(tmp_path / "errors.jsonl") == []
    assert "Left out 5 hidden file(s)" in run.stderr
