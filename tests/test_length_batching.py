"""Length-aware batching: documents of similar length scored together, records still in
input order and equal to the model called on each document alone; transformer models users
bring (keras-hub), and models daskinfer cannot feed, refused in one line."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import IMDB, rating_label, read_jsonl, read_labeled, run_cli
from test_errors import assert_user_error


@pytest.fixture(scope="module")
def attention(tmp_path_factory):
    """(model path, 400 test reviews folder, {path: score of the model on that review alone})."""
    import models as builder
    import tensorflow as tf

    texts, labels = read_labeled(IMDB / "train")
    model = builder.train_attention(texts, labels)
    root = tmp_path_factory.mktemp("attention")
    model.save(root / "attention.keras")
    docs = root / "docs"
    docs.mkdir()
    sources = sorted((IMDB / "test").glob("*/*.txt"))[::4]
    for source in sources:
        shutil.copyfile(source, docs / source.name)
    alone = {str(docs / s.name): float(model(tf.constant([[s.read_text("utf-8")]]))[0, 0]) for s in sources}
    return root / "attention.keras", docs, alone


@pytest.mark.parametrize("batching", ["true", "false"])
def test_records_equal_the_model_on_each_document_alone(attention, tmp_path, batching):
    model, docs, alone = attention
    out = tmp_path / "res.jsonl"
    run = run_cli(f"inference.model_path={model}", f"inference.input_data_dir={docs}", f"inference.output_path={out}",
                  f"inference.length_batching={batching}", "inference.batch_size=64", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    records = read_jsonl(out)
    assert [r["filepath"] for r in records] == sorted(alone)
    for r in records:
        assert abs(r["logit_prob"] - alone[r["filepath"]]) <= 1e-5, r["filepath"]
    accuracy = np.mean([(r["sentiment"] == "positive") == rating_label(r["filepath"]) for r in records])
    assert accuracy >= 0.7, accuracy
    assert not json.loads((tmp_path / "summary.json").read_text())["padding_changes_scores"]  # masked
    assert "padding" not in run.stderr


def test_a_model_whose_scores_change_with_padding_is_said_to_and_scores_alone_with_batches_of_one(tmp_path):
    """An Embedding without mask_zero averages the batch's padding in: a run says so at its
    end, and inference.batch_size=1 then gives each document's score alone."""
    import keras
    import tensorflow as tf

    from models import clean_for_vocabulary

    sources = sorted((IMDB / "test").glob("*/*.txt"))[::40]
    texts = [s.read_text("utf-8") for s in sources]
    keras.utils.set_random_seed(6)
    vectorize = keras.layers.TextVectorization(max_tokens=2000)
    vectorize.adapt(tf.constant(clean_for_vocabulary(texts)))
    inputs = keras.Input(shape=(1,), dtype="string")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(2001, 8)(vectorize(inputs)))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(pooled))
    model.save(tmp_path / "unmasked.keras")
    docs = tmp_path / "docs"
    docs.mkdir()
    for source in sources:
        shutil.copyfile(source, docs / source.name)
    alone = {str(docs / s.name): float(model(tf.constant([[t]]))[0, 0]) for s, t in zip(sources, texts)}
    common = [f"inference.model_path={tmp_path / 'unmasked.keras'}", f"inference.input_data_dir={docs}",
              "cluster.n_workers=1"]
    batched = run_cli(*common, f"inference.output_path={tmp_path / 'a' / 'res.jsonl'}", cwd=tmp_path)
    assert batched.returncode == 0, batched.stderr
    assert "scores a document otherwise when its batch pads it" in batched.stderr
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["padding_changes_scores"]
    assert max(abs(r["logit_prob"] - alone[r["filepath"]]) for r in read_jsonl(tmp_path / "a" / "res.jsonl")) > 1e-4
    one = run_cli(*common, "inference.batch_size=1", f"inference.output_path={tmp_path / 'b' / 'res.jsonl'}", cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    assert "padding" not in one.stderr
    records = read_jsonl(tmp_path / "b" / "res.jsonl")
    assert [r["filepath"] for r in records] == sorted(alone)
    assert [abs(r["logit_prob"] - alone[r["filepath"]]) <= 1e-5 for r in records] == [True] * len(records)


def test_batches_hold_similar_lengths_within_the_budget():
    from daskinfer.predict import Text, batches

    rng = random.Random(5)
    texts = [Text(f"d{i}", "x" * rng.choice([3, 40, 400, 4000, 50_000]), i) for i in range(3000)]
    formed = list(batches(texts, batch_size=256, max_chars=100_000))
    assert sorted(t.position for b in formed for t in b) == list(range(3000))  # each once
    for batch in formed:
        longest = max(len(t.text) for t in batch)
        assert len(batch) <= 256
        assert len(batch) * longest <= 100_000 or len(batch) == 1  # one document longer than the budget goes alone
    lengths = [len(t.text) for b in formed for t in b]
    assert lengths == sorted(lengths)
    assert [len(b) for b in formed if len(b[0].text) == 3][0] == 256  # short ones travel in full batches
    in_order = list(batches(texts, batch_size=256, max_chars=None, by_length=False))
    assert [t.position for b in in_order for t in b] == list(range(3000)) and len(in_order) == 12
    # input order within a configured budget: no batch past it (a worker's memory)
    bounded = list(batches(texts, batch_size=256, max_chars=100_000, by_length=False))
    assert [t.position for b in bounded for t in b] == list(range(3000))
    assert all(len(b) * max(len(t.text) for t in b) <= 100_000 or len(b) == 1 for b in bounded)
    short = [Text(f"s{i}", "x" * 40, i) for i in range(300)]
    assert [len(b) for b in batches(short, batch_size=256, max_chars=100_000, by_length=False)] == [256, 44]


def test_one_traced_graph_whatever_the_lengths(attention):
    """A model called with many padded lengths does not retrace per shape."""
    from daskinfer import model as models

    path, _, _ = attention
    predict = models.predictor(models.ModelSpec(str(path)))
    for words in (1, 7, 60, 333, 1200):
        predict([" ".join(["good"] * words)] * 3)
    assert predict.traces() == 1


def test_the_batch_budget_follows_how_the_model_pads(models, attention, tmp_path):
    """Small batches for a model that pads each batch to its longest document, Keras or
    SavedModel; a model of fixed length keeps large ones; a configured budget wins."""
    import keras
    from daskinfer import model as loader
    from daskinfer.predict import (FIXED_LENGTH_BUDGET, LENGTH_PADDED_BUDGET, MEMORY_GUARD_BUDGET, Settings,
                                   batch_budget)

    inputs = keras.Input(shape=(1,), dtype="string")
    words = keras.Sequential([keras.layers.TextVectorization(vocabulary=["good", "bad"], output_mode="tf_idf",
                                                             idf_weights=[1.0, 1.0])])  # nested, counts
    keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(words(inputs))).save(tmp_path / "tfidf.keras")
    keras.saving.load_model(attention[0]).export(str(tmp_path / "attention-export"), verbose=False)
    expected = {models["keras"][0]: FIXED_LENGTH_BUDGET, tmp_path / "tfidf.keras": FIXED_LENGTH_BUDGET,
                models["keras3-export"][0]: FIXED_LENGTH_BUDGET, models["tf-keras2-savedmodel"][0]: FIXED_LENGTH_BUDGET,
                attention[0]: LENGTH_PADDED_BUDGET, tmp_path / "attention-export": LENGTH_PADDED_BUDGET}
    for path, budget in expected.items():
        spec = loader.ModelSpec(str(path))
        predict = loader.predictor(spec)
        assert batch_budget(Settings(model=spec), predict) == budget, path
        assert batch_budget(Settings(model=spec, max_batch_chars=1000), predict) == 1000
        # length-aware batching off: input order, only a memory guard unless a budget is configured
        assert batch_budget(Settings(model=spec, length_batching=False), predict) == MEMORY_GUARD_BUDGET
        assert batch_budget(Settings(model=spec, length_batching=False, max_batch_chars=1000), predict) == 1000
    assert LENGTH_PADDED_BUDGET < FIXED_LENGTH_BUDGET < MEMORY_GUARD_BUDGET


