"""Models as users bring them, beyond one string in and one score out: several outputs (the
one to score named by inference.model_output), TensorFlow Text ops in a SavedModel, custom
layers in a submodule of a package, a model that fails on some texts, scalar string inputs."""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import assert_predictions, read_jsonl, run_cli
from test_errors import assert_user_error


@pytest.fixture(scope="module")
def docs(test_docs, tmp_path_factory) -> Path:
    """40 test reviews, both labels."""
    folder = tmp_path_factory.mktemp("outputs-docs")
    chosen = sorted(test_docs.glob("*.txt"))
    for path in chosen[:20] + chosen[-20:]:
        shutil.copyfile(path, folder / path.name)
    return folder


def scores_of(model, folder: Path, output=None) -> dict:
    """{path: the model's score in-process} of each document in folder (of output, if given)."""
    import tensorflow as tf

    paths = sorted(folder.glob("*.txt"))
    found = model(tf.constant([[p.read_text("utf-8")] for p in paths]), training=False)
    found = found if output is None else found[output]
    return {str(p): float(v) for p, v in zip(paths, tf.reshape(found, [-1]).numpy())}


@pytest.fixture(scope="module")
def headed(models, tmp_path_factory):
    """The trained sentiment model with a second, auxiliary sigmoid head: {kind: (path, name of
    the score output, {path: score})} for a .keras with dict and list outputs, the dict one
    exported as a SavedModel, and a .keras whose one output is a dict of one key."""
    import keras

    base = keras.saving.load_model(models["keras"][0], compile=False)
    inputs = keras.Input(shape=(1,), dtype="string")
    score = base(inputs)
    keras.utils.set_random_seed(5)
    aux = keras.layers.Dense(1, activation="sigmoid", name="aux")(keras.layers.Flatten()(score))
    root = tmp_path_factory.mktemp("headed")
    built = {"dict": keras.Model(inputs, {"score": score, "aux": aux}), "list": keras.Model(inputs, [score, aux]),
             "one-key": keras.Model(inputs, {"score": score})}
    found = {}
    for kind, model in built.items():
        model.save(root / f"{kind}.keras")
        name = "score" if kind != "list" else str(model.output_names[0])
        found[kind] = (root / f"{kind}.keras", name, model)
    built["dict"].export(str(root / "exported"), verbose=False)
    found["export"] = (root / "exported", "score", built["dict"])
    return found


