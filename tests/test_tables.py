"""Table inputs (JSONL, CSV, Parquet), manifests and Parquet output, locally and on moto's S3."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import List

import pytest
from conftest import NULL_ROWS, read_jsonl, run_cli
from test_classes import assert_evaluation, expected_evaluation
from test_errors import assert_user_error

import daskinfer
from daskinfer import ledger

FORMATS = ("jsonl", "csv", "parquet")


def assert_rows(records: List[dict], errors: List[dict], table_uri: str, reviews_table) -> None:
    """Every row once, in row order, with the model's own score and the row's id."""
    rows, scores = reviews_table
    assert [r["filepath"] for r in records] == [f"{table_uri}#{i}" for i in range(len(rows)) if i not in NULL_ROWS]
    for r in records:
        row = rows[int(r["filepath"].rsplit("#", 1)[1])]
        assert set(r) == {"time", "filepath", "logit_prob", "sentiment", "id"}
        assert r["id"] == row["id"]
        assert abs(r["logit_prob"] - scores[row["text"]]) <= 1e-5, r["filepath"]
    assert [(e["filepath"], e["error"]) for e in errors] == [
        (f"{table_uri}#{i}", "ValueError: null text in column 'text'") for i in NULL_ROWS
    ]
    accuracy = sum((r["sentiment"] == "positive") == bool(rows[int(r["filepath"].rsplit("#")[1])]["label"])
                   for r in records) / len(records)
    assert accuracy >= 0.7


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_ids_and_texts_come_through_as_written(fmt, client, models, tmp_path):
    """An integer id column with a gap stays integers (pandas would make them floats), a
    review that reads "NA" or "null" is a review, not a missing text, and the file is read in
    inference.encoding."""
    import pandas as pd

    ids = [1, None, 12345678901234567, 7]  # above 2**53: a float would change it
    texts = ["a fine, warm film in a café", "NA", "null", "dull and far too long"]
    table = tmp_path / f"t.{fmt}"
    frame = pd.DataFrame({"id": pd.array(ids, dtype="Int64"), "text": texts})
    written = frame.to_csv(index=False) if fmt == "csv" else frame.to_json(orient="records", lines=True, force_ascii=False)
    table.write_bytes(written.encode("latin-1"))
    out = tmp_path / "res.jsonl"
    daskinfer.run(daskinfer.load_config([f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={table}",
                                         f"inference.input_format={fmt}", "inference.id_column=id",
                                         "inference.encoding=latin-1", f"inference.output_path={out}"]), client=client)
    records = read_jsonl(out)
    assert [r["id"] for r in records] == ids and [type(r["id"]) for r in records if r["id"]] == [int] * 3
    scores = models["keras"][1](texts)
    assert all(abs(r["logit_prob"] - float(score)) <= 1e-5 for r, score in zip(records, scores))
    # read as UTF-8, the default: the row that is not valid UTF-8 is an error entry that says
    # which key names the encoding, the others are scored
    daskinfer.run(daskinfer.load_config([f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={table}",
                                         f"inference.input_format={fmt}", "inference.error_budget=0.5",
                                         f"inference.output_path={tmp_path}/utf8/res.jsonl"]), client=client)
    assert [r["filepath"] for r in read_jsonl(tmp_path / "utf8" / "res.jsonl")] == [f"{table}#{i}" for i in (1, 2, 3)]
    assert [(e["filepath"], e["error"]) for e in read_jsonl(tmp_path / "utf8" / "errors.jsonl")] == [
        (f"{table}#0", "ValueError: not valid utf-8 in column 'text': byte 0xe9 at character 26 "
                       "(inference.encoding names the file's text encoding)")]


def test_csv_texts_and_ids_are_read_as_written(client, models, tmp_path):
    """A CSV's texts are scored as written, where pandas would type a column of numbers as
    numbers for the whole file ("1.50" scored as "1.5"); its ids come through as written,
    a number only where JSON writes it the same way, so "007" keeps its zeros."""
    texts = ["10", "1.50", "0123", "7", "1"]
    ids = ["007", "1.50", "2", "0.5", ""]
    table = tmp_path / "t.csv"
    table.write_text("id,text\n" + "".join(f"{i},{t}\n" for i, t in zip(ids, texts)))
    out = tmp_path / "res.jsonl"
    daskinfer.run(daskinfer.load_config([f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={table}",
                                         "inference.input_format=csv", "inference.id_column=id",
                                         f"inference.output_path={out}"]), client=client)
    records = read_jsonl(out)
    assert [r["id"] for r in records] == ["007", "1.50", 2, 0.5, None]
    scores, typed = models["keras"][1](texts), models["keras"][1]([str(float(t)) for t in texts])
    assert [abs(r["logit_prob"] - float(s)) <= 1e-5 for r, s in zip(records, scores)] == [True] * len(texts)
    assert max(abs(float(a) - float(b)) for a, b in zip(scores, typed)) > 1e-4  # else the texts cannot tell


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_utf16_table_is_read_whole_in_its_encoding(fmt, client, models, test_docs, tmp_path):
    """UTF-16, as Windows PowerShell writes text: a newline is two bytes there, so a JSON-lines
    file cannot be cut into blocks at the byte 0x0a before it is decoded."""
    import pandas as pd

    texts = [p.read_text("utf-8") for p in sorted(test_docs.glob("*.txt"))[:120]]
    frame = pd.DataFrame({"id": range(len(texts)), "text": texts})
    table = tmp_path / f"t.{fmt}"
    written = frame.to_csv(index=False) if fmt == "csv" else frame.to_json(orient="records", lines=True, force_ascii=False)
    table.write_bytes(written.encode("utf-16"))
    assert table.stat().st_size > 2 * 65536  # more than one block of partition_bytes
    out = tmp_path / "res.jsonl"
    daskinfer.run(daskinfer.load_config([f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={table}",
                                         f"inference.input_format={fmt}", "inference.id_column=id",
                                         "inference.encoding=utf-16", "inference.partition_bytes=65536",
                                         f"inference.output_path={out}"]), client=client)
    records = read_jsonl(out)
    assert [(r["filepath"], r["id"]) for r in records] == [(f"{table}#{i}", i) for i in range(len(texts))]
    scores = models["keras"][1](texts)
    assert [abs(r["logit_prob"] - float(s)) <= 1e-5 for r, s in zip(records, scores)] == [True] * len(texts)


@pytest.mark.parametrize("output", ["jsonl", "parquet"])
def test_parquet_integer_ids_with_a_gap_stay_exact_integers(output, client, models, tmp_path):
    """A Parquet int64 column with a null, as pyarrow, Spark or polars write it (no pandas
    metadata): pandas would read it as floats, and 2**53 + 1 as 2**53."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids, texts = [101, None, 2**53 + 1], ["a fine, warm film", "dull and far too long", "a good one"]
    table = tmp_path / "t.parquet"
    pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "text": texts}), table)
    out = tmp_path / f"res.{output}"
    daskinfer.run(daskinfer.load_config([f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={table}",
                                         "inference.input_format=parquet", "inference.id_column=id",
                                         f"inference.output_format={output}", f"inference.output_path={out}"]), client=client)
    found = [r["id"] for r in read_jsonl(out)] if output == "jsonl" else pq.read_table(out).column("id").to_pylist()
    assert found == ids and [type(i) for i in found if i is not None] == [int, int]
    scores = models["keras"][1](texts)
    records = read_jsonl(out) if output == "jsonl" else pd.read_parquet(out).to_dict("records")
    assert [abs(r["logit_prob"] - float(s)) <= 1e-5 for r, s in zip(records, scores)] == [True] * 3