def test_a_vectorizer_inside_a_custom_layer_is_seen():
    """A TextVectorization held by a custom layer (not in any .layers list) that pads to the
    longest document makes the model length-padded, whatever the others do."""
    import keras
    from daskinfer import predictors

    class Words(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.vectorize = keras.layers.TextVectorization(vocabulary=["good", "bad"])  # no fixed length

        def call(self, x):
            return self.vectorize(x)

    inputs = keras.Input(shape=(1,), dtype="string")
    fixed = keras.layers.TextVectorization(vocabulary=["good", "bad"], output_sequence_length=4)(inputs)
    pooled = [keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(4, 2)(x)) for x in (fixed, Words()(inputs))]
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Concatenate()(pooled)))
    assert not predictors.vectorizes_to_fixed_length(model)
    without = keras.Model(inputs, keras.layers.Dense(1)(pooled[0]))
    assert predictors.vectorizes_to_fixed_length(without)


def test_tasks_batch_within_the_model_budget(models, attention, monkeypatch):
    """What a task does with the budget: the batches that reach each model keep within the
    model's own budget, or the configured one; with length-aware batching off, the memory guard."""
    from daskinfer import model as loader
    from daskinfer import predict as scoring

    seen, real = [], scoring.batches

    def recorded(*args, **kwargs):
        seen.append(list(real(*args, **kwargs)))
        return iter(seen[-1])

    def padded(batch):
        return len(batch) * max(len(t.text) for t in batch)

    monkeypatch.setattr(scoring, "batches", recorded)
    texts = [p.read_text("utf-8") for p in sorted(attention[1].glob("*.txt"))[:200]]
    for path, configured, budget in ((attention[0], None, scoring.LENGTH_PADDED_BUDGET),
                                     (models["keras"][0], None, scoring.FIXED_LENGTH_BUDGET),
                                     (attention[0], 4000, 4000)):
        settings = scoring.Settings(model=loader.ModelSpec(str(path)), max_batch_chars=configured)
        out = scoring.Scored()
        scoring.score_texts([scoring.Text(str(i), t, i) for i, t in enumerate(texts)], settings, out)
        assert len(out.records) == len(texts) and not out.errors
        formed = seen.pop()
        assert all(padded(b) <= budget or len(b) == 1 for b in formed), path
        assert max(map(padded, formed)) > budget // 2  # this budget, not a smaller one
    # length-aware batching off: batches of batch_size in input order, as batch scripts form
    # them, within the memory guard alone
    settings = scoring.Settings(model=loader.ModelSpec(str(attention[0])), batch_size=64, length_batching=False)
    out = scoring.Scored()
    scoring.score_texts([scoring.Text(str(i), t, i) for i, t in enumerate(texts)], settings, out)
    formed = seen.pop()
    assert [len(b) for b in formed] == [64, 64, 64, 8]
    assert [t.position for b in formed for t in b] == list(range(len(texts)))
    assert max(map(padded, formed)) > scoring.FIXED_LENGTH_BUDGET  # the model's own budget did not cut them
    huge = [scoring.Text(str(i), "x" * 20_000, i) for i in range(64)]  # 64 x 20,000 characters, one word each
    scoring.score_texts(huge, settings, scoring.Scored())
    assert all(padded(b) <= scoring.MEMORY_GUARD_BUDGET for b in seen.pop())


