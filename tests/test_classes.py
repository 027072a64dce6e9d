"""Multi-class models, all scores, and evaluation against true labels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import pytest
from conftest import IMDB, rating_label, read_jsonl, run_cli
from test_errors import assert_user_error

import daskinfer

RATING_LABELS = ["awful", "bad", "good", "great"]


def rating_class(path) -> int:
    """aclImdb's 4-class reading of a rating: 1-2, 3-4, 7-8, 9-10."""
    rating = int(Path(path).stem.split("_")[1])
    return 0 if rating <= 2 else 1 if rating <= 4 else 2 if rating <= 8 else 3


@pytest.fixture(scope="module")
def four_class(tmp_path_factory, test_docs):
    """A softmax model over the four rating classes, and its in-process scores of the test docs."""
    import models as builder

    train = sorted((IMDB / "train").rglob("*.txt"))
    texts = [p.read_text("utf-8") for p in train]
    path, predict = builder.save_rating_classifier(
        tmp_path_factory.mktemp("classes"), texts, [rating_class(p) for p in train], 4
    )
    docs = sorted(str(p) for p in test_docs.glob("*.txt"))
    scores = predict([Path(p).read_text("utf-8") for p in docs])
    return path, dict(zip(docs, scores))


def expected_evaluation(true: Sequence[str], predicted: Sequence[str], labels: List[str]) -> Dict:
    """The figures, computed here with numpy from the records and the true labels."""
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=int)
    np.add.at(matrix, ([index[t] for t in true], [index[p] for p in predicted]), 1)
    tp = np.diag(matrix).astype(float)
    precision = np.divide(tp, matrix.sum(0), out=np.zeros_like(tp), where=matrix.sum(0) > 0)
    recall = np.divide(tp, matrix.sum(1), out=np.zeros_like(tp), where=matrix.sum(1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=precision + recall > 0)
    return {
        "accuracy": tp.sum() / matrix.sum(),
        "confusion_matrix": matrix.tolist(),
        "per_label": {
            label: {"precision": precision[i], "recall": recall[i], "f1": f1[i], "support": int(matrix[i].sum())}
            for i, label in enumerate(labels)
        },
    }


def assert_evaluation(found: Dict, expected: Dict, unlabeled: int) -> None:
    assert found["confusion_matrix"] == expected["confusion_matrix"]
    assert found["accuracy"] == pytest.approx(expected["accuracy"])
    assert list(found["per_label"]) == list(expected["per_label"])
    for label, figures in expected["per_label"].items():
        assert found["per_label"][label] == pytest.approx(figures), label
    assert found["unlabeled"] == unlabeled


def test_four_class_model_with_all_scores_and_evaluation(four_class, test_docs, tmp_path, on_client):
    path, reference = four_class
    out = tmp_path / "res.jsonl"
    run = run_cli(
        f"inference.model_path={path}", f"inference.input_data_dir={test_docs}", f"inference.output_path={out}",
        f"inference.labels=[{','.join(RATING_LABELS)}]", "inference.all_scores=true", "inference.labels_from=aclimdb",
        *on_client, cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    records = read_jsonl(out)
    assert [r["filepath"] for r in records] == sorted(reference)
    for r in records:
        expected = reference[r["filepath"]]
        top = int(np.argmax(expected))
        assert set(r) == {"time", "filepath", "logit_prob", "sentiment", "scores"}
        assert r["sentiment"] == RATING_LABELS[top]
        assert r["logit_prob"] == pytest.approx(float(expected[top]), abs=1e-5)
        assert list(r["scores"]) == RATING_LABELS
        assert list(r["scores"].values()) == pytest.approx(expected.tolist(), abs=1e-5)
    true = [RATING_LABELS[rating_class(r["filepath"])] for r in records]
    expected = expected_evaluation(true, [r["sentiment"] for r in records], RATING_LABELS)
    assert expected["accuracy"] >= 0.4  # four classes: chance is 0.25
    evaluation = json.loads((tmp_path / "summary.json").read_text())["evaluation"]
    assert_evaluation(evaluation, expected, unlabeled=0)
    assert evaluation["labels"] == RATING_LABELS
    log = [line.split(" - ", 1)[-1] for line in run.stderr_lines]
    start = log.index(f"Evaluation: accuracy {expected['accuracy']:.4f} on 1600 labeled documents")
    great = expected["per_label"]["great"]
    assert log[start + 5].split() == ["great", *(f"{great[k]:.4f}" for k in ("precision", "recall", "f1")), "481"]
    assert log[start + 7].split() == RATING_LABELS  # the confusion matrix's columns, then its rows
    assert log[start + 8].split() == ["awful", *map(str, expected["confusion_matrix"][0])]
    assert log[-2:] == ["  0 documents without a label", f"Output result location: {out}"]


def test_label_count_must_match_the_model(four_class, test_docs, tmp_path, on_client):
    out = tmp_path / "res.jsonl"
    run = run_cli(
        f"inference.model_path={four_class[0]}", f"inference.input_data_dir={test_docs}", f"inference.output_path={out}",
        *on_client, cwd=tmp_path,
    )
    # found when a worker loads the model, before any document is scored
    assert_user_error(run, "the model outputs 4 classes: inference.labels needs 4 labels", code=2, single_line=False)
    assert not out.exists() and not Path(f"{out}.partial").exists()


def test_binary_evaluation_from_file_names_with_all_scores(client, models, test_docs, reference_scores, tmp_path):
    cfg = daskinfer.load_config([
        f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={test_docs}",
        f"inference.output_path={tmp_path / 'res.jsonl'}", "inference.labels_from=aclimdb", "inference.all_scores=true",
    ])
    result = daskinfer.run(cfg, client=client)
    records = read_jsonl(result.output_uri)
    for r in records:
        score = reference_scores["keras"][r["filepath"]]
        assert r["logit_prob"] == pytest.approx(score, abs=1e-5)  # one sigmoid output: as before
        assert r["scores"] == pytest.approx({"negative": 1 - score, "positive": score}, abs=1e-5)
    true = ["positive" if rating_label(r["filepath"]) else "negative" for r in records]
    expected = expected_evaluation(true, [r["sentiment"] for r in records], ["negative", "positive"])
    assert expected["accuracy"] >= 0.7
    assert_evaluation(result.summary["evaluation"], expected, unlabeled=0)


def test_evaluation_from_folder_names(client, models, tmp_path):
    """aclImdb's own layout (test/pos, test/neg), as Keras' text_dataset_from_directory reads it."""
    cfg = daskinfer.load_config([
        f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={IMDB / 'test'}",
        "inference.recursive=true", "inference.labels=[neg,pos]", "inference.labels_from=parent_dir",
        f"inference.output_path={tmp_path / 'res.jsonl'}",
    ])
    records = read_jsonl(daskinfer.run(cfg, client=client).output_uri)
    assert len(records) == 1600
    true = [Path(r["filepath"]).parent.name for r in records]
    expected = expected_evaluation(true, [r["sentiment"] for r in records], ["neg", "pos"])
    assert expected["accuracy"] >= 0.7
    evaluation = json.loads((tmp_path / "summary.json").read_text())["evaluation"]
    assert_evaluation(evaluation, expected, unlabeled=0)


def test_folder_names_that_are_not_labels_are_counted_unlabeled(client, models, tmp_path):
    cfg = daskinfer.load_config([
        f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={IMDB / 'test'}",
        "inference.recursive=true", "inference.labels_from=parent_dir", f"inference.output_path={tmp_path / 'r.jsonl'}",
    ])
    evaluation = daskinfer.run(cfg, client=client).summary["evaluation"]
    assert evaluation["accuracy"] is None and evaluation["labeled"] == 0
    assert evaluation["unlabeled"] == 1600 and evaluation["unknown_labels"] == {"neg": 800, "pos": 800}


@pytest.mark.parametrize("override, message", [
    ("inference.labels_from=stars", "inference.labels_from must be aclimdb, parent_dir or null for document files"),
    ("inference.labels=[a,b,c]", "inference.labels_from=aclimdb gives 2 classes"),
    ("inference.input_format=parquet", "inference.labels_from for table inputs names a column, got aclimdb"),
])
def test_bad_evaluation_settings_are_refused(models, test_docs, tmp_path, override, message):
    run = run_cli(
        f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={test_docs}",
        "inference.labels_from=aclimdb", override, cwd=tmp_path,
    )
    assert_user_error(run, message, code=2)