@pytest.mark.parametrize("fmt", FORMATS)
def test_tables_on_the_command_line(fmt, models, table_files, reviews_table, tmp_path, on_client):
    out = tmp_path / "res.jsonl"
    run = run_cli(
        f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={table_files[fmt]}",
        f"inference.input_format={fmt}", "inference.id_column=id", f"inference.output_path={out}", *on_client,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert_rows(read_jsonl(out), read_jsonl(tmp_path / "errors.jsonl"), str(table_files[fmt]), reviews_table)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["documents"], summary["predicted"], summary["errors"]) == (1603, 1600, 3)


@pytest.mark.parametrize("fmt", FORMATS)
def test_records_bag_scores_a_table(fmt, client, models, table_files, reviews_table):
    """The notebook API takes tables too: every row once, numbered as the command line does,
    and a DataFrame of them."""
    cfg = daskinfer.load_config([
        f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={table_files[fmt]}",
        f"inference.input_format={fmt}", "inference.id_column=id", "inference.partition_bytes=400000",
    ])
    bag = daskinfer.records_bag(cfg, n_threads=2)
    blocks = -(-table_files[fmt].stat().st_size // 400_000)  # of whole lines, for JSON lines
    assert bag.npartitions == {"parquet": 5, "jsonl": blocks, "csv": 1}[fmt] > 0  # row groups; blocks; a whole CSV
    records = bag.compute()
    rows, _ = reviews_table
    null_rows = [{"filepath": f"{table_files[fmt]}#{i}", "error": "ValueError: null text in column 'text'"}
                 for i in NULL_ROWS]
    assert_rows(records, null_rows, str(table_files[fmt]), reviews_table)
    assert len(records) == len(rows) - len(NULL_ROWS)
    frame = bag.to_dataframe().compute()
    assert frame["filepath"].tolist() == [r["filepath"] for r in records]


@pytest.fixture(scope="module")
def s3_tables(s3_server, table_files):
    client = s3_server.client()
    client.create_bucket(Bucket="tables")
    for fmt, path in table_files.items():
        client.upload_file(str(path), "tables", f"reviews/{fmt}/{path.name}")
    return s3_server


def s3_options(s3) -> List[str]:
    return [f"storage.options.endpoint_url={s3.endpoint}", f"storage.options.key={s3.key}",
            f"storage.options.secret={s3.secret}"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_tables_on_s3(fmt, client, models, s3_tables, reviews_table, tmp_path):
    """A folder of tables on S3, matched by the format's default pattern."""
    cfg = daskinfer.load_config([
        f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir=s3://tables/reviews/{fmt}/",
        f"inference.input_format={fmt}", "inference.id_column=id", f"inference.output_path={tmp_path / 'res.jsonl'}",
        *s3_options(s3_tables),
    ])
    result = daskinfer.run(cfg, client=client)
    errors = read_jsonl(tmp_path / "errors.jsonl")
    assert_rows(read_jsonl(result.output_uri), errors, f"s3://tables/reviews/{fmt}/reviews.{fmt}", reviews_table)


def test_evaluation_against_a_label_column(client, models, table_files, reviews_table, tmp_path):
    cfg = daskinfer.load_config([
        f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={table_files['parquet']}",
        "inference.input_format=parquet", "inference.labels_from=label", f"inference.output_path={tmp_path / 'r.jsonl'}",
    ])
    result = daskinfer.run(cfg, client=client)
    rows, _ = reviews_table
    records = read_jsonl(result.output_uri)
    true = [["negative", "positive"][rows[int(r["filepath"].rsplit("#")[1])]["label"]] for r in records]
    expected = expected_evaluation(true, [r["sentiment"] for r in records], ["negative", "positive"])
    assert_evaluation(result.summary["evaluation"], expected, unlabeled=0)


def test_parquet_output_equals_the_jsonl_output(client, models, table_files, tmp_path):
    common = [f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={table_files['csv']}",
              "inference.input_format=csv", "inference.id_column=id", "inference.all_scores=true"]
    as_jsonl = daskinfer.run(daskinfer.load_config([*common, f"inference.output_path={tmp_path}/j/res.jsonl"]), client=client)
    as_parquet = daskinfer.run(daskinfer.load_config([
        *common, "inference.output_format=parquet", f"inference.output_path={tmp_path}/p/res.parquet",
    ]), client=client)
    import pyarrow.parquet as pq

    expected = read_jsonl(as_jsonl.output_uri)
    found = pq.read_table(as_parquet.output_uri).to_pylist()
    assert [r.pop("time")[:10] for r in found] == [r.pop("time")[:10] for r in expected]  # two runs: times differ
    assert found == expected
    assert pq.ParquetFile(as_parquet.output_uri).metadata.num_row_groups > 1  # written as it streamed
    assert as_parquet.summary["predicted"] == 1600


def test_table_run_resumes_after_a_crash(client, models, table_files, reviews_table, tmp_path):
    """A run cut short (its output ends in a torn line) resumes without scoring a row twice."""
    args = [f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={table_files['jsonl']}",
            "inference.input_format=jsonl", "inference.id_column=id"]
    full = daskinfer.run(daskinfer.load_config([*args, f"inference.output_path={tmp_path}/full/res.jsonl"]), client=client)
    lines = Path(full.output_uri).read_text("utf-8").splitlines(keepends=True)
    out = tmp_path / "resumed" / "res.jsonl"
    out.parent.mkdir()
    Path(f"{out}.partial").write_text("".join(lines[:700]) + lines[700][:40], "utf-8")
    resumed = daskinfer.run(daskinfer.load_config([*args, f"inference.output_path={out}", "inference.resume=true"]),
                            client=client)
    assert resumed.summary["skipped"] == 700
    errors = read_jsonl(out.parent / "errors.jsonl")
    assert_rows(read_jsonl(out), errors, str(table_files["jsonl"]), reviews_table)


def test_missing_text_column_is_one_clear_line(models, table_files, tmp_path):
    run = run_cli(
        f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={table_files['parquet']}",
        "inference.input_format=parquet", "inference.text_column=review", cwd=tmp_path,
    )
    assert_user_error(run, "has no column 'review' (inference.text_column); its columns: 'text', 'id', 'label'", code=2)
    assert not list(tmp_path.rglob("*.jsonl*"))


def test_a_csv_header_naming_the_text_column_twice_is_one_clear_line(models, reviews_table, tmp_path):
    """pandas would read the first `text` and rename the second: which one the user meant is unknown."""
    import pandas as pd

    rows, _ = reviews_table
    frame = pd.DataFrame(rows[:20])
    table = tmp_path / "twice.csv"
    frame[["id", "text", "text", "label"]].to_csv(table, index=False)
    run = run_cli(f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={table}",
                  "inference.input_format=csv", cwd=tmp_path)
    assert_user_error(run, "names the column 'text' more than once in its header", code=2)
    assert not list(tmp_path.rglob("*.jsonl*"))


@pytest.mark.parametrize("fmt,name,kind", [("csv", "reviews.csv.gz", "gzip"), ("jsonl", "reviews.jsonl", "gzip"),
                                           ("csv", "reviews.csv", "bz2")])
def test_a_compressed_table_is_one_clear_line(models, reviews_table, tmp_path, fmt, name, kind):
    """Compressed, whatever the name says: read as text it is noise, and its rows cannot be cut
    apart. A header that starts as bzip2's magic does ("BZh") is still a table."""
    import pandas as pd

    rows, _ = reviews_table
    table = tmp_path / name
    frame = pd.DataFrame(rows[:20])
    if fmt == "csv":
        frame.to_csv(table, index=False, compression=kind)
    else:
        frame.to_json(table, orient="records", lines=True, compression=kind)
    run = run_cli(f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={table}",
                  f"inference.input_format={fmt}", cwd=tmp_path)
    assert_user_error(run, f"{table} is compressed ({'bzip2' if kind == 'bz2' else kind})", "decompress it first",
                      code=2)
    assert not list(tmp_path.rglob("*.jsonl.partial"))
    if kind == "bz2":
        frame.rename(columns={"id": "BZh1"}).to_csv(table, index=False, columns=["BZh1", "text"])
        run = run_cli(f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={table}",
                      "inference.input_format=csv", "inference.id_column=BZh1", f"inference.output_path={tmp_path}/o.jsonl",
                      "inference.error_budget=0.5", cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        assert len(read_jsonl(tmp_path / "o.jsonl")) + len(read_jsonl(tmp_path / "errors.jsonl")) == 20


def test_manifest_mixing_local_paths_and_s3_uris(client, models, test_docs, s3_tables, reference_scores, tmp_path):
    """A manifest instead of a listing: its order, a missing file and a repeated path in the errors."""
    s3 = s3_tables.client()
    local = sorted(test_docs.glob("*.txt"))[:6]
    for path in local[3:]:
        s3.upload_file(str(path), "tables", f"docs/{path.name}")
    remote = [f"s3://tables/docs/{p.name}" for p in local[3:]]
    missing = str(test_docs / "0_0.txt")
    entries = [str(local[2]), remote[0], str(local[0]), missing, remote[1], str(local[2]), str(local[1]), remote[2]]
    manifest = tmp_path / "manifest.txt"
    manifest.write_text("\n".join(entries) + "\n")
    cfg = daskinfer.load_config([
        f"inference.model_path={models['keras'][0]}", f"inference.input_manifest={manifest}",
        f"inference.output_path={tmp_path / 'res.jsonl'}", "inference.error_budget=0.5", *s3_options(s3_tables),
    ])
    result = daskinfer.run(cfg, client=client)
    records, errors = read_jsonl(result.output_uri), read_jsonl(tmp_path / "errors.jsonl")
    scored = [entries[i] for i in (0, 1, 2, 4, 6, 7)]
    assert [r["filepath"] for r in records] == scored  # the manifest's order
    reference = reference_scores["keras"]
    for r in records:
        local_path = str(test_docs / Path(r["filepath"]).name)
        assert abs(r["logit_prob"] - reference[local_path]) <= 1e-5
    assert [e["filepath"] for e in errors] == [missing, str(local[2])]
    assert "FileNotFoundError" in errors[0]["error"]
    assert "listed more than once in the manifest (again at line 6)" in errors[1]["error"]
    summary = result.summary
    assert (summary["documents"], summary["predicted"], summary["errors"]) == (8, 6, 2)


def test_manifest_as_json_lines(client, models, test_docs, tmp_path):
    paths = sorted(str(p) for p in test_docs.glob("*.txt"))[:5]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"path": p, "note": "kept"}) + "\n" for p in paths))
    cfg = daskinfer.load_config([f"inference.model_path={models['keras'][0]}", f"inference.input_manifest={manifest}",
                                 f"inference.output_path={tmp_path / 'res.jsonl'}"])
    assert [r["filepath"] for r in read_jsonl(daskinfer.run(cfg, client=client).output_uri)] == paths


