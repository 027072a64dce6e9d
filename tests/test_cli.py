"""The command line end to end on a real LocalCluster, for every model format."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
from conftest import assert_predictions, local_docs, read_jsonl, run_cli

FORMATS = ["keras", "keras3-export", "tf-keras2-savedmodel", "mlflow"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_cli_scores_every_document_with_each_model_format(fmt, models, test_docs, reference_scores, tmp_path, request):
    """On a LocalCluster of the run's own for the Keras file; the other formats on the
    session's cluster (the same workers' code, at a quarter of the suite's time)."""
    import tempfile

    # a temporary folder of its own, with a short path: multiprocessing's forkserver socket
    # goes in it, and a Unix socket's path is at most 107 bytes
    output, scratch = tmp_path / "out" / "results.jsonl", Path(tempfile.mkdtemp(prefix="di-"))
    request.addfinalizer(lambda: shutil.rmtree(scratch, ignore_errors=True))
    cluster = ("cluster.n_workers=2", "cluster.threads_per_worker=1") if fmt == "keras" else \
        request.getfixturevalue("on_client")
    run = run_cli(
        f"inference.model_path={models[fmt][0]}",
        f"inference.input_data_dir={test_docs}",
        "inference.output_path=out/results.jsonl",  # relative: the closing line names it in full
        *cluster,
        cwd=tmp_path,
        env={"TMPDIR": str(scratch)},
    )
    assert run.returncode == 0, run.stderr
    # Nothing left in the temporary folder by the run or its own workers (dask's locks aside)
    assert [p.name for p in scratch.rglob("*") if p.is_file() and p.suffix != ".lock"] == []
    assert run.stderr_lines[-1] == f"[{run.stderr_lines[-1][1:24]}][daskinfer][INFO] - Output result location: {output}"
    assert "Traceback" not in run.stderr and "Warning" not in run.stderr
    assert_predictions(read_jsonl(output), local_docs(test_docs), reference_scores[fmt])

    summary = json.loads((output.parent / "summary.json").read_text())
    assert summary["documents"] == summary["predicted"] == 1600 and summary["errors"] == 0
    assert len(summary["model_loads"]) == 2 and set(summary["model_loads"].values()) == {1}
    assert (output.parent / "config.yaml").is_file()
    assert (output.parent / "errors.jsonl").read_text() == ""
    assert sorted(p.name for p in output.parent.iterdir()) == [
        "config.yaml", "errors.jsonl", "ledger.parquet", "report.html", "results.jsonl", "summary.json"]


def test_default_output_layout_config_file_and_env_interpolation(models, test_docs, tmp_path):
    """Output under outputs/<date>/<time>/ by default; --config merges a YAML that reads the
    environment the way the Docker image passes INPUT_DATA_DIR; a console script runs it."""
    overrides = tmp_path / "job.yaml"
    overrides.write_text("inference:\n  input_data_dir: ${oc.env:INPUT_DATA_DIR}\n  batch_size: 64\n")
    run = run_cli(  # overrides on both sides of --config, as users write them
        f"inference.model_path={models['keras'][0]}", "--config", str(overrides), "inference.threshold=0.6",
        cwd=tmp_path, env={"INPUT_DATA_DIR": str(test_docs)}, script=True,
    )
    assert run.returncode == 0, run.stderr
    location = run.stderr_lines[-1].split("Output result location: ")[1]
    assert re.fullmatch(re.escape(str(tmp_path)) + r"/outputs/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d/batch-infer-res.jsonl", location)
    records = read_jsonl(location)
    assert len(records) == 1600
    assert all(r["sentiment"] == ("positive" if r["logit_prob"] > 0.6 else "negative") for r in records)
    saved = (Path(location).parent / "config.yaml").read_text()
    assert f"input_data_dir: {test_docs}" in saved and "batch_size: 64" in saved and "threshold: 0.6" in saved


