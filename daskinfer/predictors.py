"""A model file made into a predictor: a function from a batch of raw strings to the one
output daskinfer scores, one row per document. model.py decides when to load; this module
knows how each format is called."""

from __future__ import annotations

import importlib
import re
import zipfile
from collections.abc import Mapping
from typing import Any, Callable, Optional, Sequence

import numpy as np

from daskinfer import compat, keras_archive
from daskinfer.errors import ModelLoadError, NotATextModel, this_worker

Predictor = Callable[[list], Any]

TOKEN_IDS_ADVICE = (
    "daskinfer feeds raw strings: save a model that takes text and tokenizes it inside "
    "(a Keras TextVectorization layer, or a keras_hub classifier with its preprocessor), see README"
)

# Packages whose import registers TensorFlow ops a SavedModel may use (TF Text's tokenizers,
# which keras_hub's and TF Hub's text models export with): imported only when a load fails on
# an op TensorFlow does not know, since importing costs every worker time at start.
OP_PACKAGES = {"tensorflow_text": "tensorflow-text"}


def build(tf, fmt: str, path: str, output: Optional[str] = None) -> Predictor:
    """The predictor of the model at path (fmt "keras" or "savedmodel"), scoring the output
    named output, which may be None when the model has one."""
    return keras_predictor(tf, path, output) if fmt == "keras" else savedmodel_predictor(tf, path, output)


def savedmodel_predictor(tf, path: str, output: Optional[str] = None) -> Predictor:
    loaded = _load_savedmodel(tf, path)
    signatures = loaded.signatures
    if not signatures:
        raise ValueError("the SavedModel has no serving signature")
    fn = signatures.get("serving_default") or next(iter(signatures.values()))
    _, inputs = fn.structured_input_signature
    kinds = ", ".join(f"{name}: {spec.dtype.name}" for name, spec in sorted(inputs.items()))
    (name, spec), = inputs.items() if len(inputs) == 1 else ((None, None),)
    if spec is None or spec.dtype != tf.string or spec.shape.rank not in (None, 1, 2):
        shape = f" of shape {spec.shape}" if spec is not None and spec.dtype == tf.string else ""
        raise NotATextModel(f"its serving signature takes {kinds}{shape}, not one string input per document; "
                            f"{TOKEN_IDS_ADVICE}")
    column = spec.shape.rank == 2
    key = choose_output(fn.structured_outputs, output)

    def predict(texts: list):
        found = fn(**{name: _string_batch(tf, texts, column)})
        return (found if key is None else found[key]).numpy()

    predict.model = loaded  # keep the trackable objects alive with the function
    widths = compat.padded_widths(fn.graph)  # none: it tokenizes some other way, unknown here
    predict.fixed_length = bool(widths) and None not in widths
    return predict


def _load_savedmodel(tf, path: str):
    """tf.saved_model.load, importing the package that registers an op the graph uses where
    TensorFlow does not know it yet; a package this worker lacks is named in one line."""
    try:
        return tf.saved_model.load(path)
    except Exception as exc:  # a RuntimeError, as TensorFlow 2.21 raises it
        op = re.search(r"Op type not registered '([^']+)'", str(exc))
        if not op:
            raise
    if any([_imports(package) for package in OP_PACKAGES]):
        try:
            return tf.saved_model.load(path)
        except Exception as exc:
            if f"'{op.group(1)}'" not in str(exc):
                raise
    wanted = " or ".join(f"pip install {name}" for name in OP_PACKAGES.values())
    raise ModelLoadError(f"its graph uses the TensorFlow op '{op.group(1)}', which no package {this_worker()} has "
                         f"registers: install the package the model was exported with on every worker (for "
                         f"tokenizer ops: {wanted})")


def _imports(package: str) -> bool:
    try:
        importlib.import_module(package)
        return True
    except ImportError:
        return False