def test_a_manifest_saved_with_a_byte_order_mark_keeps_its_first_entry(client, models, test_docs, tmp_path):
    """Notepad and Excel open a UTF-8 file with a byte-order mark: it is no part of a path."""
    paths = sorted(str(p) for p in test_docs.glob("*.txt"))[:3]
    manifest = tmp_path / "manifest.txt"
    manifest.write_text("\n".join(paths) + "\n", encoding="utf-8-sig")
    cfg = daskinfer.load_config([f"inference.model_path={models['keras'][0]}", f"inference.input_manifest={manifest}",
                                 f"inference.output_path={tmp_path / 'res.jsonl'}"])
    result = daskinfer.run(cfg, client=client)
    assert [r["filepath"] for r in read_jsonl(result.output_uri)] == paths and result.summary["errors"] == 0


def test_manifest_line_without_a_path_is_refused(client, models, tmp_path):
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text('{"path": "/data/a.txt"}\n{"file": "/data/b.txt"}\n')
    cfg = daskinfer.load_config([f"inference.model_path={models['keras'][0]}", f"inference.input_manifest={manifest}"])
    with pytest.raises(daskinfer.RunFailed, match=r"manifest.jsonl line 2: expected a path, or JSON with a \"path\" field"):
        daskinfer.run(cfg, client=client)