def test_keras_hub_classifier_scored_end_to_end(tmp_path):
    """A keras_hub text classifier with its preprocessor (raw strings in), trained briefly
    from scratch (a tiny BERT, a WordPiece vocabulary of its own), saved as .keras."""
    pytest.importorskip("keras_hub")
    texts, labels = read_labeled(IMDB / "train")
    picked = random.Random(3).sample(range(len(texts)), 64)  # a few steps: its scores are compared, not its accuracy
    docs = tmp_path / "docs"
    docs.mkdir()
    scoring = sorted((IMDB / "test").glob("*/*.txt"))[::32]
    for source in scoring:
        shutil.copyfile(source, docs / source.name)
    code = textwrap.dedent("""
        import json, os, sys
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        import keras, keras_hub, tensorflow as tf
        keras.utils.set_random_seed(4)
        texts, labels = json.load(open(sys.argv[1]))
        vocab = keras_hub.tokenizers.compute_word_piece_vocabulary(tf.data.Dataset.from_tensor_slices(texts), 1000,
                                                                   reserved_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
        tokenizer = keras_hub.tokenizers.BertTokenizer(vocabulary=vocab, lowercase=True)
        preprocessor = keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=64)
        backbone = keras_hub.models.BertBackbone(vocabulary_size=len(vocab), num_layers=1, num_heads=2, hidden_dim=32,
                                                 intermediate_dim=64, max_sequence_length=64)
        classifier = keras_hub.models.BertTextClassifier(backbone, num_classes=2, preprocessor=preprocessor,
                                                         activation="softmax")
        classifier.compile(optimizer=keras.optimizers.Adam(0.003), loss="sparse_categorical_crossentropy")
        classifier.fit(x=texts, y=labels, batch_size=32, epochs=1, verbose=0)
        classifier.save(sys.argv[2])
        scoring = [open(p, encoding="utf-8").read() for p in sys.argv[4:]]
        json.dump(classifier.predict(scoring, batch_size=16, verbose=0).tolist(), open(sys.argv[3], "w"))
    """)
    data = tmp_path / "train.json"
    data.write_text(json.dumps([[texts[i] for i in picked], [labels[i] for i in picked]]))
    model, expected = tmp_path / "bert.keras", tmp_path / "expected.json"
    paths = sorted(str(docs / s.name) for s in scoring)
    built = subprocess.run([sys.executable, "-c", code, str(data), str(model), str(expected), *paths],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    scores = dict(zip(paths, json.loads(expected.read_text())))
    out = tmp_path / "res.jsonl"
    run = run_cli(f"inference.model_path={model}", f"inference.input_data_dir={docs}", f"inference.output_path={out}",
                  "inference.all_scores=true", "cluster.n_workers=1", cwd=tmp_path)  # one keras_hub model load
    assert run.returncode == 0, run.stderr
    assert "Skipping variable loading for optimizer" not in run.stderr  # a run never uses the optimizer
    records = read_jsonl(out)
    assert [r["filepath"] for r in records] == paths
    for r in records:
        negative, positive = scores[r["filepath"]]
        assert abs(r["scores"]["positive"] - positive) <= 1e-5 and abs(r["scores"]["negative"] - negative) <= 1e-5
        assert r["sentiment"] == ("positive" if positive > 0.5 else "negative")
        assert abs(r["logit_prob"] - positive) <= 1e-5  # the positive class's score, as for a sigmoid model
    from daskinfer import model as loader

    assert loader.predictor(loader.ModelSpec(str(model))).fixed_length  # its packer pads to sequence_length


def test_a_model_that_takes_token_ids_is_refused_in_one_line(test_docs, tmp_path, on_client):
    import tensorflow as tf

    class TokenIds(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="input_ids")])
        def serve(self, input_ids):
            return {"score": tf.sigmoid(tf.reduce_mean(tf.cast(input_ids, tf.float32), axis=1))}

    module = TokenIds()
    tf.saved_model.save(module, str(tmp_path / "ids-model"), signatures={"serving_default": module.serve})
    run = run_cli(f"inference.model_path={tmp_path / 'ids-model'}", f"inference.input_data_dir={test_docs}",
                  f"inference.output_path={tmp_path / 'res.jsonl'}", *on_client, cwd=tmp_path)
    assert_user_error(run, "input_ids: int32, not one string input", "tokenizes it inside", code=2, single_line=False)
    assert not (tmp_path / "res.jsonl").exists()


