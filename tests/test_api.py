"""The Python API that notebooks use, on a LocalCluster owned by the test."""

from __future__ import annotations

import json

import pytest
from conftest import assert_predictions, local_docs, read_jsonl

import daskinfer


def test_run_on_a_notebook_client(client, models, test_docs, reference_scores, tmp_path):
    out = tmp_path / "api" / "res.jsonl"
    cfg = daskinfer.load_config([
        f"inference.model_path={models['keras3-export'][0]}",
        f"inference.input_data_dir={test_docs}",
        f"inference.output_path={out}",
    ])
    result = daskinfer.run(cfg, client=client)
    assert result.output_uri == str(out)
    assert_predictions(read_jsonl(out), local_docs(test_docs), reference_scores["keras3-export"])
    assert result.summary == json.loads((out.parent / "summary.json").read_text())
    assert set(result.summary["model_loads"].values()) == {1}


def test_records_bag_explores_lazily(client, models, test_docs, reference_scores):
    cfg = daskinfer.load_config([
        f"inference.model_path={models['tf-keras2-savedmodel'][0]}",
        f"inference.input_data_dir={test_docs}",
    ])
    bag = daskinfer.records_bag(cfg, n_threads=2)
    assert bag.npartitions > 1
    records = bag.compute()
    assert_predictions(records, local_docs(test_docs), reference_scores["tf-keras2-savedmodel"])
    frame = bag.to_dataframe().compute()
    assert list(frame.columns) == ["time", "filepath", "logit_prob", "sentiment"] and len(frame) == 1600


def test_a_model_saved_again_at_its_path_is_loaded_again_by_a_long_lived_cluster(client, models, test_docs,
                                                                                reference_scores, tmp_path):
    """A notebook retrains and saves to the same path: the same workers score with the new
    model, not the one they loaded first, and an existing output does not stop records_bag."""
    import shutil

    from misuse_fakes import length_score, nonfinite_model

    path = tmp_path / "model"
    shutil.copytree(models["keras3-export"][0], path)
    docs = sorted(local_docs(test_docs))[:40]
    args = [f"inference.model_path={path}", f"inference.input_manifest={tmp_path / 'docs.txt'}"]
    (tmp_path / "docs.txt").write_text("\n".join(docs) + "\n")
    first = daskinfer.run(daskinfer.load_config([*args, f"inference.output_path={tmp_path / 'a.jsonl'}"]),
                          client=client)
    assert_predictions(read_jsonl(first.output_uri), docs, reference_scores["keras3-export"])

    shutil.rmtree(path)
    nonfinite_model(path)  # another model at the same path: it scores by length
    cfg = daskinfer.load_config([*args, f"inference.output_path={tmp_path / 'b.jsonl'}"])
    second = daskinfer.run(cfg, client=client)
    scored = {r["filepath"]: r["logit_prob"] for r in read_jsonl(second.output_uri)}
    assert list(scored) == docs
    assert all(abs(score - length_score(len(open(doc, "rb").read()))) <= 1e-5 for doc, score in scored.items())
    assert set(second.summary["model_loads"].values()) == {1}
    assert second.summary["model"]["sha256"] != first.summary["model"]["sha256"]
    explored = daskinfer.records_bag(cfg).compute()  # cfg names b.jsonl, which exists: records_bag writes nothing
    assert sorted(r["filepath"] for r in explored) == docs
    assert all(abs(r["logit_prob"] - scored[r["filepath"]]) <= 1e-5 for r in explored)


def test_a_config_changed_after_loading_is_checked_again_by_run_and_records_bag(client, models, test_docs, tmp_path):
    """A notebook edits cfg between load_config and run: a value load_config would refuse is
    refused by run and records_bag too, with the same one line, before any output exists."""
    out = tmp_path / "edited" / "res.jsonl"
    cfg = daskinfer.load_config([f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={test_docs}",
                                 f"inference.output_path={out}"])
    cfg.inference.batch_size = 0
    for call in (lambda: daskinfer.run(cfg, client=client), lambda: daskinfer.records_bag(cfg)):
        with pytest.raises(daskinfer.ConfigError, match=r"^inference.batch_size must be > 0, got 0$"):
            call()
    assert not out.parent.exists()


def test_a_threshold_outside_0_1_splits_scores_as_the_model_gives_them(client, models, test_docs):
    """A model may output logits: the threshold applies to the score as it comes, whatever its
    range (here a sigmoid's scores, all below 1.5 and above -1)."""
    args = [f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={test_docs}"]
    for threshold, label in ((1.5, "negative"), (-1.0, "positive")):
        records = daskinfer.records_bag(daskinfer.load_config([*args, f"inference.threshold={threshold}"])).compute()
        assert len(records) == 1600 and {r["sentiment"] for r in records} == {label}


def test_an_interrupted_run_leaves_no_task_on_the_notebooks_cluster(client, test_docs, tmp_path):
    """Interrupting the kernel mid-run raises KeyboardInterrupt in run; the notebook keeps the
    exception (Jupyter's sys.last_value), and with it the run's frames. The tasks the run had
    submitted ahead must not stay on the user's workers, holding them and their memory."""
    import _thread
    import threading
    import time

    from misuse_fakes import slow_model

    # A model that waits on every call: the interrupt lands in the run's wait for a result, which
    # it leaves within a second; a fast model finished all 1,600 documents now and then by then.
    model = slow_model(tmp_path / "slow")
    out = tmp_path / "res.jsonl"
    cfg = daskinfer.load_config([
        f"inference.model_path={model}", f"inference.input_data_dir={test_docs}",
        f"inference.output_path={out}", "inference.partition_size=8", "inference.batch_size=4",
    ])
    partial = tmp_path / "res.jsonl.partial"

    def interrupt_once_written():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (partial.exists() and partial.stat().st_size):
            time.sleep(0.01)
        _thread.interrupt_main()  # what Jupyter's "interrupt the kernel" does

    threading.Thread(target=interrupt_once_written, daemon=True).start()
    with pytest.raises(daskinfer.Interrupted) as kept:
        daskinfer.run(cfg, client=client)
    assert 0 < len(read_jsonl(partial)) < 1600  # stopped mid-run

    def run_tasks(dask_scheduler):
        return [key for key in dask_scheduler.tasks if str(key).startswith("daskinfer-partition")]

    deadline = time.monotonic() + 30
    while client.run_on_scheduler(run_tasks) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.run_on_scheduler(run_tasks) == [] and kept.value is not None