def test_a_table_listed_twice_in_a_manifest_is_refused_rather_than_scored_twice(models, table_files, tmp_path):
    manifest = tmp_path / "manifest.txt"
    manifest.write_text(f"{table_files['jsonl']}\n{table_files['jsonl']}\n")
    run = run_cli(f"inference.model_path={models['keras'][0]}", f"inference.input_manifest={manifest}",
                  "inference.input_format=jsonl", f"inference.output_path={tmp_path / 'out' / 'r.jsonl'}", cwd=tmp_path)
    assert_user_error(run, f"the table {table_files['jsonl']} is listed more than once in the manifest", code=2)
    assert not (tmp_path / "out").exists()


def test_a_table_missing_from_a_manifest_is_named(client, models, table_files, tmp_path):
    manifest = tmp_path / "manifest.txt"
    manifest.write_text(f"{table_files['jsonl']}\n{tmp_path}/gone.jsonl\n")
    cfg = daskinfer.load_config([f"inference.model_path={models['keras'][0]}", f"inference.input_manifest={manifest}",
                                 "inference.input_format=jsonl", f"inference.output_path={tmp_path / 'out' / 'r.jsonl'}"])
    with pytest.raises(FileNotFoundError) as missing:
        daskinfer.run(cfg, client=client)
    assert str(missing.value) == f"table not found: {tmp_path}/gone.jsonl"
    assert not (tmp_path / "out").exists()


def test_missing_manifest_is_one_clear_line(models, tmp_path):
    run = run_cli(f"inference.model_path={models['keras'][0]}", f"inference.input_manifest={tmp_path}/nope.txt",
                  cwd=tmp_path)
    assert_user_error(run, f"manifest not found: {tmp_path}/nope.txt")


@pytest.mark.parametrize("fmt, content, message", [
    ("parquet", b"not a parquet file", "Parquet magic bytes not found"),
    ("csv", b'text\n"a quote that never closes, and no newline after it', "ParserError"),
])
def test_unreadable_table_is_one_clear_line(fmt, content, message, models, tmp_path):
    table = tmp_path / f"broken.{fmt}"
    table.write_bytes(content)
    run = run_cli(f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={table}",
                  f"inference.input_format={fmt}", cwd=tmp_path)
    assert_user_error(run, f"cannot read {table} as {fmt}", message, code=1)


