"""Incremental and repair runs (inference.incremental_from): a complete, ordered result of
the inputs as they are now, scoring only what is new or changed since a previous run.

Real parts: a real model, a real LocalCluster (whose workers are asked how many documents
their model was given), the real command line, moto's S3 server. Carried records must be
the previous run's bytes; scored ones must equal the model called in-process."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict

import pytest
from conftest import IMDB, read_jsonl, run_cli

TRAIN = sorted((IMDB / "train" / "pos").glob("*.txt")) + sorted((IMDB / "train" / "neg").glob("*.txt"))
TEST = sorted((IMDB / "test" / "pos").glob("*.txt")) + sorted((IMDB / "test" / "neg").glob("*.txt"))
ONE_WORKER = ("cluster.n_workers=1", "cluster.threads_per_worker=1", "cluster.dashboard_address=null")


def lines_by_key(path: Path) -> Dict[str, bytes]:
    return {json.loads(line)["filepath"]: line for line in path.read_bytes().splitlines(keepends=True)}


def run_api(client, model: Path, docs: Path, out: Path, *extra: str) -> dict:
    """A run through the Python API on client's cluster; its summary, and how many documents
    the workers' models were given during it (asked of the workers themselves)."""
    from daskinfer import load_config, predict, run

    def given() -> int:
        return sum(client.run(predict.documents_given, str(model)).values())

    before = given()
    cfg = load_config([f"inference.model_path={model}", f"inference.input_data_dir={docs}",
                       f"inference.output_path={out}", *extra])
    summary = run(cfg, client=client).summary
    return {**summary, "given_to_models": given() - before}


