"""The ordered sink on its own: what an interrupted run leaves to resume from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from daskinfer import outputs, records, sink


def unit(first: int, n: int) -> records.PartitionResult:
    lines = b"".join(json.dumps({"filepath": f"/docs/{i:03d}.txt", "logit_prob": 0.5}).encode() + b"\n"
                     for i in range(first, first + n))
    return records.PartitionResult(lines, b"", n, 0, None, "worker")


def test_an_interrupt_during_the_first_units_fsync_keeps_its_lines_to_resume_from(tmp_path, monkeypatch):
    """SIGTERM lands while the first unit's lines are being synced to disk (slow on a busy
    disk): they are in the file already, so the partial output stays, and a resume has them."""
    uri = str(tmp_path / "res.jsonl")
    out = sink.OrderedSink(outputs.claim(uri, {}, resume=False), {})

    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(sink.os, "fsync", interrupted)
        with pytest.raises(KeyboardInterrupt):
            out.write(unit(0, 20))
    assert out.abandon()
    assert Path(f"{uri}.partial").read_bytes() == unit(0, 20).results

    resumed = sink.OrderedSink(outputs.claim(uri, {}, resume=True), {}, resume=True)
    assert resumed.done == {f"/docs/{i:03d}.txt" for i in range(20)}
    resumed.abandon()


def test_an_interrupt_before_anything_was_written_leaves_nothing(tmp_path):
    uri = str(tmp_path / "res.jsonl")
    out = sink.OrderedSink(outputs.claim(uri, {}, resume=False), {})
    assert not out.abandon()
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_results_of_a_unit_scored_a_document_at_a_time_join_in_order(fmt):
    """What the driver gets for a partition its workers died on (scheduling.Runner): the
    documents' results, each from its own task, as one result in their order."""
    from daskinfer import evaluation

    def part(name, score, worker, tally=None):
        record = {"time": records.now(), "filepath": name, "logit_prob": score,
                  "sentiment": "positive" if score > 0.5 else "negative"}
        return records.PartitionResult(records.encode([record], fmt), b"", 1, 0, tally, worker,
                                       records.stats([record], []))

    died = records.error_entry("b.txt", "KilledWorker: ...", transient=True)
    tallies = [evaluation.Tally(("negative", "positive")) for _ in range(2)]
    tallies[0].add("positive", "positive")
    tallies[1].add("negative", "positive")
    joined = records.merged([part("a.txt", 0.9, "w1", tallies[0]),
                             records.PartitionResult(None, records.jsonl([died]), 0, 1, None, "",
                                                     records.stats([], [died])),
                             part("c.txt", 0.2, "w2"), part("d.txt", 0.7, "w2", tallies[1])])
    if fmt == "jsonl":
        found = [json.loads(line) for line in joined.results.decode().splitlines()]
    else:
        found = joined.results.to_pylist()
    assert [(r["filepath"], r["logit_prob"]) for r in found] == [("a.txt", 0.9), ("c.txt", 0.2), ("d.txt", 0.7)]
    assert [json.loads(line)["filepath"] for line in joined.errors.decode().splitlines()] == ["b.txt"]
    assert (joined.n_results, joined.n_errors, joined.documents, joined.worker) == (3, 1, 4, "w2")
    assert joined.tally.matrix == [[0, 1], [0, 1]]
    assert joined.stats["labels"] == {"positive": 2, "negative": 1}
    assert joined.stats["errors"] == {"KilledWorker": 1} and sum(joined.stats["hist"]) == 3