def test_a_parquet_file_with_a_damaged_footer_is_one_clear_line(table_files, models, tmp_path):
    data = bytearray(table_files["parquet"].read_bytes())
    data[-40:-8] = b"\xff" * 32  # the footer's metadata, before its length and magic bytes
    table = tmp_path / "damaged.parquet"
    table.write_bytes(bytes(data))
    run = run_cli(f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={table}",
                  "inference.input_format=parquet", cwd=tmp_path)
    assert_user_error(run, f"cannot read {table} as parquet", code=1)


@pytest.mark.parametrize("kind", ["fifo", "folder", "link loop"])
def test_a_table_that_is_no_file_is_one_clear_line(kind, table_files, models, tmp_path):
    """A FIFO among the tables would hang the run reading it; a folder a manifest names, or a
    symbolic link to itself, ended it with a traceback."""
    tables = tmp_path / "tables"
    tables.mkdir()
    shutil.copyfile(table_files["csv"], tables / "a.csv")
    odd = tables / "b.csv"
    if kind == "fifo":
        os.mkfifo(odd)
    elif kind == "folder":
        odd.mkdir()
    else:
        odd.symlink_to(odd)
    manifest = tmp_path / "tables.txt"
    manifest.write_text(f"{tables / 'a.csv'}\n{odd}\n")
    run = run_cli(f"inference.model_path={models['keras'][0]}", f"inference.input_manifest={manifest}",
                  "inference.input_format=csv", cwd=tmp_path, timeout=120)
    why = {"fifo": "not a regular file (a FIFO)", "folder": "it is a folder (inference.input_data_dir lists one)",
           "link loop": "Too many levels of symbolic links"}[kind]
    assert_user_error(run, f"cannot read the table {odd}: {why}", code=1)


def test_manifest_and_parquet_output_on_s3(client, models, test_docs, s3_tables, reference_scores, tmp_path):
    """The manifest itself on S3, and the Parquet results committed there only at the end."""
    import pyarrow.parquet as pq

    s3 = s3_tables.client()
    paths = sorted(test_docs.glob("*.txt"))[10:14]
    for path in paths:
        s3.upload_file(str(path), "tables", f"more/{path.name}")
    uris = [f"s3://tables/more/{p.name}" for p in paths]
    s3.put_object(Bucket="tables", Key="manifests/m.txt", Body="".join(u + "\n" for u in uris).encode())
    cfg = daskinfer.load_config([
        f"inference.model_path={models['keras'][0]}", "inference.input_manifest=s3://tables/manifests/m.txt",
        "inference.output_format=parquet", "inference.output_path=s3://tables/results/res.parquet",
        *s3_options(s3_tables),
    ])
    result = daskinfer.run(cfg, client=client)
    local = tmp_path / "res.parquet"
    s3.download_file("tables", "results/res.parquet", str(local))
    rows = pq.read_table(local).to_pylist()
    assert [r["filepath"] for r in rows] == uris
    for r, path in zip(rows, paths):
        assert abs(r["logit_prob"] - reference_scores["keras"][str(path)]) <= 1e-5
    assert result.summary["predicted"] == 4


