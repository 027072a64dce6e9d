"""What a person looks at: report.html beside summary.json, and the dask dashboard while a
run scores, each opened in a real headless browser."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

from browser import chromium, coloured_share
from conftest import free_port, read_jsonl, run_cli
from misuse_fakes import slow_model


def test_report_html_renders_offline_and_agrees_with_the_summary(models, test_docs, tmp_path, on_client):
    first = tmp_path / "first" / "res.jsonl"
    common = [f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={test_docs}",
              "inference.labels_from=aclimdb", *on_client]
    assert run_cli(*common, f"inference.output_path={first}", cwd=tmp_path).returncode == 0
    out = tmp_path / "second" / "res.jsonl"
    run = run_cli(*common, f"inference.output_path={out}", f"inference.reference={first}", "inference.threshold=0.3",
                  cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    summary = json.loads((out.parent / "summary.json").read_text())
    records = read_jsonl(out)
    # drift against the reference: the same documents, another threshold moves the label shares
    positive = sum(r["sentiment"] == "positive" for r in records) / len(records)
    assert summary["drift"]["label_shares"]["positive"] == round(positive, 6)
    assert summary["drift"]["psi"] is not None and summary["drift"]["psi"] < 0.01  # same scores
    before = read_jsonl(first)
    assert summary["drift"]["reference_label_shares"]["positive"] == round(
        sum(r["sentiment"] == "positive" for r in before) / len(before), 6)
    # the reference named by its run's folder, as incremental_from takes one: the same drift
    by_folder = tmp_path / "third" / "res.jsonl"
    assert run_cli(*common, f"inference.output_path={by_folder}", f"inference.reference={first.parent}",
                   "inference.threshold=0.3", cwd=tmp_path).returncode == 0
    drift = json.loads((by_folder.parent / "summary.json").read_text())["drift"]
    assert {**drift, "reference": None} == {**summary["drift"], "reference": None}

    report = out.parent / "report.html"
    dom = chromium(report.as_uri(), "--dump-dom", profile=tmp_path / "profile")
    figures = dict(re.findall(r'<td id="([\w-]+)">([^<]*)</td>', dom))
    assert int(figures["documents"]) == summary["documents"] == 1600
    assert int(figures["errors"]) == summary["errors"] == 0
    assert int(figures["label-positive"]) == sum(r["sentiment"] == "positive" for r in records)
    assert float(figures["accuracy"]) == round(summary["evaluation"]["accuracy"], 4)
    shot = tmp_path / "report.png"
    chromium(report.as_uri(), f"--screenshot={shot}", "--window-size=900,2400", profile=tmp_path / "profile")
    assert coloured_share(shot) > 0.02  # the plots were drawn, with no network to fetch a script from


def test_the_dashboard_shows_while_a_run_scores(tmp_path, test_docs):
    model = slow_model(tmp_path / "slow")
    port = free_port()
    log = tmp_path / "run.log"
    with open(log, "w") as stderr:
        job = subprocess.Popen(
            [sys.executable, "-m", "daskinfer", f"inference.model_path={model}", f"inference.input_data_dir={test_docs}",
             f"inference.output_path={tmp_path / 'res.jsonl'}", "inference.batch_size=4", "cluster.n_workers=1",
             f"cluster.dashboard_address=127.0.0.1:{port}", f"cluster.performance_report={tmp_path / 'perf.html'}"],
            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline, link = time.monotonic() + 120, None
        while link is None and time.monotonic() < deadline and job.poll() is None:
            found = re.search(r"Dask dashboard: (\S+)", log.read_text())
            link = found.group(1) if found else None
            time.sleep(0.2)
        assert link == f"http://127.0.0.1:{port}/status", log.read_text()
        while not Path(f"{tmp_path / 'res.jsonl'}.partial").exists() and job.poll() is None:
            time.sleep(0.1)
        assert job.poll() is None, "the run ended before the dashboard was looked at"
        dom = chromium(link, "--dump-dom", profile=tmp_path / "profile")
        # without bokeh, dask serves a page saying "Dask needs bokeh>=3.1.0 for the dashboard"
        assert "needs bokeh" not in dom.lower() and "bokeh.min.js" in dom and "Workers" in dom
        shot = tmp_path / "dashboard.png"  # kept as the test's artifact (the plots arrive by websocket later)
        chromium(link, f"--screenshot={shot}", "--window-size=1200,900", profile=tmp_path / "profile")
        assert shot.stat().st_size > 10_000
    finally:
        assert job.wait(300) == 0, log.read_text()
    report = (tmp_path / "perf.html").read_text()
    assert "Dask Performance Report" in report and "<script" in report


def test_a_reference_that_goes_bad_after_its_first_line_costs_the_drift_not_the_results(tmp_path, caplog):
    """Its first line is checked before the run; a later one is read only once all is scored."""
    from daskinfer import pipeline

    reference = tmp_path / "earlier.jsonl"
    good = {"time": "2026-12-01T10:00:00+0000", "filepath": "/a.txt", "logit_prob": 0.9, "sentiment": "positive"}
    reference.write_bytes(json.dumps(good).encode() + b"\n\xff\xfe torn\n")
    assert pipeline._reference(str(reference), {}) is None
    assert f"inference.reference {reference}: JSONDecodeError" in caplog.text
    reference.write_bytes(json.dumps(good).encode() + b"\n")
    assert pipeline._reference(str(reference), {})["labels"] == {"positive": 1}


def test_an_errors_file_as_the_reference_is_refused_before_any_work(models, test_docs, tmp_path):
    errors = tmp_path / "errors.jsonl"  # its records have a filepath, and no score to compare with
    errors.write_text(json.dumps({"time": "2026-12-01T00:00:00+0000", "filepath": "/d/a.txt",
                                  "error": "ValueError: empty document"}) + "\n")
    run = run_cli(f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={test_docs}",
                  f"inference.reference={errors}", cwd=tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert "is not a JSONL results file" in run.stderr_lines[-1] and "Scoring" not in run.stderr