def keras_predictor(tf, path: str, output: Optional[str] = None) -> Predictor:
    import keras

    if not zipfile.is_zipfile(path):  # Keras would say "File not found" of it
        raise ModelLoadError("it is not a .keras file: not a zip archive (truncated or corrupt?)")
    keras_archive.import_modules_of(path)
    keras_archive.check_vocabularies(path)
    model = keras.saving.load_model(path, compile=False)
    preprocessor = getattr(model, "preprocessor", None)  # a keras_hub task: text in, through it
    if preprocessor is not None:
        column, forward = False, lambda x: model(preprocessor(x), training=False)
        # keras_hub's packers pad every document to the preprocessor's sequence_length
        fixed = getattr(preprocessor, "sequence_length", None) is not None
    elif len(model.inputs) == 1 and model.inputs[0].dtype == "string" and len(model.inputs[0].shape) in (1, 2):
        column, forward = len(model.inputs[0].shape) == 2, lambda x: model(x, training=False)
        fixed = vectorizes_to_fixed_length(model)
    else:
        kinds = ", ".join(f"{i.name}: {i.dtype} {tuple(i.shape)}" for i in model.inputs)
        raise NotATextModel(f"it takes {kinds}, not one string input per document; {TOKEN_IDS_ADVICE}")
    spec = tf.TensorSpec((None, 1) if column else (None,), tf.string)
    # One traced graph for every batch, whatever its documents' lengths (the batch is a
    # vector of strings; tokenizing and padding happen inside): no retracing per shape,
    # and calling the tf.function would match its signature again on every batch (~0.1 ms).
    function = tf.function(forward, input_signature=[spec])
    call = function.get_concrete_function()
    key = choose_output(call.structured_outputs, output, _output_names(model))

    def predict(texts: list):
        found = call(_string_batch(tf, texts, column))
        return (found if key is None else found[key]).numpy()

    predict.traces = function.experimental_get_tracing_count  # 1, whatever the batches (tested)
    predict.fixed_length = fixed
    return predict


def _output_names(model) -> Sequence[str]:
    """A Keras model's outputs by name; none for a model that does not know them (a subclassed
    one, whose outputs exist only once called: its list's outputs go by index)."""
    try:
        return tuple(model.output_names or ())
    except Exception:
        return ()


def choose_output(outputs: Any, wanted: Optional[str], names: Sequence[str] = ()) -> Any:
    """Where in outputs (what a call of the model returns) the output to score is: None for a
    lone tensor, else the key or index of the only output, or of the one wanted names
    (inference.model_output). names: a list's outputs by name (a Keras model's output_names).

    Scoring whichever output sorts first would give a model's logits, or an auxiliary head,
    as its scores without a word: a model of several outputs must be told which one."""
    if isinstance(outputs, Mapping):
        keys = {str(k): k for k in outputs}
    elif isinstance(outputs, (list, tuple)):
        labels = [str(n) for n in names] if len(names) == len(outputs) else [str(i) for i in range(len(outputs))]
        keys = dict(zip(labels, range(len(outputs))))
    else:
        if wanted is not None and wanted not in names:
            called = f" ({', '.join(map(str, names))})" if names else ""
            raise NotATextModel(f"it has one output{called}, not '{wanted}': set inference.model_output=null")
        return None
    if wanted is None and len(keys) != 1:
        raise NotATextModel(f"it has {len(keys)} outputs ({', '.join(keys) or 'none'}): set inference.model_output "
                            "to the one that scores the documents")
    if wanted is not None and wanted not in keys:
        raise NotATextModel(f"it has no output '{wanted}'; its outputs: {', '.join(keys)}")
    key = keys[wanted] if wanted is not None else next(iter(keys.values()))
    if isinstance(outputs[key], (Mapping, list, tuple)):
        raise NotATextModel(f"its output '{wanted or next(iter(keys))}' holds several tensors, not one score per "
                            "class of each document")
    return key


def vectorizes_to_fixed_length(model) -> bool:
    """Whether every TextVectorization in model (however deep) gives each document the
    same width whatever its length: a fixed output_sequence_length, or counts over the
    vocabulary. False when there is none: the model tokenizes some other way, unknown here."""
    import keras

    found = []
    for layer in compat.sublayers(model):
        if isinstance(layer, keras.layers.TextVectorization):
            config = layer.get_config()
            found.append(config.get("output_mode") != "int" or config.get("output_sequence_length") is not None)
    return bool(found) and all(found)


def _string_batch(tf, texts: list, column: bool):
    """texts as the model's string input, shaped (n,) or (n, 1); shaped in numpy, which
    costs less than one more TensorFlow op per batch."""
    array = np.array(texts, dtype=object)
    return tf.constant(array.reshape(-1, 1) if column else array, dtype=tf.string)