def break_bytes(path: Path) -> None:
    """Undecodable as UTF-8, same size: one byte replaced."""
    data = bytearray(path.read_bytes())
    data[10] = 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def corpus(tmp_path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    for source in TEST[:300]:
        shutil.copyfile(source, folder / source.name)
    return folder


def test_an_incremental_run_scores_only_what_changed_and_keeps_one_ordered_result(models, corpus, tmp_path, client):
    model, predict = models["keras"]
    first = run_api(client, model, corpus, tmp_path / "run1" / "res.jsonl")
    assert first["scored"] == 300 and first["carried"] == 0 and first["given_to_models"] == 300
    assert (tmp_path / "run1" / "ledger.parquet").is_file()

    names = sorted(p.name for p in corpus.iterdir())
    for source in TRAIN[:100]:  # 100 new
        shutil.copyfile(source, corpus / f"new_{source.name}")
    changed = names[0:10]
    for name, source in zip(changed, TRAIN[100:110]):  # 10 with new content
        (corpus / name).write_text(source.read_text("utf-8"), "utf-8")
    removed = names[20:25]
    for name in removed:
        (corpus / name).unlink()
    broken = names[30:33]
    for name in broken:
        break_bytes(corpus / name)

    second = run_api(client, model, corpus, tmp_path / "run2" / "res.jsonl",
                     f"inference.incremental_from={tmp_path / 'run1'}")
    current = sorted(str(p) for p in corpus.iterdir())
    results, errors = read_jsonl(tmp_path / "run2" / "res.jsonl"), read_jsonl(tmp_path / "run2" / "errors.jsonl")
    assert [r["filepath"] for r in results] == sorted(set(current) - {str(corpus / n) for n in broken})
    assert sorted(e["filepath"] for e in errors) == [str(corpus / n) for n in broken]
    assert all("not valid utf-8" in e["error"] for e in errors)

    old, new = lines_by_key(tmp_path / "run1" / "res.jsonl"), lines_by_key(tmp_path / "run2" / "res.jsonl")
    fresh = {str(corpus / n) for n in changed} | {p for p in current if Path(p).name.startswith("new_")}
    carried = [key for key in new if key not in fresh]
    assert len(carried) == 300 - 10 - 5 - 3
    assert all(new[key] == old[key] for key in carried)  # byte for byte
    scores = dict(zip(sorted(fresh), map(float, predict([Path(p).read_text("utf-8") for p in sorted(fresh)]))))
    for key in fresh:
        assert json.loads(new[key])["logit_prob"] == pytest.approx(scores[key], abs=1e-5)

    assert (second["documents"], second["carried"], second["scored"], second["removed"], second["retried"]) == (
        395, 282, 113, 5, 0)
    assert second["given_to_models"] == 110  # the new and changed; undecodable ones never reach it

    # The broken files put back as they were, same size, and their modification time kept:
    # unchanged for the ledger, a failure that passed. Without retry_errors their entries stay.
    for name in broken:
        stat = (corpus / name).stat()
        shutil.copyfile(IMDB / "test" / ("pos" if (IMDB / "test" / "pos" / name).exists() else "neg") / name,
                        corpus / name)
        os.utime(corpus / name, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    third = run_api(client, model, corpus, tmp_path / "run3" / "res.jsonl",
                    f"inference.incremental_from={tmp_path / 'run2' / 'res.jsonl'}")
    assert (third["carried"], third["scored"], third["given_to_models"]) == (395, 0, 0)
    for name in ("res.jsonl", "errors.jsonl"):
        assert (tmp_path / "run3" / name).read_bytes() == (tmp_path / "run2" / name).read_bytes()

    fourth = run_api(client, model, corpus, tmp_path / "run4" / "res.jsonl",
                     f"inference.incremental_from={tmp_path / 'run3'}", "inference.retry_errors=true")
    assert (fourth["carried"], fourth["scored"], fourth["retried"], fourth["given_to_models"]) == (392, 3, 3, 3)
    assert fourth["errors"] == 0 and (tmp_path / "run4" / "errors.jsonl").read_bytes() == b""
    assert [r["filepath"] for r in read_jsonl(tmp_path / "run4" / "res.jsonl")] == current


def test_a_new_file_whose_name_is_not_utf8_joins_the_carried_records_in_parquet(models, corpus, tmp_path, client):
    """Parquet strings are UTF-8: such a name is written as Python shows its bytes, and the
    worker's record still finds its place among the carried ones."""
    import pyarrow.parquet

    model, predict = models["keras"]
    run_api(client, model, corpus, tmp_path / "run1" / "res.jsonl")
    text = TRAIN[0].read_text("utf-8")
    fd = os.open(os.fsencode(str(corpus)) + b"/caf\xe9.txt", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, text.encode("utf-8"))
    os.close(fd)
    out = tmp_path / "run2" / "res.parquet"
    second = run_api(client, model, corpus, out, "inference.output_format=parquet",
                     f"inference.incremental_from={tmp_path / 'run1'}")
    assert (second["scored"], second["carried"], second["given_to_models"]) == (1, 300, 1)
    rows = {r["filepath"]: r for r in pyarrow.parquet.read_table(out).to_pylist()}
    before = {r["filepath"]: r for r in read_jsonl(tmp_path / "run1" / "res.jsonl")}
    odd = f"{corpus}/caf\\xe9.txt"
    assert set(rows) == set(before) | {odd}
    assert all(rows[key]["logit_prob"] == record["logit_prob"] for key, record in before.items())
    assert abs(rows[odd]["logit_prob"] - float(predict([text])[0])) <= 1e-5


def test_nothing_changed_scores_nothing_and_starts_no_cluster(models, corpus, tmp_path, on_client):
    model = models["keras"][0]
    args = (f"inference.model_path={model}", f"inference.input_data_dir={corpus}", *ONE_WORKER)
    first = run_cli(*args, f"inference.output_path={tmp_path / 'a' / 'res.jsonl'}", *on_client, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = run_cli(*args, f"inference.output_path={tmp_path / 'b' / 'res.jsonl'}",
                    f"inference.incremental_from={tmp_path / 'a' / 'res.jsonl'}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "b" / "res.jsonl").read_bytes() == (tmp_path / "a" / "res.jsonl").read_bytes()
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert (summary["carried"], summary["scored"], summary["removed"]) == (300, 0, 0)
    assert "no cluster needed" in again.stderr and "LocalCluster" not in again.stderr
    assert "300 documents carried unchanged" in again.stderr

    since = f"inference.incremental_from={tmp_path / 'b' / 'res.jsonl'}"
    plan = run_cli("plan", *args, since, cwd=tmp_path)  # the plan says so too, and starts none either
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.splitlines()[-2:] == [
        "incremental: 0 to score (new or changed), 300 carried unchanged, 0 removed since the previous run",
        "nothing new or changed to score: a run would copy every line from the previous run, with no cluster"]
    assert "LocalCluster" not in plan.stderr

    shutil.copyfile(TEST[300], corpus / TEST[300].name)
    plan = run_cli("plan", *args, since, *on_client, cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    assert "incremental: 1 to score (new or changed), 300 carried unchanged, 0 removed since the previous run" \
        in plan.stdout.splitlines()
    estimate = re.search(r"^\s+this cluster:\s+[\d,]+ docs/s, about ([\d.,]+) s$", plan.stdout, re.M)
    assert estimate, plan.stdout


def test_another_model_is_refused_in_one_line_unless_rescoring(models, corpus, tmp_path, on_client):
    args = (f"inference.input_data_dir={corpus}", *on_client)
    first = run_cli(*args, f"inference.model_path={models['keras'][0]}",
                    f"inference.output_path={tmp_path / 'a' / 'res.jsonl'}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    other = models["tf-keras2-savedmodel"][0]
    refused = run_cli(*args, f"inference.model_path={other}", f"inference.output_path={tmp_path / 'b' / 'res.jsonl'}",
                      f"inference.incremental_from={tmp_path / 'a'}", cwd=tmp_path)
    assert refused.returncode == 2
    assert len(refused.stderr_lines) == 1 and "another model" in refused.stderr_lines[0], refused.stderr
    assert "incremental_rescore=true" in refused.stderr_lines[0]
    assert not (tmp_path / "b" / "res.jsonl").exists()

    threshold = run_cli(*args, f"inference.model_path={models['keras'][0]}", "inference.threshold=0.7",
                        f"inference.output_path={tmp_path / 'c' / 'res.jsonl'}",
                        f"inference.incremental_from={tmp_path / 'a'}", cwd=tmp_path)
    assert threshold.returncode == 2 and "inference.threshold=0.5 now 0.7" in threshold.stderr_lines[-1]

    rescored = run_cli(*args, f"inference.model_path={other}", f"inference.output_path={tmp_path / 'b' / 'res.jsonl'}",
                       f"inference.incremental_from={tmp_path / 'a'}", "inference.incremental_rescore=true",
                       cwd=tmp_path)
    assert rescored.returncode == 0, rescored.stderr
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert (summary["carried"], summary["scored"]) == (0, 300)
    scores = models["tf-keras2-savedmodel"][1]([p.read_text("utf-8") for p in sorted(corpus.iterdir())])
    assert [r["logit_prob"] for r in read_jsonl(tmp_path / "b" / "res.jsonl")] == pytest.approx(
        list(map(float, scores)), abs=1e-5)


def test_bad_incremental_settings_are_one_line_errors(models, corpus, tmp_path):
    args = (f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={corpus}", *ONE_WORKER)
    unfinished = tmp_path / "killed"  # what a run killed mid-way leaves
    unfinished.mkdir()
    (unfinished / "res.jsonl.partial").write_text("")
    (unfinished / "res.jsonl.lock").write_text("{}")
    for extra, expected in (
        (("inference.retry_errors=true",), "inference.retry_errors=true needs inference.incremental_from"),
        ((f"inference.incremental_from={tmp_path / 'nowhere'}",), "inference.incremental_from not found"),
        ((f"inference.incremental_from={corpus}",), "holds no summary.json"),
        ((f"inference.incremental_from={unfinished}",), "is a run that did not finish (res.jsonl.partial): finish it "
                                                         "first with inference.resume=true"),
        ((f"inference.incremental_from={unfinished / 'res.jsonl'}",), "is a run that did not finish"),
    ):
        run = run_cli(*args, *extra, cwd=tmp_path)
        assert run.returncode != 0 and len(run.stderr_lines) == 1, run.stderr
        assert expected in run.stderr_lines[0], run.stderr


def test_a_previous_run_damaged_since_is_one_line_not_a_traceback(models, corpus, tmp_path, client):
    args = (f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={corpus}", *ONE_WORKER)
    run_api(client, models["keras"][0], corpus, tmp_path / "run1" / "res.jsonl")
    shutil.copyfile(TRAIN[0], corpus / "new.txt")
    cut, torn = tmp_path / "cut", tmp_path / "torn"
    shutil.copytree(tmp_path / "run1", cut)
    (cut / "res.jsonl").write_bytes((tmp_path / "run1" / "res.jsonl").read_bytes()[:-30])
    shutil.copytree(tmp_path / "run1", torn)
    (torn / "ledger.parquet").write_bytes(b"not parquet")
    damaged = [(cut, "end in a line cut short"), (torn, "ledger.parquet cannot be read")]
    pages = tmp_path / "pages"  # its footer intact, its pages not
    shutil.copytree(tmp_path / "run1", pages)
    data = bytearray((pages / "ledger.parquet").read_bytes())
    data[200:len(data) // 2] = bytes(b ^ 0x5A for b in data[200:len(data) // 2])
    (pages / "ledger.parquet").write_bytes(bytes(data))
    damaged.append((pages, "ledger.parquet cannot be read"))
    shutil.copytree(tmp_path / "run1", tmp_path / "no-errors")  # deleted: failed late, after scoring
    (tmp_path / "no-errors" / "errors.jsonl").unlink()
    damaged.append((tmp_path / "no-errors", "lacks its errors file errors.jsonl"))
    summary = json.loads((tmp_path / "run1" / "summary.json").read_text())
    for name, edited in (("empty", {}), ("list", []), ("no-settings", {**summary, "settings": None})):
        shutil.copytree(tmp_path / "run1", tmp_path / name)
        (tmp_path / name / "summary.json").write_text(json.dumps(edited))
        damaged.append((tmp_path / name, "summary.json is not a daskinfer summary"))
    for previous, expected in damaged:
        run = run_cli(*args, f"inference.incremental_from={previous}", f"inference.output_path={previous}-again/r.jsonl",
                      cwd=tmp_path)
        assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr
        assert run.stderr_lines[-1].startswith("daskinfer: error: ") and expected in run.stderr_lines[-1], run.stderr
        assert not Path(f"{previous}-again/r.jsonl").exists()


def test_incremental_on_s3_uses_etags_and_writes_to_s3(models, tmp_path, s3_server):
    model, predict = models["keras"]
    s3 = s3_server.client()
    s3.create_bucket(Bucket="nightly")
    for source in TEST[:120]:
        s3.upload_file(str(source), "nightly", f"in/{source.name}")
    args = (f"inference.model_path={model}", "inference.input_data_dir=s3://nightly/in/", *ONE_WORKER)
    first = run_cli(*args, "inference.output_path=s3://nightly/runs/1/res.jsonl", cwd=tmp_path, env=s3_server.env)
    assert first.returncode == 0, first.stderr

    s3.put_object(Bucket="nightly", Key=f"in/{TEST[0].name}", Body=TRAIN[0].read_bytes())  # changed
    s3.delete_object(Bucket="nightly", Key=f"in/{TEST[1].name}")
    for source in TRAIN[1:21]:
        s3.upload_file(str(source), "nightly", f"in/new_{source.name}")
    second = run_cli(*args, "inference.output_path=s3://nightly/runs/2/res.jsonl",
                     "inference.incremental_from=s3://nightly/runs/1/", cwd=tmp_path, env=s3_server.env)
    assert second.returncode == 0, second.stderr
    summary = json.loads(s3.get_object(Bucket="nightly", Key="runs/2/summary.json")["Body"].read())
    assert (summary["carried"], summary["scored"], summary["removed"]) == (118, 21, 1)
    body = s3.get_object(Bucket="nightly", Key="runs/2/res.jsonl")["Body"].read()
    records = [json.loads(line) for line in body.splitlines()]
    expected = sorted([f"s3://nightly/in/{p.name}" for p in [TEST[0], *TEST[2:120]]]
                      + [f"s3://nightly/in/new_{p.name}" for p in TRAIN[1:21]])
    assert [r["filepath"] for r in records] == expected
    changed = next(r for r in records if r["filepath"].endswith(TEST[0].name))
    assert changed["logit_prob"] == pytest.approx(float(predict([TRAIN[0].read_text("utf-8")])[0]), abs=1e-5)


def test_a_table_that_changed_is_scored_again_whole(models, table_files, tmp_path, on_client):
    folder = tmp_path / "tables"
    folder.mkdir()
    shutil.copyfile(table_files["jsonl"], folder / "a.jsonl")
    rows = [row + "\n" for row in table_files["jsonl"].read_text("utf-8").split("\n") if row]
    (folder / "b.jsonl").write_text("".join(rows[:50]), "utf-8")
    args = (f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={folder}",
            "inference.input_format=jsonl", *on_client)
    first = run_cli(*args, f"inference.output_path={tmp_path / '1' / 'res.jsonl'}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (folder / "b.jsonl").write_text("".join(rows[:60]), "utf-8")
    second = run_cli(*args, f"inference.output_path={tmp_path / '2' / 'res.jsonl'}",
                     f"inference.incremental_from={tmp_path / '1'}", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    summary = json.loads((tmp_path / "2" / "summary.json").read_text())
    n_a = len(rows)
    assert (summary["carried"], summary["scored"]) == (n_a, 60)
    before, after = (tmp_path / "1" / "res.jsonl").read_bytes(), (tmp_path / "2" / "res.jsonl").read_bytes()
    a_lines = [line for line in before.splitlines(keepends=True) if b"a.jsonl#" in line]
    assert after.startswith(b"".join(a_lines))  # table a: the previous bytes, in order
    b_keys = [r["filepath"] for r in read_jsonl(tmp_path / "2" / "res.jsonl") if "b.jsonl#" in r["filepath"]]
    b_errors = [e["filepath"] for e in read_jsonl(tmp_path / "2" / "errors.jsonl") if "b.jsonl#" in e["filepath"]]
    assert sorted(b_keys + b_errors, key=lambda k: int(k.rpartition("#")[2])) == [
        f"{folder / 'b.jsonl'}#{i}" for i in range(60)]


def test_a_manifest_run_is_incremental_over_its_entries(models, corpus, tmp_path, on_client):
    paths = sorted(str(p) for p in corpus.iterdir())
    manifest = tmp_path / "manifest.txt"
    manifest.write_text("\n".join(paths[:200]) + "\n")
    args = (f"inference.model_path={models['keras'][0]}", f"inference.input_manifest={manifest}", *on_client)
    first = run_cli(*args, f"inference.output_path={tmp_path / '1' / 'res.jsonl'}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    manifest.write_text("\n".join(paths[10:300]) + "\n")  # 10 gone, 100 added at the end
    second = run_cli(*args, f"inference.output_path={tmp_path / '2' / 'res.jsonl'}",
                     f"inference.incremental_from={tmp_path / '1'}", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    summary = json.loads((tmp_path / "2" / "summary.json").read_text())
    assert (summary["carried"], summary["scored"], summary["removed"]) == (190, 100, 10)
    assert [r["filepath"] for r in read_jsonl(tmp_path / "2" / "res.jsonl")] == paths[10:300]


def test_a_manifest_entry_missing_then_is_read_again_by_the_next_run(models, corpus, tmp_path, on_client):
    """A manifest may name documents before they exist; its entries carry no size that would
    tell one appeared since, so a "not found" entry is never carried: the next run reads it again."""
    paths = sorted(str(p) for p in corpus.iterdir())[:20]
    later, never = str(corpus / "zz-later.txt"), str(corpus / "zz-never.txt")
    manifest = tmp_path / "manifest.txt"
    manifest.write_text("\n".join([*paths, later, never]) + "\n")
    args = (f"inference.model_path={models['keras'][0]}", f"inference.input_manifest={manifest}",
            "inference.error_budget=0.5", *on_client)
    first = run_cli(*args, f"inference.output_path={tmp_path / '1' / 'res.jsonl'}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert [e["filepath"] for e in read_jsonl(tmp_path / "1" / "errors.jsonl")] == [later, never]
    shutil.copyfile(TRAIN[0], later)
    second = run_cli(*args, f"inference.output_path={tmp_path / '2' / 'res.jsonl'}",
                     f"inference.incremental_from={tmp_path / '1'}", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert [r["filepath"] for r in read_jsonl(tmp_path / "2" / "res.jsonl")] == [*paths, later]
    errors = read_jsonl(tmp_path / "2" / "errors.jsonl")
    assert [e["filepath"] for e in errors] == [never] and errors[0]["error"].startswith("FileNotFoundError")
    summary = json.loads((tmp_path / "2" / "summary.json").read_text())
    assert (summary["carried"], summary["scored"]) == (20, 2), summary


def test_an_incremental_run_killed_mid_way_resumes_with_every_document_once(tmp_path):
    from misuse_fakes import slow_model

    model = slow_model(tmp_path / "slow")
    docs = tmp_path / "docs"
    docs.mkdir()
    for source in TEST[:60]:
        shutil.copyfile(source, docs / source.name)
    args = [f"inference.model_path={model}", f"inference.input_data_dir={docs}", "inference.batch_size=4",
            "inference.partition_size=20", *ONE_WORKER]
    first = run_cli(*args, f"inference.output_path={tmp_path / '1' / 'res.jsonl'}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    for source in TEST[60:300]:
        shutil.copyfile(source, docs / source.name)

    out = tmp_path / "2" / "res.jsonl"
    incremental = [*args, f"inference.output_path={out}", f"inference.incremental_from={tmp_path / '1'}"]
    killed_after_lines(incremental, out, 100, tmp_path)

    resumed = run_cli(*incremental, "inference.resume=true", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    keys = [r["filepath"] for r in read_jsonl(out)]
    assert keys == sorted(str(p) for p in docs.iterdir())
    old = lines_by_key(tmp_path / "1" / "res.jsonl")
    new = lines_by_key(out)
    assert all(new[key] == line for key, line in old.items())
    summary = json.loads((tmp_path / "2" / "summary.json").read_text())
    assert summary["documents"] == summary["predicted"] + summary["errors"] == 300, summary
    assert summary["carried"] == 60, summary  # those carried before the kill too (they are skipped as well)
    assert "Incremental run: 60 documents carried unchanged" in resumed.stderr


def test_an_incremental_run_of_tables_killed_mid_way_resumes_with_every_row_once_and_counted(tmp_path):
    """The carried tables' lines written before the kill are skipped on the resume, and counted so."""
    from misuse_fakes import slow_model

    model = slow_model(tmp_path / "slow")
    folder = tmp_path / "tables"
    folder.mkdir()

    def write(n: int, reviews) -> None:
        (folder / f"t{n}.jsonl").write_text("".join(json.dumps({"text": p.read_text("utf-8")}) + "\n" for p in reviews))

    for n in range(10):
        write(n, TEST[30 * n:30 * n + 30])
    args = [f"inference.model_path={model}", f"inference.input_data_dir={folder}", "inference.input_format=jsonl",
            "inference.batch_size=4", "inference.partition_size=20", *ONE_WORKER]
    first = run_cli(*args, f"inference.output_path={tmp_path / '1' / 'res.jsonl'}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    for n in range(5, 10):  # changed: scored again, after the five carried tables
        write(n, TEST[300 + 30 * n:330 + 30 * n])
    out = tmp_path / "2" / "res.jsonl"
    incremental = [*args, f"inference.output_path={out}", f"inference.incremental_from={tmp_path / '1'}"]
    killed_after_lines(incremental, out, 170, tmp_path)

    resumed = run_cli(*incremental, "inference.resume=true", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert [r["filepath"] for r in read_jsonl(out)] == [f"{folder / f't{n}.jsonl'}#{i}" for n in range(10)
                                                        for i in range(30)]
    summary = json.loads((tmp_path / "2" / "summary.json").read_text())
    assert summary["documents"] == summary["predicted"] + summary["errors"] == 300, summary
    assert summary["skipped"] >= 170 and summary["skipped"] + summary["scored"] + summary["carried"] == 300, summary


def killed_after_lines(args, out: Path, lines: int, cwd: Path) -> None:
    """Start a run and kill it, workers and all, once its output holds lines lines."""
    job = subprocess.Popen([sys.executable, "-m", "daskinfer", *args], cwd=cwd, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    partial = Path(f"{out}.partial")
    deadline = time.monotonic() + 180
    try:
        while not (partial.exists() and partial.read_bytes().count(b"\n") >= lines):
            assert job.poll() is None, job.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the incremental run wrote too little"
            time.sleep(0.05)
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    assert not out.exists()


def test_errors_that_may_pass_are_marked_transient():
    from daskinfer.errors import may_pass

    assert may_pass(TimeoutError("read timed out")) and may_pass(ConnectionResetError())
    assert may_pass(OSError(16, "SlowDown: please reduce your request rate"))
    assert not may_pass(ValueError("not valid utf-8: invalid start byte at byte 10"))
    assert not may_pass(FileNotFoundError(2, "No such file"))