def test_a_model_needing_a_package_the_workers_lack_names_it(test_docs, tmp_path, on_client, monkeypatch):
    """A .keras model with a custom layer from a package of its own, loaded where that package
    is not installed (built here, where it is importable): one line naming the package."""
    package = tmp_path / "pkg" / "reviewlayers"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent("""
        import keras

        @keras.saving.register_keras_serializable(package="reviewlayers")
        class Lower(keras.layers.Layer):
            def call(self, x):
                import tensorflow as tf
                return tf.strings.lower(x)
    """))
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    import keras
    import reviewlayers

    vectorize = keras.layers.TextVectorization(max_tokens=50, output_sequence_length=8, vocabulary=["good", "bad"])
    inputs = keras.Input(shape=(1,), dtype="string")
    x = keras.layers.Embedding(52, 4)(vectorize(reviewlayers.Lower()(inputs)))
    outputs = keras.layers.Dense(1, activation="sigmoid")(keras.layers.GlobalAveragePooling1D()(x))
    model = tmp_path / "custom.keras"
    keras.Model(inputs, outputs).save(model)
    run = run_cli(f"inference.model_path={model}", f"inference.input_data_dir={test_docs}",
                  f"inference.output_path={tmp_path / 'res.jsonl'}", *on_client, cwd=tmp_path)
    assert_user_error(run, "needs the Python package 'reviewlayers'", code=1, single_line=False)


def test_a_model_with_a_class_defined_in_the_training_scripts_main_names_the_class(test_docs, tmp_path, on_client):
    """A custom layer defined in the script that trained and saved the model: Keras' own
    message names the class only after a page of config; the one line names it."""
    code = textwrap.dedent("""
        import sys
        import keras

        class Halver(keras.layers.Layer):
            def call(self, x):
                return x / 2

        vectorize = keras.layers.TextVectorization(max_tokens=50, output_sequence_length=8, vocabulary=["good", "bad"])
        inputs = keras.Input(shape=(1,), dtype="string")
        x = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(52, 4)(vectorize(inputs)))
        keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(Halver()(x))).save(sys.argv[1])
    """)
    model = tmp_path / "halver.keras"
    built = subprocess.run([sys.executable, "-c", code, str(model)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    run = run_cli(f"inference.model_path={model}", f"inference.input_data_dir={test_docs}",
                  f"inference.output_path={tmp_path / 'res.jsonl'}", *on_client, cwd=tmp_path)
    assert_user_error(run, "could not locate class 'Halver'", "__main__", code=1, single_line=False)
