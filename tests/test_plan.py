"""`daskinfer plan`: a dry run that counts, times a sample and estimates, writing nothing."""

from __future__ import annotations

import os
import re
import shutil

from conftest import run_cli
from test_errors import assert_user_error


def test_plan_counts_the_inputs_times_the_model_and_writes_nothing(models, test_docs, tmp_path, on_client):
    docs = tmp_path / "docs"
    shutil.copytree(test_docs, docs)
    os.mkfifo(docs / "pipe.txt")
    (docs / "huge.txt").write_text("word " * 30_000)
    sizes = [p.stat().st_size for p in docs.glob("*.txt") if p.is_file()]
    run = run_cli("plan", f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={docs}",
                  "inference.max_document_bytes=100000", *on_client, cwd=tmp_path)  # two workers of a thread
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == f"inputs: {len(sizes) + 1} documents, {sum(sizes):,} bytes"
    histogram = {m.group(1): int(m.group(2)) for m in re.finditer(r"^\s+(.+ KiB|< 1 KiB): (\d+)$", run.stdout, re.M)}
    assert sum(histogram.values()) == len(sizes) + 1
    assert "would be errors: 1 (not a regular file (a FIFO))" in lines
    assert "would be errors: 1 (above inference.max_document_bytes)" in lines
    assert re.search(r"^model: loaded in [\d.]+ s on a worker, which then holds \d+ MiB$", run.stdout, re.M)
    sample = re.search(r"^sample: (\d+) documents on 2 thread\(s\) at once, ([\d,]+) docs/s a thread$", run.stdout, re.M)
    assert sample and int(sample.group(1)) > 500
    estimates = re.findall(r"^\s+this cluster:\s+([\d,]+) docs/s, about ([\d.,]+) s$", run.stdout, re.M)
    assert len(estimates) == 1 and float(estimates[0][1].replace(",", "")) > 0
    assert re.search(r"^\s+4 worker\(s\) x 1 thread\(s\):", run.stdout, re.M)
    assert not (tmp_path / "outputs").exists() and not list(tmp_path.rglob("*.jsonl*"))


def test_plan_refuses_bad_arguments_as_a_run_does(models, test_docs, tmp_path):
    run = run_cli("plan", f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={test_docs}",
                  "inference.batch_size=0", cwd=tmp_path)
    assert_user_error(run, "inference.batch_size must be > 0", code=2)
    missing = run_cli("plan", f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={tmp_path}/nope",
                      cwd=tmp_path)
    assert_user_error(missing, "input folder not found", code=1)


def test_plan_of_tables_counts_the_files_not_rows_it_has_not_read(table_files):
    """A table's rows are known only once read: the plan counts the table files and their bytes."""
    from daskinfer import plan, sources
    from daskinfer.config import load_config

    cfg = load_config(["inference.model_path=unused", f"inference.input_data_dir={table_files['jsonl']}",
                       "inference.input_format=jsonl"])
    inputs = sources.open_source(cfg.inference, {}).profile(cfg.inference.max_document_bytes)
    lines = plan.lines({"inputs": inputs, "probe": None, "threads": 2, "start_s": 1.0, "finish_s": 0.5,
                        "estimates": []})
    size = table_files["jsonl"].stat().st_size
    assert lines[0] == f"inputs: 1 table file(s), their rows counted only as a run reads them, {size:,} bytes"
