"""Errors the user must fix: one line on stderr, non-zero exit, no traceback, no results."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytest
from conftest import free_port, run_cli


def assert_user_error(run, *needles: str, single_line: bool = True, code: Optional[int] = None) -> None:
    assert run.returncode != 0 if code is None else run.returncode == code, (run.returncode, run.stderr)
    assert "Traceback" not in run.stderr, run.stderr
    lines = run.stderr_lines
    if single_line:
        assert len(lines) == 1, run.stderr
    error_lines = [line for line in lines if line.startswith("daskinfer: error: ")]
    assert error_lines == [lines[-1]], run.stderr
    for needle in needles:
        assert needle in lines[-1], lines[-1]


def assert_no_results(folder: Path) -> None:
    leftovers = [p for p in folder.rglob("*") if p.suffix in (".jsonl", ".partial") or p.name == "outputs"]
    assert leftovers == []


@pytest.fixture
def model(models):
    return str(models["keras"][0])


def test_missing_input_folder(model, tmp_path):
    run = run_cli(f"inference.model_path={model}", f"inference.input_data_dir={tmp_path}/nowhere", cwd=tmp_path)
    assert_user_error(run, "input folder not found", f"{tmp_path}/nowhere")
    assert_no_results(tmp_path)


def test_no_matching_files(model, tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.csv").write_text("text\nhello\n")
    (tmp_path / "docs" / "sub.txt").mkdir()  # a folder named *.txt is not a document
    run = run_cli(f"inference.model_path={model}", f"inference.input_data_dir={tmp_path}/docs", cwd=tmp_path)
    assert_user_error(run, "no files matching '*.txt'", f"{tmp_path}/docs")
    assert_no_results(tmp_path)


def test_missing_model(test_docs, tmp_path):
    run = run_cli(f"inference.model_path={tmp_path}/model.keras", f"inference.input_data_dir={test_docs}", cwd=tmp_path)
    assert_user_error(run, "model not found", f"{tmp_path}/model.keras")
    assert_no_results(tmp_path)


def test_folder_that_is_not_a_model(test_docs, tmp_path):
    (tmp_path / "empty-model").mkdir()
    run = run_cli(f"inference.model_path={tmp_path}/empty-model", f"inference.input_data_dir={test_docs}", cwd=tmp_path)
    assert_user_error(run, "not a model", "saved_model.pb")
    assert_no_results(tmp_path)


def test_unknown_key_suggests_the_nearest_valid_key(model, test_docs, tmp_path):
    run = run_cli(f"inference.model_path={model}", f"inference.input_data_dir={test_docs}", "inference.batchsize=8", cwd=tmp_path)
    assert_user_error(run, "unknown key 'inference.batchsize'; did you mean 'inference.batch_size'?")
    assert_no_results(tmp_path)
    far = run_cli(f"inference.model_path={model}", f"inference.input_data_dir={test_docs}", "cluster.zzzz=8", cwd=tmp_path)
    assert_user_error(far, "unknown key 'cluster.zzzz'; valid keys in cluster:", "cluster.address")
    assert "inference.batch_size" not in far.stderr
    section = run_cli(f"inference.model_path={model}", f"inference.input_data_dir={test_docs}", "clustr.n_workers=2",
                      cwd=tmp_path)
    assert_user_error(section, "unknown key 'clustr'; did you mean 'cluster'?")
    hydra = run_cli(f"inference.model_path={model}", f"inference.input_data_dir={test_docs}", "+inference.batch_size=8",
                    cwd=tmp_path)
    assert_user_error(hydra, "unknown key '+inference': daskinfer's overrides are key=value without Hydra's '+'")


@pytest.mark.parametrize(
    "override, needle",
    [
        ("inference.batch_size=0", "inference.batch_size must be > 0"),
        ("inference.max_batch_chars=0", "inference.max_batch_chars must be > 0"),
        ("inference.threshold=nan", "inference.threshold must be a finite number"),
        ("inference.labels=[good,good]", "inference.labels"),
        ("inference.batch_size=many", "inference.batch_size"),
        ("inference.encoding=klingon", "unknown encoding"),
    ],
)
def test_bad_values_fail_before_any_work(override, needle, model, test_docs, tmp_path):
    run = run_cli(f"inference.model_path={model}", f"inference.input_data_dir={test_docs}", override, cwd=tmp_path)
    assert_user_error(run, needle)
    assert_no_results(tmp_path)


@pytest.mark.parametrize("content", [b"PAR1\xff\x00 parquet bytes", b'{"no": "filepath"}\n', b"\n\nnot json\n"])
def test_a_reference_that_is_no_results_file_fails_before_any_work(content, model, test_docs, tmp_path):
    reference = tmp_path / "earlier" / "res.jsonl"
    reference.parent.mkdir()
    reference.write_bytes(content)
    run = run_cli(f"inference.model_path={model}", f"inference.input_data_dir={test_docs}",
                  f"inference.reference={reference}", cwd=tmp_path)
    assert_user_error(run, "inference.reference", str(reference), "is not a JSONL results file", code=2)
    assert_no_results(tmp_path / "outputs")


def test_missing_required_keys(tmp_path):
    run = run_cli(cwd=tmp_path)
    assert_user_error(run, "inference.model_path", "inference.input_data_dir")


def test_unreachable_scheduler(model, test_docs, tmp_path):
    address = f"tcp://127.0.0.1:{free_port()}"
    run = run_cli(
        f"inference.model_path={model}", f"inference.input_data_dir={test_docs}", f"cluster.address={address}",
        cwd=tmp_path, env={"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "3s"},
    )
    assert_user_error(run, "cannot reach the dask scheduler", address, single_line=False)
    assert f"Waiting for the dask scheduler at {address}, for up to 3 s" in run.stderr  # not a silent wait
    assert_no_results(tmp_path)


def test_unreachable_http_inputs_are_one_line(model, tmp_path):
    url = f"http://127.0.0.1:{free_port()}/docs/"
    run = run_cli(f"inference.model_path={model}", f"inference.input_data_dir={url}", cwd=tmp_path)
    assert_user_error(run, f"cannot reach the storage for {url}")
    assert_no_results(tmp_path)


def test_corrupt_model_file_is_reported_clearly(test_docs, tmp_path, on_client):
    bad = tmp_path / "broken.keras"
    bad.write_bytes(b"this is not a zip archive")
    out = tmp_path / "out" / "res.jsonl"
    run = run_cli(f"inference.model_path={bad}", f"inference.input_data_dir={test_docs}", f"inference.output_path={out}",
                  *on_client, cwd=tmp_path)
    assert_user_error(run, "could not load model", str(bad), "not a zip archive", single_line=False)
    assert "File not found" not in run.stderr  # what Keras says of a file that is there
    assert_no_results(tmp_path)


@pytest.mark.parametrize("texts", [
    ["a good\x85fine film", "a bad film", "good good", "bad bad"],  # "good" twice: Keras' load fails
    ["awful great", "qq\u2028zz fine", "bad film", "good film"],  # loads, every index after qq shifted
])
def test_keras_vocabulary_with_line_separator_is_reported_clearly(texts, test_docs, tmp_path, on_client):
    """Keras 3 reads a vocabulary token holding U+0085 or U+2028 (aclImdb text has them) back
    as two: the model would fail to load with no hint, or load and score with the wrong words."""
    import models as builder

    model = builder.train_keras3(texts * 4, [1, 0, 1, 0] * 4, vocabulary_texts=texts)
    path = tmp_path / "nel.keras"
    model.save(path)
    out = tmp_path / "out" / "res.jsonl"
    run = run_cli(f"inference.model_path={path}", f"inference.input_data_dir={test_docs}", f"inference.output_path={out}",
                  *on_client, cwd=tmp_path)
    found = next(c for c in "".join(texts) if c in "\x85\u2028")
    assert_user_error(run, "could not load model", str(path), f"holds U+{ord(found):04X}", "replace such characters",
                      single_line=False)
    assert_no_results(tmp_path)


def test_existing_output_is_never_overwritten(model, test_docs, tmp_path):
    out = tmp_path / "res.jsonl"
    out.write_text("precious\n")
    run = run_cli(f"inference.model_path={model}", f"inference.input_data_dir={test_docs}", f"inference.output_path={out}", cwd=tmp_path)
    assert_user_error(run, "already exists", str(out))
    assert out.read_text() == "precious\n"


@pytest.mark.parametrize("where", ["AWS_ENDPOINT_URL", "storage.options endpoint_url"])
def test_an_s3_endpoint_without_its_scheme_is_one_line(where, model, tmp_path):
    secret = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": secret}
    args = [f"inference.model_path={model}", "inference.input_data_dir=s3://reviews/batch/"]
    if where == "AWS_ENDPOINT_URL":
        env["AWS_ENDPOINT_URL"] = "127.0.0.1:9000"
    else:
        args.append("storage.options={endpoint_url: 'user:pw@127.0.0.1:9000'}")
    run = run_cli(*args, cwd=tmp_path, env=env, timeout=60)
    assert_user_error(run, f"{where} is not a URL", "http://HOST:PORT", code=2)
    assert secret not in run.stderr + run.stdout and "pw@" not in run.stderr + run.stdout


def test_a_glob_naming_subfolders_says_how_to_list_them(model, test_docs, tmp_path):
    run = run_cli(f"inference.model_path={model}", f"inference.input_data_dir={test_docs.parent}",
                  "inference.input_glob=**/*.txt", cwd=tmp_path, timeout=60)
    assert_user_error(run, "no files matching '**/*.txt'", "inference.recursive=true and inference.input_glob=*.txt")
