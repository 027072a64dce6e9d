"""`daskinfer plan`: a dry run that counts, times a sample and estimates, writing nothing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from conftest import run_cli
from test_errors import assert_user_error


def test_plan_counts_the_inputs_times_the_model_and_writes_nothing(models, test_docs, tmp_path, on_client):
    docs = tmp_path / "docs"
    shutil.copytree(test_docs, docs)
    os.mkfifo(docs / "pipe.txt")
    (docs / "huge.txt").write_text("word " * 30_000)
    (docs / "empty.txt").write_bytes(b"")
    (docs / "0-bad.txt").write_bytes(b"caf\xe9 au lait")  # first in the listing: its thread's first chunk
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
    assert "would be errors: 1 (empty document)" in lines  # as the run's error entry says
    assert re.search(r"^model: loaded in [\d.]+ s on a worker, which then holds \d+ MiB$", run.stdout, re.M)
    sample = re.search(r"^sample: (\d+) documents on 2 thread\(s\) at once, ([\d,]+) docs/s a thread$", run.stdout, re.M)
    assert sample and int(sample.group(1)) > 500
    errors = re.search(r"^  of them errors: (\d+) \((.+)\)$", run.stdout, re.M)  # what only scoring finds
    assert errors and "not valid utf-8: 1" in errors.group(2).split(", "), run.stdout
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


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_plan_of_tables_counts_their_rows_and_estimates_from_a_sample_of_them(fmt, table_files, reviews_table,
                                                                             models, tmp_path, on_client):
    """Rows counted as a run reads them: a Parquet footer's count, a text file's records (a
    CSV field's own newlines are not rows), then the first rows scored as a run's would be."""
    rows, _ = reviews_table
    table = table_files[fmt]
    run = run_cli("plan", f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={table}",
                  f"inference.input_format={fmt}", *on_client, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == f"inputs: 1 table file(s), {len(rows):,} rows, {table.stat().st_size:,} bytes"
    # the load itself, not the wait for a load done before (the workers have the model already)
    load = re.search(r"^model: loaded in ([\d.]+) s on a worker", run.stdout, re.M)
    assert load and float(load.group(1)) >= 0.01, run.stdout
    sample = re.search(r"^sample: (\d+) documents on 2 thread\(s\) at once", run.stdout, re.M)
    assert sample and int(sample.group(1)) > 100
    estimates = re.findall(r"^\s+this cluster:\s+([\d,]+) docs/s, about ([\d.,]+) s$", run.stdout, re.M)
    assert len(estimates) == 1 and float(estimates[0][1].replace(",", "")) > 0
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_rows_of_big_and_many_tables_are_estimated_and_said_to_be(fmt, reviews_table, tmp_path):
    """Past 4 MiB a text table's rows are scaled from its head; past 32 text tables, from 32 of them."""
    import pandas as pd

    from daskinfer import table_sampling

    rows, _ = reviews_table
    big = pd.DataFrame(rows * 12)
    path = tmp_path / f"big.{fmt}"
    big.to_csv(path, index=False) if fmt == "csv" else big.to_json(path, orient="records", lines=True)
    assert path.stat().st_size > 5 * 2**20
    estimate, exact = table_sampling.estimate_rows([str(path)], None, fmt, {}, "utf-8")
    assert not exact and abs(estimate - len(big)) <= 0.05 * len(big), (estimate, len(big))
    small = [tmp_path / f"t{i:02}.{fmt}" for i in range(40)]
    for i, table in enumerate(small):
        part = pd.DataFrame(rows[: 10 + i])
        part.to_csv(table, index=False) if fmt == "csv" else part.to_json(table, orient="records", lines=True)
    estimate, exact = table_sampling.estimate_rows([str(p) for p in small], [p.stat().st_size for p in small], fmt, {},
                                           "utf-8")
    truth = sum(10 + i for i in range(40))
    assert not exact and abs(estimate - truth) <= 0.1 * truth, (estimate, truth)
    assert table_sampling.estimate_rows([str(p) for p in small[:32]], None, fmt, {}, "utf-8") == (
        sum(10 + i for i in range(32)), True)
    # Parquet footers hold the exact count: 40 files are all read
    footers = [tmp_path / f"t{i:02}.parquet" for i in range(40)]
    for i, table in enumerate(footers):
        pd.DataFrame(rows[: 10 + i]).to_parquet(table)
    assert table_sampling.estimate_rows([str(p) for p in footers], None, "parquet", {}, "utf-8") == (truth, True)


def test_plan_of_a_table_with_a_malformed_line_past_its_head_samples_the_rest(table_files, models, tmp_path,
                                                                              on_client):
    """The plan reads more of a table than the head a run checks first: a malformed line
    there is a row the run would file as an error entry, and the plan goes on."""
    lines = table_files["jsonl"].read_text("utf-8").split("\n")  # not splitlines: the texts hold U+2028
    lines[149] = '{"text": "cut short'
    table = tmp_path / "bad.jsonl"
    table.write_text("\n".join(lines), "utf-8")
    run = run_cli("plan", f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={table}",
                  "inference.input_format=jsonl", *on_client, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert re.search(r"^sample: (\d+) documents on 2 thread\(s\) at once", run.stdout, re.M), run.stdout


def test_the_start_up_a_plan_reports_is_the_process_age():
    """The plan's start-up figure is the time since its process started: never more than the
    process lived (psutil's create_time was up to a second late: Linux gives the boot time in
    whole seconds), never less than it waited."""
    script = "import time; time.sleep(1.0); from daskinfer import plan; print(plan._since_process_start())"
    started = time.monotonic()
    age = float(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout)
    lived = time.monotonic() - started
    assert 1.0 <= age <= lived, (age, lived)
