"""`daskinfer demo`: a small real sentiment model and a folder of reviews, made on the
spot under ./daskinfer-demo, then the whole pipeline on a LocalCluster.

The reviews below were written for this project. The model is trained in a child
process, so the driver still never imports TensorFlow.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from typing import List, Optional, Sequence

from daskinfer import config, pipeline

log = logging.getLogger("daskinfer")

DEMO_DIR = "daskinfer-demo"

POSITIVE = [
    "A warm, funny film with a cast that clearly loved every scene. I smiled the whole way through.",
    "The story is simple but the acting is superb and the ending is beautiful. Highly recommended.",
    "One of the best films I have seen this year: clever writing, great music, wonderful performances.",
    "I loved it. The director keeps the pace brisk and the characters feel real and charming.",
    "A delightful surprise. Gorgeous photography, a moving score and a lead actress who shines.",
    "Brilliant from start to finish. Funny, touching and smart, it deserves every award it gets.",
    "An excellent thriller that kept me on the edge of my seat. Great twists and a terrific villain.",
    "The animation is stunning and the story is sweet without being silly. My kids adored it too.",
    "A masterpiece of quiet storytelling. Every performance is perfect and the dialogue is sharp.",
    "Fantastic fun. The jokes land, the action is exciting and the heart of the film is genuine.",
    "I was moved to tears. A beautiful, honest film about family, with wonderful acting.",
    "Great movie. Strong script, lovely characters and a memorable, uplifting finale.",
    "Smart, stylish and entertaining; the best comedy in years, with a brilliant ensemble cast.",
    "A gripping, well made drama. The lead gives a powerful performance and the plot never drags.",
    "Charming and heartfelt, with superb direction. I enjoyed every minute and would watch it again.",
    "An inspiring, joyful film with a great soundtrack. The cast is excellent and the story uplifting.",
]

NEGATIVE = [
    "A dull, lifeless film. The plot makes no sense and the acting is wooden throughout.",
    "I wanted to like it, but the script is awful and the jokes fall flat. A waste of two hours.",
    "Boring and far too long. Nothing happens, the characters are thin and the ending is terrible.",
    "The worst movie I have seen this year: bad writing, cheap effects and a miscast lead.",
    "A mess. The editing is sloppy, the dialogue is painful and the story goes nowhere.",
    "Poorly acted and badly directed. I nearly walked out halfway through this tedious film.",
    "Predictable, lazy and stupid. The twists are obvious and the villain is laughable.",
    "An ugly, confusing sequel that ruins everything the original did well. Avoid it.",
    "The performances are flat, the music is annoying and the plot is a boring cliche.",
    "Terrible. A weak script, awful pacing and not a single character worth caring about.",
    "I was bored to tears. A pointless, dreary film with horrible dialogue.",
    "Bad movie. Weak story, dull characters and a disappointing, silly ending.",
    "Clumsy, loud and unfunny; the worst comedy in years, with a wasted cast.",
    "A tedious, badly made drama. The lead is unconvincing and the plot drags endlessly.",
    "Lazy and forgettable, with poor direction. I regretted every minute and would never watch it again.",
    "A depressing, joyless mess with an irritating soundtrack. The cast is awful and the story stupid.",
]


def prepare(folder: str = DEMO_DIR) -> tuple:
    """(model path, reviews folder) under folder, made on first use and reused after."""
    reviews = os.path.abspath(os.path.join(folder, "reviews"))
    model_path = os.path.abspath(os.path.join(folder, "model", "sentiment.keras"))
    if not os.path.isdir(reviews):
        _write_reviews(reviews)
    if not os.path.isfile(model_path):
        log.info("Training the demo model (a few seconds)")
        _train_in_child(model_path)
    return model_path, reviews


def run(overrides: Sequence[str] = (), config_file: Optional[str] = None) -> pipeline.RunResult:
    model_path, reviews = prepare()
    demo = [f"inference.model_path={model_path}", f"inference.input_data_dir={reviews}"]
    return pipeline.run(config.load_config([*demo, *overrides], config_file))


def _write_reviews(folder: str) -> None:
    tmp = folder + ".partial"
    os.makedirs(tmp, exist_ok=True)
    for label, texts in (("pos", POSITIVE), ("neg", NEGATIVE)):
        for i, text in enumerate(texts):
            with open(os.path.join(tmp, f"{label}_{i:02d}.txt"), "w", encoding="utf-8") as f:
                f.write(text)
    os.replace(tmp, folder)


def _train_in_child(model_path: str) -> None:
    child = multiprocessing.get_context("spawn").Process(target=_train, args=(model_path,))
    child.start()
    child.join()
    if child.exitcode != 0 or not os.path.isfile(model_path):
        raise RuntimeError(f"training the demo model failed (exit code {child.exitcode})")


def _train(model_path: str) -> None:
    from daskinfer import tf_runtime

    tf = tf_runtime.import_tensorflow()
    import keras

    keras.utils.set_random_seed(7)
    texts: List[str] = POSITIVE + NEGATIVE
    labels = [1.0] * len(POSITIVE) + [0.0] * len(NEGATIVE)
    vectorize = keras.layers.TextVectorization(max_tokens=2000, output_sequence_length=40)
    vectorize.adapt(texts)
    inputs = keras.Input(shape=(1,), dtype="string")
    x = keras.layers.Embedding(2001, 16)(vectorize(inputs))
    x = keras.layers.GlobalAveragePooling1D()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(0.02), "binary_crossentropy")
    model.fit(tf.constant(texts)[:, None], tf.constant(labels), epochs=60, batch_size=8, verbose=0)
    os.makedirs(os.path.dirname(model_path), exist_ok=True)
    tmp = model_path + ".partial.keras"
    model.save(tmp)
    os.replace(tmp, model_path)
