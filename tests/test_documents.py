"""What counts as a document, and what happens to one that cannot be scored."""

from __future__ import annotations

import json
import os
import shutil

from conftest import IMDB, SHARED_DATA, read_jsonl, run_cli


def make_mixed_folder(root):
    docs = root / "docs"
    docs.mkdir()
    good = [
        path
        for label in ("pos", "neg")
        for path in sorted((IMDB / "test" / label).glob("*.txt"))
        if path.read_bytes().isascii()  # the same bytes under utf-8 and cp1252
    ]
    good = good[:15] + good[-15:]
    for path in good:
        shutil.copyfile(path, docs / path.name)
    (docs / "empty.txt").write_bytes(b"")
    os.symlink(docs / "was-deleted.txt", docs / "dangling.txt")
    cp1252 = (SHARED_DATA / "rt-polarity" / "rt-polarity.neg").read_bytes()
    line = next(ln for ln in cp1252.splitlines() if any(b >= 0x80 for b in ln))
    (docs / "cp1252.txt").write_bytes(line)
    (docs / "huge.txt").write_text("a fine film " * 3000)
    (docs / "notes.md").write_text("not a document")
    (docs / "chapter.txt").mkdir()
    shutil.copyfile(good[0], docs / "chapter.txt" / "inner.txt")
    return docs, [p.name for p in good]


def test_bad_documents_go_to_the_errors_file_and_the_rest_is_scored(models, tmp_path):
    docs, good = make_mixed_folder(tmp_path)
    out = tmp_path / "out" / "res.jsonl"
    run = run_cli(
        f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={docs}",
        f"inference.output_path={out}", "inference.max_document_bytes=20000", "inference.error_budget=0.5", cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    records = read_jsonl(out)
    errors = {os.path.basename(e["filepath"]): e["error"] for e in read_jsonl(out.parent / "errors.jsonl")}
    assert [r["filepath"] for r in records] == sorted(str(docs / name) for name in good)
    assert set(errors) == {"empty.txt", "dangling.txt", "cp1252.txt", "huge.txt"}
    assert "empty" in errors["empty.txt"]
    assert "No such file" in errors["dangling.txt"]
    assert "not valid utf-8" in errors["cp1252.txt"]
    assert "max_document_bytes" in errors["huge.txt"]
    assert all("\n" not in e for e in errors.values())
    summary = json.loads((out.parent / "summary.json").read_text())
    assert (summary["documents"], summary["predicted"], summary["errors"]) == (34, 30, 4)


def test_encoding_and_recursive_listing(models, tmp_path):
    docs, good = make_mixed_folder(tmp_path)
    out = tmp_path / "res.jsonl"
    run = run_cli(
        f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={docs}",
        f"inference.output_path={out}", "inference.encoding=cp1252", "inference.recursive=true",
        "inference.error_budget=0.5", cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    scored = {os.path.relpath(r["filepath"], docs) for r in read_jsonl(out)}
    assert scored == set(good) | {"cp1252.txt", "huge.txt", os.path.join("chapter.txt", "inner.txt")}
    failed = {os.path.basename(e["filepath"]) for e in read_jsonl(tmp_path / "errors.jsonl")}
    assert failed == {"empty.txt", "dangling.txt"}