def schema_keys(schema=None, prefix=""):
    """Every leaf key of the configuration schema (the dataclasses), not of the help's parser."""
    import dataclasses
    import typing

    from daskinfer.config import Config

    schema = schema or Config
    for name, kind in typing.get_type_hints(schema).items():
        if dataclasses.is_dataclass(kind):
            yield from schema_keys(kind, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def test_console_script_help_lists_every_key(tmp_path):
    import subprocess

    keys = list(schema_keys())
    assert len(keys) > 30 and "inference.batch_size" in keys and "cluster.adapt.maximum" in keys
    done = subprocess.run([Path(sys.executable).parent / "daskinfer", "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    keys_section = done.stdout.split("configuration keys", 1)[1]
    listed = {line.split("=", 1)[0].strip() for line in keys_section.splitlines() if re.match(r"^  [a-z_.]+=", line)}
    assert listed == set(keys)
    version = subprocess.run([Path(sys.executable).parent / "daskinfer", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and re.fullmatch(r"daskinfer \d+\.\d+\.\d+\S*\n", version.stdout)


def test_driver_never_imports_tensorflow(models, test_docs, tmp_path):
    """The real CLI path, run in a fresh interpreter that then looks at its own modules."""
    output = tmp_path / "res.jsonl"
    code = (
        "import sys\n"
        "from daskinfer.cli import main\n"
        f"assert main(['inference.model_path={models['mlflow'][0]}', "
        f"'inference.input_data_dir={test_docs}', 'inference.output_path={output}']) == 0\n"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules, 'pandas' in sys.modules)\n"
    )
    import subprocess

    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False False False"
    assert len(read_jsonl(output)) == 1600


def test_demo_builds_a_model_and_reviews_and_scores_them(tmp_path):
    run = run_cli("demo", "cluster.n_workers=1", cwd=tmp_path, script=True)
    assert run.returncode == 0, run.stderr
    location = run.stderr_lines[-1].split("Output result location: ")[1]
    records = read_jsonl(location)
    reviews = sorted((tmp_path / "daskinfer-demo" / "reviews").glob("*.txt"))
    assert [r["filepath"] for r in records] == [str(p) for p in reviews] and len(reviews) >= 20
    # the demo model learned its reviews: the labels are in the names (pos_*, neg_*)
    assert all((r["sentiment"] == "positive") == Path(r["filepath"]).name.startswith("pos_") for r in records)
    again = run_cli("demo", "cluster.n_workers=1", cwd=tmp_path)  # reuses the model and reviews
    assert again.returncode == 0 and "Training the demo model" not in again.stderr


def test_a_column_named_as_a_yaml_boolean_keeps_its_name():
    """YAML reads on, no and yes as booleans: a column so named stays its name, null stays none."""
    from daskinfer import load_config

    cfg = load_config(["inference.model_path=m.keras", "inference.input_data_dir=reviews", "inference.id_column=on",
                       "inference.text_column=no", "inference.labels_from=null"])
    assert (cfg.inference.id_column, cfg.inference.text_column, cfg.inference.labels_from) == ("on", "no", None)


def test_a_path_on_the_command_line_is_kept_as_written():
    """A folder named 0123 (YAML: the octal 83), "x: y" (YAML: a mapping), 1e3 or on: paths
    as the shell and the Docker image's INPUT_DATA_DIR pass them."""
    from daskinfer import load_config

    for folder in ("0123", "reviews/x: y", "1e3", "on", "[draft]"):
        cfg = load_config(["inference.model_path=007", f"inference.input_data_dir={folder}",
                           f"inference.output_path={folder}/res.jsonl", "inference.reference=null"])
        assert (cfg.inference.input_data_dir, cfg.inference.model_path) == (folder, "007")
        assert (cfg.inference.output_path, cfg.inference.reference) == (f"{folder}/res.jsonl", None)


def test_a_column_named_as_a_yaml_boolean_in_a_config_file_keeps_its_name(tmp_path):
    """In a --config file too: `text_column: on` names the column "on", not true."""
    from daskinfer import load_config

    job = tmp_path / "job.yaml"
    job.write_text("inference:\n  text_column: On\n  id_column: 'yes'\n  labels_from: no\n")
    cfg = load_config(["inference.model_path=m.keras", "inference.input_data_dir=t.csv", "inference.input_format=csv"],
                      config_file=str(job))
    assert (cfg.inference.text_column, cfg.inference.id_column, cfg.inference.labels_from) == ("On", "yes", "no")


def test_paths_under_home_are_where_the_run_says_and_where_its_workers_look(models, test_docs, tmp_path, on_client):
    """`~/...` as a shell would not expand it (inside a config file, or quoted): the results
    are written under HOME and the closing line says so; the model is found there by workers
    started elsewhere (the session's, run from another folder)."""
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    shutil.copyfile(models["keras"][0], home / "models" / "sentiment.keras")
    manifest = tmp_path / "docs.txt"
    manifest.write_text("\n".join(sorted(local_docs(test_docs))[:20]) + "\n")
    run = run_cli("inference.model_path=~/models/sentiment.keras", f"inference.input_manifest={manifest}",
                  "inference.output_path=~/scores/res.jsonl", *on_client, cwd=tmp_path, env={"HOME": str(home)})
    assert run.returncode == 0, run.stderr
    output = home / "scores" / "res.jsonl"
    assert run.stderr_lines[-1].endswith(f"Output result location: {output}")
    assert len(read_jsonl(output)) == 20 and not (tmp_path / "~").exists()
    assert json.loads((output.parent / "summary.json").read_text())["output"] == str(output)


def test_a_temporary_folder_too_deep_for_a_unix_socket_is_one_line(models, test_docs, tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    run = run_cli(f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={test_docs}",
                  cwd=tmp_path, env={"TMPDIR": str(deep)})
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr_lines[-1] == (f"daskinfer: error: the temporary folder {deep} has too long a path for the "
                                    "workers' Unix socket (107 bytes at most): set TMPDIR to a shorter one")