def test_binary_text_column_is_decoded(client, models, reviews_table, tmp_path):
    """Parquet text and ids stored as bytes: decoded with inference.encoding (an id as its text,
    not Python's b'...'); undecodable rows are errors."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows, scores = reviews_table
    texts = [r["text"] for r in rows[:20] if r["text"] is not None]
    values = [t.encode("utf-8") for t in texts] + [b"\xff\xfe not utf-8", b"a fine film"]
    ids = [f"r-{i}".encode() for i in range(len(texts) + 1)] + [b"bad \xff id"]
    pq.write_table(pa.table({"text": pa.array(values, type=pa.binary()), "id": pa.array(ids, type=pa.binary())}),
                   tmp_path / "bytes.parquet")
    cfg = daskinfer.load_config([
        f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={tmp_path / 'bytes.parquet'}",
        "inference.input_format=parquet", f"inference.output_path={tmp_path / 'out' / 'res.jsonl'}",
        "inference.error_budget=0.2", "inference.id_column=id",
    ])
    records = read_jsonl(daskinfer.run(cfg, client=client).output_uri)
    assert len(records) == len(texts)
    assert [abs(r["logit_prob"] - scores[t]) <= 1e-5 for r, t in zip(records, texts)] == [True] * len(texts)
    assert [r["id"] for r in records] == [f"r-{i}" for i in range(len(texts))]
    errors = read_jsonl(tmp_path / "out" / "errors.jsonl")
    assert [(e["filepath"].rsplit("#")[1], e["error"][:22]) for e in errors] == [
        (str(len(texts)), "ValueError: not valid "), (str(len(texts) + 1), "ValueError: not valid ")]
    assert "in column 'id'" in errors[1]["error"]


@pytest.mark.parametrize("second_ids, kind", [([5, 6, 7], "int64"), (["x", "y", "z"], "string")])
def test_parquet_output_ids_of_every_table(second_ids, kind, client, models, tmp_path):
    """One id column for the whole Parquet file: a first slice whose ids are all missing does
    not fix its type, and tables whose ids differ in type are written as text, rather than
    failing after every document was scored."""
    import pandas as pd
    import pyarrow.parquet as pq

    texts = ["a fine, warm film", "dull and far too long", "the best of the year", "a waste of an evening",
             "moving and funny", "nothing works here"]
    folder = tmp_path / "tables"
    folder.mkdir()
    first = pd.DataFrame({"id": pd.array([None, None, 3], dtype="Int64"), "text": texts[:3]})
    first.to_json(folder / "a.jsonl", orient="records", lines=True)
    pd.DataFrame({"id": second_ids, "text": texts[3:]}).to_json(folder / "b.jsonl", orient="records", lines=True)
    out = tmp_path / "out" / "res.parquet"
    result = daskinfer.run(daskinfer.load_config([
        f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={folder}",
        "inference.input_format=jsonl", "inference.id_column=id", "inference.partition_size=2",
        "inference.output_format=parquet", f"inference.output_path={out}"]), client=client)
    table = pq.read_table(result.output_uri)
    assert str(table.schema.field("id").type) == kind
    as_written = [None, None, 3, *second_ids] if kind == "int64" else [None, None, "3", *second_ids]
    assert table.column("id").to_pylist() == as_written
    scores = models["keras"][1](texts)
    assert [abs(p - float(s)) <= 1e-5 for p, s in zip(table.column("logit_prob").to_pylist(), scores)] == [True] * 6


def test_parquet_output_keeps_csv_ids_as_written_when_one_table_mixes_kinds(client, models, tmp_path):
    """"007" beside 12 in one CSV, 1 and 2 in another: one column of text, "007" kept."""
    import pyarrow.parquet as pq

    folder = tmp_path / "tables"
    folder.mkdir()
    (folder / "a.csv").write_text("id,text\n007,a fine warm film\n12,dull and far too long\n")
    (folder / "b.csv").write_text("id,text\n1,the best of the year\n2,a waste of an evening\n")
    out = tmp_path / "out" / "res.parquet"
    result = daskinfer.run(daskinfer.load_config([
        f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={folder}",
        "inference.input_format=csv", "inference.id_column=id", "inference.output_format=parquet",
        f"inference.output_path={out}"]), client=client)
    table = pq.read_table(result.output_uri)
    assert str(table.schema.field("id").type) == "string"
    assert table.column("id").to_pylist() == ["007", "12", "1", "2"]


@pytest.mark.parametrize("rows", ["", "7,\n8,\n"])
def test_a_parquet_output_without_rows_still_has_its_id_column(rows, client, models, tmp_path):
    """A table of a header alone, or one whose every row is an error entry: the results file
    has no row, and the columns a reader of this job's results expects."""
    import pyarrow.parquet as pq

    table = tmp_path / "t.csv"
    table.write_text("id,text\n" + rows)
    out = tmp_path / "out" / "res.parquet"
    daskinfer.run(daskinfer.load_config([
        f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={table}", "inference.error_budget=1",
        "inference.input_format=csv", "inference.id_column=id", "inference.output_format=parquet",
        f"inference.output_path={out}"]), client=client)
    written = pq.read_table(out)
    assert written.num_rows == 0
    assert written.schema.names == ["time", "filepath", "logit_prob", "sentiment", "id"]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_empty_shards_hold_no_rows(fmt, client, models, tmp_path):
    """A folder of shards where a writer left some empty (Spark writes an empty part file for
    an empty partition): those hold no rows; the others are scored."""
    import pandas as pd

    texts = ["a fine, warm film", "dull and far too long", "the best of the year"]
    folder = tmp_path / "tables"
    folder.mkdir()
    frame = pd.DataFrame({"text": texts})
    (folder / f"part-0.{fmt}").write_text("")
    full = frame.to_csv(index=False) if fmt == "csv" else frame.to_json(orient="records", lines=True)
    (folder / f"part-1.{fmt}").write_text(full)
    (folder / f"part-2.{fmt}").write_text("\n\n")
    out = tmp_path / "out" / "res.jsonl"
    result = daskinfer.run(daskinfer.load_config([
        f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={folder}",
        f"inference.input_format={fmt}", f"inference.output_path={out}"]), client=client)
    records = read_jsonl(out)
    assert [r["filepath"] for r in records] == [f"{folder / f'part-1.{fmt}'}#{i}" for i in range(3)]
    assert [abs(r["logit_prob"] - float(s)) <= 1e-5 for r, s in zip(records, models["keras"][1](texts))] == [True] * 3
    assert result.summary["errors"] == 0 and not read_jsonl(out.parent / "errors.jsonl")


def test_a_json_list_or_object_as_text_is_an_error_entry(client, models, tmp_path):
    """Pre-tokenized text (a list) is not scored as Python would print it, nor is true."""
    table = tmp_path / "t.jsonl"
    table.write_text('{"text": "a fine, warm film"}\n{"text": ["a", "fine", "film"]}\n{"text": {"title": "x"}}\n'
                     '{"text": "dull and far too long"}\n{"text": true}\n')
    out = tmp_path / "out" / "res.jsonl"
    daskinfer.run(daskinfer.load_config([
        f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={table}",
        "inference.input_format=jsonl", "inference.error_budget=1", f"inference.output_path={out}"]), client=client)
    assert [r["filepath"] for r in read_jsonl(out)] == [f"{table}#0", f"{table}#3"]
    assert [(e["filepath"], e["error"]) for e in read_jsonl(out.parent / "errors.jsonl")] == [
        (f"{table}#1", "ValueError: the text in column 'text' is a list, not a string"),
        (f"{table}#2", "ValueError: the text in column 'text' is a dict, not a string"),
        (f"{table}#4", "ValueError: the text in column 'text' is a bool, not a string")]
    import pyarrow as pa
    import pyarrow.parquet as pq

    tokens = tmp_path / "tokens.parquet"  # a column of lists, which pandas reads as numpy arrays
    pq.write_table(pa.table({"text": [["a", "fine", "film"], ["dull"]]}), tokens)
    daskinfer.run(daskinfer.load_config([
        f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={tokens}", "inference.error_budget=1",
        "inference.input_format=parquet", f"inference.output_path={tmp_path}/lists/res.jsonl"]), client=client)
    assert {e["error"] for e in read_jsonl(tmp_path / "lists" / "errors.jsonl")} == {
        "ValueError: the text in column 'text' is a list, not a string"}


