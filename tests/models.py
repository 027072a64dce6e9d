"""Small real sentiment models, trained by the tests on ../shared/data/imdb-sample/train
and saved in every format daskinfer reads."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Keras 3 stores a TextVectorization vocabulary joined by "\n" and reads it back with
# splitlines(): a token holding one of these would make the .keras file unloadable.
LINE_BREAKERS = {c: " " for c in (0x0B, 0x0C, 0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029)}


def clean_for_vocabulary(texts: Sequence[str]) -> List[str]:
    return [t.translate(LINE_BREAKERS) for t in texts]


def train_keras3(texts: Sequence[str], labels: Sequence[int], vocabulary_texts=None, classes: int = 1):
    """A Keras 3 model with one sigmoid output, or a softmax over `classes` classes."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(1)
    vectorize = keras.layers.TextVectorization(max_tokens=10000, output_sequence_length=200)
    vectorize.adapt(tf.constant(vocabulary_texts or clean_for_vocabulary(texts)))
    inputs = keras.Input(shape=(1,), dtype="string")
    x = keras.layers.Embedding(10001, 16)(vectorize(inputs))
    x = keras.layers.GlobalAveragePooling1D()(x)
    if classes == 1:
        outputs, loss = keras.layers.Dense(1, activation="sigmoid")(x), "binary_crossentropy"
    else:
        outputs, loss = keras.layers.Dense(classes, activation="softmax")(x), "sparse_categorical_crossentropy"
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(0.01), loss)
    model.fit(tf.constant(list(texts))[:, None], tf.constant(labels), epochs=8, batch_size=64, verbose=0)
    return model


def train_tf_keras2(texts: Sequence[str], labels: Sequence[int]):
    """A legacy tf.keras 2 model (tf-keras), as MLflow logged them with TensorFlow 2.x."""
    import tensorflow as tf
    import tf_keras

    tf_keras.utils.set_random_seed(2)
    vectorize = tf_keras.layers.TextVectorization(max_tokens=10000, output_sequence_length=200)
    vectorize.adapt(clean_for_vocabulary(texts))
    inputs = tf_keras.Input(shape=(), dtype="string")
    x = tf_keras.layers.Embedding(10001, 16)(vectorize(inputs))
    x = tf_keras.layers.GlobalAveragePooling1D()(x)
    outputs = tf_keras.layers.Dense(1, activation="sigmoid")(x)
    model = tf_keras.Model(inputs, outputs)
    model.compile(tf_keras.optimizers.Adam(0.01), "binary_crossentropy")
    model.fit(tf.constant(list(texts)), np.asarray(labels), epochs=8, batch_size=64, verbose=0)
    return model


def write_mlflow_model(folder: Path, legacy_model) -> Path:
    """An MLflow model folder as mlflow.keras.log_model wrote it with TF 2.x: MLmodel + data/model."""
    folder.mkdir(parents=True)
    legacy_model.save(str(folder / "data" / "model"))
    (folder / "MLmodel").write_text(
        textwrap.dedent(
            """\
            artifact_path: model
            flavors:
              keras:
                data: data
                keras_module: tensorflow.keras
                keras_version: 2.15.0
                save_format: tf
              python_function:
                data: data
                env: conda.yaml
                loader_module: mlflow.keras
                python_version: 3.11.7
            run_id: 0123456789abcdef0123456789abcdef
            utc_time_created: '2022-01-06 06:30:00.000000'
            """
        )
    )
    return folder


def save_all(root: Path, texts: Sequence[str], labels: Sequence[int]) -> Dict[str, tuple]:
    """{format: (model path, in-process predict function)} for every supported format."""
    import tensorflow as tf

    keras3 = train_keras3(texts, labels)
    legacy = train_tf_keras2(texts, labels)
    keras_file = root / "sentiment.keras"
    keras3.save(keras_file)
    exported = root / "exported"
    keras3.export(str(exported), verbose=False)
    legacy_dir = root / "legacy-savedmodel"
    legacy.save(str(legacy_dir))
    mlflow_dir = write_mlflow_model(root / "mlflow-run" / "artifacts" / "model", legacy)

    def keras3_predict(batch: Sequence[str]) -> np.ndarray:
        return keras3.predict(tf.constant(list(batch))[:, None], batch_size=256, verbose=0).ravel()

    def legacy_predict(batch: Sequence[str]) -> np.ndarray:
        return legacy.predict(tf.constant(list(batch)), batch_size=256, verbose=0).ravel()

    return {
        "keras": (keras_file, keras3_predict),
        "keras3-export": (exported, keras3_predict),
        "tf-keras2-savedmodel": (legacy_dir, legacy_predict),
        "mlflow": (mlflow_dir, legacy_predict),
    }


def save_rating_classifier(root: Path, texts: Sequence[str], classes: Sequence[int], k: int) -> tuple:
    """(model path, in-process predict -> (N, k) scores) for a softmax over k classes."""
    import tensorflow as tf

    model = train_keras3(texts, classes, classes=k)
    path = root / f"classes-{k}.keras"
    model.save(path)

    def predict(batch: Sequence[str]) -> np.ndarray:
        return model.predict(tf.constant(list(batch))[:, None], batch_size=256, verbose=0)

    return path, predict


Predict = Callable[[Sequence[str]], np.ndarray]


def train_attention(texts: Sequence[str], labels: Sequence[int], train_words: int = 120):
    """A small attention classifier whose cost grows with the length of what it reads: a
    TextVectorization without a fixed length (each batch padded to its longest document),
    masked embeddings, one self-attention block, masked pooling, a sigmoid. Trained on the
    first train_words words of each text, so that training stays quick."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(3)
    short = [" ".join(t.split()[:train_words]) for t in clean_for_vocabulary(texts)]
    vectorize = keras.layers.TextVectorization(max_tokens=8000)
    vectorize.adapt(tf.constant(short))
    inputs = keras.Input(shape=(1,), dtype="string")
    x = keras.layers.Embedding(8001, 32, mask_zero=True)(vectorize(inputs))
    x = keras.layers.MultiHeadAttention(num_heads=2, key_dim=16)(x, x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(0.005), "binary_crossentropy")
    model.fit(tf.constant(short)[:, None], tf.constant(labels), epochs=4, batch_size=32, verbose=0)
    return model
