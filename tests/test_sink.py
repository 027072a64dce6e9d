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
