"""The Python API that notebooks use, on a LocalCluster owned by the test."""

from __future__ import annotations

import json

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