@pytest.mark.parametrize("ids, kind, expected", [
    ([None] * 200 + list(range(200, 240)), "int64", None),  # missing in the head: it decides nothing
    ([*range(200), *(2**64 + i for i in range(40))], "string", [str(i) for i in [*range(200), *range(2**64, 2**64 + 40)]]),
    ([*range(200), *(i % 2 == 0 for i in range(40))], "string",
     [*map(str, range(200)), *(("true", "false") * 20)]),  # as the JSONL writes them
], ids=["missing-then-numbers", "above-2**63", "numbers-then-booleans"])
def test_parquet_output_gives_ids_one_type_for_the_whole_file(ids, kind, expected, client, models, test_docs,
                                                              tmp_path):
    import pyarrow.parquet

    texts = [p.read_text("utf-8") for p in sorted(test_docs.glob("*.txt"))[:240]]
    table = tmp_path / "t.jsonl"
    table.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in zip(ids, texts)), "utf-8")
    out = tmp_path / "out" / "res.parquet"
    daskinfer.run(daskinfer.load_config([
        f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={table}", "inference.id_column=id",
        "inference.input_format=jsonl", "inference.partition_bytes=65536", "inference.output_format=parquet",
        f"inference.output_path={out}"]), client=client)
    written = pyarrow.parquet.read_table(out)
    assert str(written.schema.field("id").type) == kind
    assert written.column("id").to_pylist() == (ids if expected is None else expected)
    assert written.column("filepath").to_pylist() == [f"{table}#{n}" for n in range(240)]


@pytest.mark.parametrize("fmt,output", [("jsonl", "jsonl"), ("csv", "jsonl"), ("jsonl", "parquet")])
def test_ids_that_turn_from_numbers_to_words_after_the_head_are_read_as_written(fmt, output, client, models,
                                                                                 test_docs, tmp_path):
    """The head (its first 100 rows) types the file; a later part typed otherwise is read as
    it is, where dask's own readers stop the run with a metadata mismatch. Parquet output has
    one type per column: the ids turn to text, those written before the words included."""
    import pandas as pd

    texts = [p.read_text("utf-8") for p in sorted(test_docs.glob("*.txt"))[:240]]
    ids = [*range(200), *(f"w{i}" for i in range(40))]
    table = tmp_path / f"t.{fmt}"
    frame = pd.DataFrame({"id": pd.Series(ids, dtype=object), "text": texts})
    table.write_text(frame.to_csv(index=False) if fmt == "csv" else frame.to_json(orient="records", lines=True))
    out = tmp_path / "out" / f"res.{output}"
    daskinfer.run(daskinfer.load_config([
        f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={table}", "inference.id_column=id",
        f"inference.input_format={fmt}", "inference.partition_bytes=65536", f"inference.output_format={output}",
        f"inference.output_path={out}"]), client=client)
    records = read_jsonl(out) if output == "jsonl" else pd.read_parquet(out).to_dict("records")
    assert [r["id"] for r in records] == (ids if output == "jsonl" else [str(i) for i in ids])
    scores = models["keras"][1](texts)
    assert [abs(r["logit_prob"] - float(s)) <= 1e-5 for r, s in zip(records, scores)] == [True] * len(texts)


