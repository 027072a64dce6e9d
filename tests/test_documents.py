"""What counts as a document, and what happens to one that cannot be scored."""

from __future__ import annotations

import glob as pyglob
import json
import os
import shutil

import pytest
from conftest import IMDB, SHARED_DATA, read_jsonl, run_cli

from daskinfer.listing import list_documents


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


def test_bad_documents_go_to_the_errors_file_and_the_rest_is_scored(models, tmp_path, on_client):
    docs, good = make_mixed_folder(tmp_path)
    out = tmp_path / "out" / "res.jsonl"
    run = run_cli(
        f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={docs}",
        f"inference.output_path={out}", "inference.max_document_bytes=20000", "inference.error_budget=0.5", *on_client,
        cwd=tmp_path,
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


def test_encoding_and_recursive_listing(models, tmp_path, on_client):
    docs, good = make_mixed_folder(tmp_path)
    out = tmp_path / "res.jsonl"
    run = run_cli(
        f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={docs}",
        f"inference.output_path={out}", "inference.encoding=cp1252", "inference.recursive=true",
        "inference.error_budget=0.5", *on_client, cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    scored = {os.path.relpath(r["filepath"], docs) for r in read_jsonl(out)}
    assert scored == set(good) | {"cp1252.txt", "huge.txt", os.path.join("chapter.txt", "inner.txt")}
    failed = {os.path.basename(e["filepath"]) for e in read_jsonl(tmp_path / "errors.jsonl")}
    assert failed == {"empty.txt", "dangling.txt"}


def test_any_file_name_round_trips_through_the_jsonl(models, tmp_path, on_client):
    """Records are formatted without the JSON encoder on the fast path: names that need
    escaping must still come back exactly."""
    docs = tmp_path / "docs"
    docs.mkdir()
    names = ['quote " and back\\slash.txt', "tab\tand newline\n.txt", "café ünïcode ☃.txt", "control \x01\x1f.txt",
             "line sep \u2028.txt", "plain.txt"]
    review = next((IMDB / "test" / "pos").glob("*.txt")).read_text(encoding="utf-8")
    for name in names:
        (docs / name).write_text(review, encoding="utf-8")
    out = tmp_path / "res.jsonl"
    run = run_cli(f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={docs}",
                  f"inference.output_path={out}", *on_client, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    lines = out.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and len(lines) == len(names) + 1  # one line per record: nothing unescaped
    records = [json.loads(line) for line in lines[:-1]]
    assert [r["filepath"] for r in records] == sorted(str(docs / name) for name in names)
    assert len({r["logit_prob"] for r in records}) == 1  # the same text, the same score


def test_a_record_line_is_what_the_json_encoder_writes():
    from daskinfer import records

    plain = {"time": "2026-11-25T10:00:00+0000", "filepath": '/d/"x"\\\u2028é\x00.txt', "logit_prob": 0.1 + 0.2,
             "sentiment": "positive"}
    unusual = [
        plain,
        {**plain, "logit_prob": float("nan")},  # not finite: the encoder's NaN, not Python's nan
        {**plain, "logit_prob": float("inf")},
        {**plain, "id": 7},  # a table row's id
        {**plain, "scores": {"negative": 0.7, "positive": 0.3}},
        dict(reversed(list(plain.items()))),  # keys in another order keep it
        {"time": plain["time"], "filepath": "/d/x.txt", "error": "ValueError: empty document"},
    ]
    for record in unusual:
        assert records.line(record) == json.dumps(record, ensure_ascii=False) + "\n"


def test_files_are_read_whole_whatever_their_listed_size(tmp_path):
    """The listing's size is only a hint: a file that grew or shrank since, or one of unknown
    size (a manifest's), is still read to its end; beyond max_document_bytes it is refused."""
    from daskinfer import partitions, reading

    big = os.urandom(200_000)
    (tmp_path / "grew.txt").write_bytes(big)
    (tmp_path / "unknown.txt").write_bytes(big)
    (tmp_path / "small.txt").write_bytes(b"small")
    (tmp_path / "shrank.txt").write_bytes(b"shrank")
    names = ("grew.txt", "unknown.txt", "small.txt", "shrank.txt", "gone.txt")
    part = partitions.Partition([str(tmp_path / n) for n in names], [10, -1, 5, 70_000, 3])
    grew, unknown, small, shrank, gone = reading.read_all(part, {}, max_bytes=10**6)
    assert grew == big and unknown == big and small == b"small" and shrank == b"shrank"
    assert isinstance(gone, FileNotFoundError)
    too_large = reading.read_all(part, {}, max_bytes=100_000)
    assert [type(r) for r in too_large] == [ValueError, ValueError, bytes, bytes, FileNotFoundError]
    assert all("max_document_bytes" in str(r) for r in too_large[:2])


def test_a_file_replaced_since_its_listing_is_in_the_ledger_as_it_was_read(tmp_path):
    """A file replaced after it was listed by a copy that keeps an older time (cp -p, rsync -a):
    its worker says how it read it, and the ledger records that, not the listing, so that a
    later incremental run does not carry the score of other content as unchanged."""
    from daskinfer import ledger, partitions, predict

    for name in ("same.txt", "replaced.txt"):
        (tmp_path / name).write_text("a review as it was listed")
    found = list_documents(str(tmp_path), "*.txt")
    found.sized()
    replacement = tmp_path / "new"
    replacement.write_text("another review, longer than the one that was listed")
    os.utime(replacement, ns=(10**18, 10**18))  # an older time than the listed file's
    os.replace(replacement, tmp_path / "replaced.txt")
    part = next(partitions.group(found, 10, 10**6))
    scored = predict.Scored()
    texts = part.texts(predict.Settings(model=None), scored)
    assert [t.text for t in texts] == ["another review, longer than the one that was listed", "a review as it was listed"]
    read = (tmp_path / "replaced.txt").stat()
    assert scored.read_as == [(str(tmp_path / "replaced.txt"), read.st_size, read.st_mtime_ns)]
    notes = ledger.Notes(tables=False)
    notes.add(b"", (), scored.read_as)
    rows = {name: (size, version) for name, size, version, _ in ledger_rows(ledger.encode(found, notes), tmp_path)}
    assert rows[str(tmp_path / "replaced.txt")] == (read.st_size, read.st_mtime_ns)
    same = (tmp_path / "same.txt").stat()
    assert rows[str(tmp_path / "same.txt")] == (same.st_size, same.st_mtime_ns)


def ledger_rows(encoded: bytes, folder) -> list:
    from daskinfer import ledger

    path = folder / "ledger.parquet"
    path.write_bytes(encoded)
    return list(ledger.read(str(path), {}))


def test_a_listing_cuts_into_the_same_partitions_as_any_sequence_of_documents():
    from daskinfer import listing as listings
    from daskinfer import partitions

    sizes = [0, 1, 900, 5000, 20, 20, 20, 70000, 3, 0] * 30
    listing = listings.Listing("/docs/", [f"{i:04d}.txt" for i in range(len(sizes))], sizes)
    for max_docs, max_bytes in [(7, 10**9), (1000, 6000), (3, 1), (2000, 2**24), (1, 0)]:
        fast = [(p.uris, p.sizes) for p in partitions.group(listing, max_docs, max_bytes)]
        generic = [(p.uris, p.sizes) for p in partitions.group(iter(listing), max_docs, max_bytes)]
        assert fast == generic
        assert [u for uris, _ in fast for u in uris] == [d.uri for d in listing]


def test_a_listing_is_sorted_by_name_and_keeps_each_size_with_its_name():
    import random

    from daskinfer import listing as listings

    names = [f"{d}/{i:05d}.txt" for d in ("b", "a", "é", "B") for i in range(500)]
    random.Random(7).shuffle(names)
    size_of = {name: len(name) * 1000 + i for i, name in enumerate(names)}
    listing = listings.Listing("s3://bucket/", names, [size_of[n] for n in names])
    assert [d.uri for d in listing] == ["s3://bucket/" + n for n in sorted(names)]
    assert all(d.size == size_of[d.uri[len("s3://bucket/"):]] for d in listing)


def test_a_local_folder_is_listed_by_name_and_sized_as_its_partitions_are_cut(tmp_path):
    """A million local files must not wait for a stat() each before the first partition:
    the listing has names only, a partition's files are sized when it is cut (so
    partition_bytes still holds), and whatever needs every size (the digest, the ledger)
    gets the files' own sizes and modification times."""
    from daskinfer import partitions
    from daskinfer.listing import Listing, list_documents

    for i in range(40):
        (tmp_path / f"{i:02d}.txt").write_bytes(b"x" * (i * 37 % 500 + 1))
    (tmp_path / "41-dangling.txt").symlink_to(tmp_path / "nowhere")
    listing = list_documents(str(tmp_path))
    unread = [s for s in listing.sizes if s < 0]
    assert len(listing) == 41 and len(unread) == 40

    first = next(partitions.group(listing, 10, 10**9))
    assert first.sizes == [(tmp_path / f"{i:02d}.txt").stat().st_size for i in range(10)]
    assert len([s for s in listing.sizes if s < 0]) == 30  # the rest still unread

    stat_of = {str(p): os.stat(p) if p.exists() else None for p in tmp_path.iterdir()}
    docs = list(listing)
    assert [(d.size, d.version) for d in docs] == [
        (s.st_size, s.st_mtime_ns) if s else (0, 0) for s in (stat_of[d.uri] for d in docs)]
    by_hand = Listing(listing.prefix, list(listing.names), [d.size for d in docs])
    fresh = list_documents(str(tmp_path))
    assert [p.uris for p in partitions.group(fresh, 1000, 2000)] == [
        p.uris for p in partitions.group(by_hand, 1000, 2000)]


def test_the_first_partition_is_small_and_the_rest_are_shared_evenly_by_the_threads():
    """A run's first result waits for its first partition: the automatic size starts at a
    few dozen documents. The rest are cut into a multiple of the threads' count of
    near-equal partitions, so that no thread scores a last partition alone while the
    others wait. A configured size is kept."""
    from daskinfer import listing as listings
    from daskinfer import partitions

    for n_docs, threads in ((20_000, 2), (17_000, 2), (50_001, 3), (9_000, 4)):
        many = listings.Listing("/docs/", [f"{i:06d}.txt" for i in range(n_docs)], [100] * n_docs)
        sizes = partitions.partition_sizes(lambda: len(many), threads, None)
        auto = [len(p) for p in partitions.group(many, sizes, 2**40)]
        first, rest = auto[0], auto[1:]
        assert first == partitions.FIRST_PARTITION and sum(auto) == n_docs
        assert len(rest) % threads == 0 and len(rest) >= 4 * threads, (n_docs, threads, len(rest))
        assert max(rest) <= 2000 and min(rest) >= max(rest) - len(rest), (n_docs, threads, rest)
    configured = [len(p) for p in partitions.group(many, partitions.partition_sizes(lambda: len(many), 2, 250), 2**40)]
    assert set(configured) == {250}


@pytest.mark.parametrize("glob, include_hidden", [("*.txt", False), ("*.txt", True), (".*.txt", False)])
def test_a_folder_is_listed_as_pythons_glob_lists_it(glob, include_hidden, tmp_path):
    """Hidden names (a "._" resource fork, .ipynb_checkpoints/, .git/) are left out as
    glob.glob leaves them out, also inside subfolders; include_hidden keeps them as
    glob.glob(include_hidden=True) does."""
    for name in ("a.txt", "._a.txt", ".hidden.txt", "b.md", "sub/c.txt", "sub/._c.txt", ".ipynb_checkpoints/a.txt",
                 ".git/d.txt", "sub/.cache/e.txt", "sub/deeper/f.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("a fine film")
    expected = sorted(p for p in pyglob.glob(f"**/{glob}", root_dir=tmp_path, recursive=True,
                                              include_hidden=include_hidden) if p not in (".", ""))
    listed = list_documents(str(tmp_path), glob, recursive=True, include_hidden=include_hidden)
    assert [d.uri[len(listed.prefix):] for d in listed] == expected
    assert expected  # each case lists something: the glob and the files agree