@pytest.mark.parametrize("kind", ["dict", "list", "export"])
def test_a_model_of_several_outputs_is_scored_on_the_one_named(headed, docs, tmp_path, on_client, kind):
    """Scored on whichever output sorts first, such a model gave its auxiliary head as its
    scores with exit status 0: it is refused until inference.model_output names one."""
    path, name, model = headed[kind]
    common = (f"inference.model_path={path}", f"inference.input_data_dir={docs}", *on_client)
    refused = run_cli(*common, f"inference.output_path={tmp_path / 'refused.jsonl'}", cwd=tmp_path)
    assert_user_error(refused, "2 outputs (", "aux", name, "inference.model_output", code=2, single_line=False)
    assert not (tmp_path / "refused.jsonl").exists()
    wrong = run_cli(*common, "inference.model_output=logits", f"inference.output_path={tmp_path / 'w.jsonl'}",
                    cwd=tmp_path)
    assert_user_error(wrong, "no output 'logits'", "aux", name, code=2, single_line=False)

    index = 0 if kind == "list" else "score"
    run = run_cli(*common, f"inference.model_output={name}", f"inference.output_path={tmp_path / 'res.jsonl'}",
                  cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert_predictions(read_jsonl(tmp_path / "res.jsonl"), [str(p) for p in docs.glob("*.txt")],
                       scores_of(model, docs, index))


def test_a_model_whose_one_output_is_a_dict_is_scored_on_it(headed, docs, tmp_path, on_client):
    path, _, model = headed["one-key"]
    run = run_cli(f"inference.model_path={path}", f"inference.input_data_dir={docs}",
                  f"inference.output_path={tmp_path / 'res.jsonl'}", *on_client, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert_predictions(read_jsonl(tmp_path / "res.jsonl"), [str(p) for p in docs.glob("*.txt")],
                       scores_of(model, docs, "score"))


@pytest.fixture(scope="module")
def case_folding(models, tmp_path_factory):
    """(SavedModel folder, {path: score}): the sentiment model behind TF Text's case folding,
    exported, so that its graph holds an op only tensorflow_text registers."""
    tf_text = pytest.importorskip("tensorflow_text")
    import keras

    class CaseFold(keras.layers.Layer):
        def call(self, x):
            return tf_text.case_fold_utf8(x)

    base = keras.saving.load_model(models["keras"][0], compile=False)
    inputs = keras.Input(shape=(1,), dtype="string")
    model = keras.Model(inputs, base(CaseFold()(inputs)))
    folder = tmp_path_factory.mktemp("tftext") / "exported"
    model.export(str(folder), verbose=False)
    return folder, model


def test_a_savedmodel_using_tensorflow_text_ops_loads_on_fresh_workers(case_folding, docs, tmp_path):
    """Workers of its own (not the session's, where another test's keras_hub may have imported
    tensorflow_text): the op is unknown to TensorFlow until tensorflow_text is imported."""
    folder, model = case_folding
    run = run_cli(f"inference.model_path={folder}", f"inference.input_data_dir={docs}", "cluster.n_workers=1",
                  f"inference.output_path={tmp_path / 'res.jsonl'}", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert_predictions(read_jsonl(tmp_path / "res.jsonl"), [str(p) for p in docs.glob("*.txt")],
                       scores_of(model, docs))


def test_a_savedmodel_needing_tensorflow_text_where_workers_lack_it_names_it(case_folding, docs, tmp_path):
    folder, _ = case_folding
    lacking = tmp_path / "lacking" / "tensorflow_text"
    lacking.mkdir(parents=True)
    (lacking / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'tensorflow_text'\")\n")
    run = run_cli(f"inference.model_path={folder}", f"inference.input_data_dir={docs}", "cluster.n_workers=1",
                  f"inference.output_path={tmp_path / 'res.jsonl'}", cwd=tmp_path,
                  env=on_python_path(tmp_path / "lacking"))
    assert_user_error(run, "CaseFoldUTF8", "pip install tensorflow-text", code=1, single_line=False)


def on_python_path(folder: Path) -> dict:
    """The environment of a run whose driver and workers import from folder first."""
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))}


LAYERS = '''
import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="reviewtools")
class Lower(keras.layers.Layer):
    def call(self, x):
        return tf.strings.lower(x)


@keras.saving.register_keras_serializable(package="reviewtools")
class RefuseWord(keras.layers.Layer):
    """Fails on a batch holding a document with the word: as a model may on what it was not made for."""

    def __init__(self, word, **kwargs):
        super().__init__(**kwargs)
        self.word = word

    def get_config(self):
        return {**super().get_config(), "word": self.word}

    def call(self, x):
        found = tf.reduce_any(tf.strings.regex_full_match(x, "(?s).*" + self.word + ".*"))
        with tf.control_dependencies([tf.debugging.assert_equal(found, False, message="refused: " + self.word)]):
            return tf.identity(x)
'''


@pytest.fixture
def reviewtools(tmp_path, client, monkeypatch):
    """The package reviewtools, its layers in reviewtools.layers (the package's __init__ imports
    nothing), importable here and on the session's workers."""
    root = tmp_path / "site"
    (root / "reviewtools").mkdir(parents=True)
    (root / "reviewtools" / "__init__.py").write_text('"""Layers for review models."""\n')
    (root / "reviewtools" / "layers.py").write_text(textwrap.dedent(LAYERS))
    monkeypatch.syspath_prepend(str(root))
    client.run(_on_path, str(root), True)
    import reviewtools.layers

    yield reviewtools.layers
    client.run(_on_path, str(root), False)