def test_small_tables_of_small_row_groups_are_scored_together(client, models, reviews_table, tmp_path):
    """Shards of 20 rows in row groups of five, one all-null shard among them: every row once,
    in order, with the model's own score, in a few tasks that span tables (a task per row
    group would score batches of five at most). An incremental run after one shard changed
    carries the others, the all-null one's error entries included."""
    import distributed
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows, scores = reviews_table
    good = [row for row in rows if row["text"]]
    shards = [good[i:i + 20] for i in range(0, 240, 20)]
    shards.insert(3, [{"text": None, "id": f"blank-{i}", "label": 0} for i in range(2)])  # within the error budget
    folder = tmp_path / "shards"
    folder.mkdir()

    def write(n: int, shard: List[dict]) -> None:
        pq.write_table(pa.Table.from_pandas(pd.DataFrame(shard), preserve_index=False),
                       folder / f"part-{n:02d}.parquet", row_group_size=5)

    for n, shard in enumerate(shards):
        write(n, shard)
    args = [f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={folder}",
            "inference.input_format=parquet", "inference.id_column=id"]
    with distributed.get_task_stream(client) as stream:
        first = daskinfer.run(daskinfer.load_config([*args, f"inference.output_path={tmp_path}/1/res.jsonl"]),
                              client=client)
    files = sorted(folder.iterdir())
    assert {key: first.summary["inputs"][key] for key in ("count", "bytes")} == {
        "count": len(files), "bytes": sum(path.stat().st_size for path in files)}
    scoring = {task["key"] for task in stream.data if "daskinfer-partition" in str(task["key"])}
    assert 2 <= len(scoring) <= 12  # 49 row groups, 242 rows

    def assert_every_row_once(out: Path, shards: List[List[dict]], scores: dict) -> None:
        records, errors = read_jsonl(out / "res.jsonl"), read_jsonl(out / "errors.jsonl")
        keys = [(f"{folder / f'part-{n:02d}.parquet'}#{i}", row) for n, shard in enumerate(shards)
                for i, row in enumerate(shard)]
        assert [r["filepath"] for r in records] == [key for key, row in keys if row["text"]]
        assert [e["filepath"] for e in errors] == [key for key, row in keys if not row["text"]]
        by_key = dict(keys)
        assert all(r["id"] == by_key[r["filepath"]]["id"] for r in records)
        assert all(abs(r["logit_prob"] - scores[by_key[r["filepath"]]["text"]]) <= 1e-5 for r in records)

    assert_every_row_once(tmp_path / "1", shards, scores)
    ledger_rows = pq.read_table(tmp_path / "1" / "ledger.parquet").to_pydict()
    flags = dict(zip(ledger_rows["filepath"], ledger_rows["flags"]))
    assert [flags[str(folder / f"part-{n:02d}.parquet").encode()] for n in range(len(shards))] == [
        ledger.IN_ERRORS if n == 3 else ledger.IN_RESULTS for n in range(len(shards))]
    shards[5] = good[300:320]
    write(5, shards[5])
    second = daskinfer.run(daskinfer.load_config([*args, f"inference.output_path={tmp_path}/2/res.jsonl",
                                                  f"inference.incremental_from={tmp_path / '1'}"]), client=client)
    assert (second.summary["carried"], second.summary["scored"]) == (222, 20)
    assert_every_row_once(tmp_path / "2", shards, scores)
    third = daskinfer.run(daskinfer.load_config([*args, f"inference.output_path={tmp_path}/3/res.jsonl",
                                                 f"inference.incremental_from={tmp_path / '2'}",
                                                 "inference.retry_errors=true"]), client=client)
    assert (third.summary["carried"], third.summary["scored"], third.summary["retried"]) == (240, 2, 2)  # rows
    assert_every_row_once(tmp_path / "3", shards, scores)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_row_that_is_not_valid_in_the_encoding_is_an_error_entry(fmt, client, models, reviews_table, tmp_path):
    """Past the head the driver reads, in the text or in the id: that row alone fails."""
    rows, _ = reviews_table
    good = [row for row in rows if row["text"]][:300]
    texts = [row["text"].replace("\n", " ") for row in good]
    lines = [b"id,text\n"] if fmt == "csv" else []
    for n, (row, text) in enumerate(zip(good, texts)):
        raw_text = text.encode("utf-8") + (b" \xff" if n == 150 else b"")
        raw_id = row["id"].encode("utf-8") + (b"\xfe" if n == 160 else b"")
        if fmt == "csv":
            lines.append(b'%s,"%s"\n' % (raw_id, raw_text.replace(b'"', b'""')))
        else:
            escaped = {"id": raw_id.decode("utf-8", "surrogateescape"), "text": raw_text.decode("utf-8", "surrogateescape")}
            lines.append(json.dumps(escaped, ensure_ascii=False).encode("utf-8", "surrogateescape") + b"\n")
    table = tmp_path / f"t.{fmt}"
    table.write_bytes(b"".join(lines))
    out = tmp_path / "out" / "res.jsonl"
    daskinfer.run(daskinfer.load_config([f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={table}",
                                         f"inference.input_format={fmt}", "inference.id_column=id",
                                         f"inference.output_path={out}"]), client=client)
    records, errors = read_jsonl(out), read_jsonl(out.parent / "errors.jsonl")
    assert [r["filepath"] for r in records] == [f"{table}#{n}" for n in range(300) if n not in (150, 160)]
    assert [e["filepath"] for e in errors] == [f"{table}#150", f"{table}#160"]
    assert "not valid utf-8 in column 'text': byte 0xff" in errors[0]["error"]
    assert "not valid utf-8 in column 'id': byte 0xfe" in errors[1]["error"]
    expected = models["keras"][1](texts[:50])
    assert [abs(r["logit_prob"] - float(e)) <= 1e-5 for r, e in zip(records[:50], expected)] == [True] * 50


def test_a_runs_own_outputs_in_the_input_folder_are_not_taken_for_inputs(models, table_files, tmp_path, on_client):
    """Run in the folder of the tables, the default outputs/ (JSON lines too) and a results file
    named beside the tables are left out of the next run's inputs; a finished folder of tables
    resumes as unchanged, and a run to another results file there reads the tables alone."""
    folder = tmp_path / "tables"
    folder.mkdir()
    rows = table_files["jsonl"].read_text("utf-8").splitlines(keepends=True)[10:50]  # no null text
    (folder / "reviews.jsonl").write_text("".join(rows), "utf-8")
    args = [f"inference.model_path={models['keras'][0]}", "inference.input_data_dir=.", "inference.input_format=jsonl",
            "inference.recursive=true", *on_client]
    expected = [f"{folder / 'reviews.jsonl'}#{i}" for i in range(40)]
    for _ in range(2):
        run = run_cli(*args, cwd=folder)
        assert run.returncode == 0, run.stderr
        results = Path(run.stderr_lines[-1].split("Output result location: ")[1])
        assert [r["filepath"] for r in read_jsonl(results)] + [
            e["filepath"] for e in read_jsonl(results.parent / "errors.jsonl")] == expected
    named = [*args, f"inference.output_path={folder / 'res.jsonl'}"]
    assert run_cli(*named, cwd=folder).returncode == 0
    again = run_cli(*named, "inference.resume=true", cwd=folder)
    assert again.returncode == 0, again.stderr
    summary = json.loads((folder / "summary.json").read_text())
    assert (summary["documents"], summary["scored"], summary["skipped"]) == (40, 0, 40)
    other = run_cli(*args, f"inference.output_path={folder / 'res2.jsonl'}", cwd=folder)  # res.jsonl is no table
    assert other.returncode == 0, other.stderr
    assert [r["filepath"] for r in read_jsonl(folder / "res2.jsonl")] + [
        e["filepath"] for e in read_jsonl(folder / "res2.errors.jsonl")] == expected