def _on_path(folder: str, on: bool) -> None:
    """On a worker: folder put on, or taken off, its sys.path."""
    sys.path.insert(0, folder) if on else sys.path.remove(folder)


def build_with(models, *layers):
    import keras

    base = keras.saving.load_model(models["keras"][0], compile=False)
    inputs = keras.Input(shape=(1,), dtype="string")
    x = inputs
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, base(x))


def test_a_custom_layer_in_a_submodule_of_a_package_loads(reviewtools, models, docs, tmp_path, on_client):
    model = build_with(models, reviewtools.Lower())
    model.save(tmp_path / "lower.keras")
    run = run_cli(f"inference.model_path={tmp_path / 'lower.keras'}", f"inference.input_data_dir={docs}",
                  f"inference.output_path={tmp_path / 'res.jsonl'}", *on_client, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert_predictions(read_jsonl(tmp_path / "res.jsonl"), [str(p) for p in docs.glob("*.txt")],
                       scores_of(model, docs))


def test_a_model_failing_on_the_warm_up_text_scores_the_rest(reviewtools, models, docs, tmp_path, on_client):
    """The model fails on documents with "warm-up" in them, as on the first text a worker warms
    it up with: that document is an error entry, the rest are scored."""
    model = build_with(models, reviewtools.Lower(), reviewtools.RefuseWord("warm-up"))
    model.save(tmp_path / "refusing.keras")
    folder = tmp_path / "docs"
    shutil.copytree(docs, folder)
    (folder / "warm.txt").write_text("The warm-up act was better than the film.", encoding="utf-8")
    expected = scores_of(model, docs)
    run = run_cli(f"inference.model_path={tmp_path / 'refusing.keras'}", f"inference.input_data_dir={folder}",
                  f"inference.output_path={tmp_path / 'res.jsonl'}", "inference.error_budget=0.5", *on_client,
                  cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert_predictions(read_jsonl(tmp_path / "res.jsonl"), [str(folder / Path(p).name) for p in expected],
                       {str(folder / Path(p).name): score for p, score in expected.items()})
    errors = read_jsonl(tmp_path / "errors.jsonl")
    assert [e["filepath"] for e in errors] == [str(folder / "warm.txt")] and "refused: warm-up" in errors[0]["error"]


def test_a_model_failing_on_every_text_is_one_line(reviewtools, models, docs, tmp_path):
    """No TensorFlow log line before it: the worker's TensorFlow error is not shipped along to
    the driver, where unpickling it imported TensorFlow. Workers of its own: on the session's
    cluster this driver never starts TensorFlow's logging."""
    model = build_with(models, reviewtools.RefuseWord(""))
    model.save(tmp_path / "broken.keras")
    run = run_cli(f"inference.model_path={tmp_path / 'broken.keras'}", f"inference.input_data_dir={docs}",
                  f"inference.output_path={tmp_path / 'res.jsonl'}", "cluster.n_workers=1", cwd=tmp_path,
                  env=on_python_path(Path(reviewtools.__file__).parents[1]))
    assert_user_error(run, "could not load model", ": assertion failed: [refused: ]", code=1, single_line=False)
    assert all("[daskinfer][INFO]" in line for line in run.stderr_lines[:-1]), run.stderr


def test_a_signature_of_one_string_per_batch_is_refused_in_one_line(docs, tmp_path, on_client):
    import tensorflow as tf

    class Scalar(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([], tf.string, name="text")])
        def serve(self, text):
            return {"score": tf.reshape(tf.cast(tf.strings.length(text), tf.float32), [1, 1])}

    module = Scalar()
    tf.saved_model.save(module, str(tmp_path / "scalar"), signatures={"serving_default": module.serve})
    run = run_cli(f"inference.model_path={tmp_path / 'scalar'}", f"inference.input_data_dir={docs}",
                  f"inference.output_path={tmp_path / 'res.jsonl'}", *on_client, cwd=tmp_path)
    assert_user_error(run, "text: string of shape ()", "not one string input per document", code=2,
                      single_line=False)
