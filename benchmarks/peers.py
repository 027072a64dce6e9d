"""The peers daskinfer is measured against, each a whole process, and the benchmark models.

    python benchmarks/peers.py train MODEL.keras small|heavy
    python benchmarks/peers.py single MODEL DOCS OUT.jsonl          # ideal single process
    python benchmarks/peers.py single-table MODEL TABLE.parquet OUT.jsonl   # the same on a Parquet table
    python benchmarks/peers.py alone MODEL DOCS N                   # the model alone, one core
    python benchmarks/peers.py loop MODEL DOCS OUT.jsonl N          # original per-file loop
    python benchmarks/peers.py readtext MODEL DOCS OUTDIR N         # dask.bag.read_text
    python benchmarks/peers.py ray MODEL DOCS OUTDIR [BATCH]        # Ray Data, batches of 256 (or BATCH)
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
IMDB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "imdb-sample")


def record(path: str, score: float) -> str:
    return json.dumps({
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.gmtime()), "filepath": path,
        "logit_prob": score, "sentiment": "positive" if score > 0.5 else "negative",
    }) + "\n"


def load(model_path: str):
    import keras

    return keras.saving.load_model(model_path, compile=False)


def train(model_path: str, kind: str) -> None:
    import keras
    import tensorflow as tf

    texts, labels = [], []
    for label, sub in ((1, "pos"), (0, "neg")):
        for path in sorted(glob.glob(os.path.join(IMDB, "train", sub, "*.txt"))):
            texts.append(open(path, encoding="utf-8").read())
            labels.append(label)
    clean = [t.translate({c: " " for c in (0x0B, 0x0C, 0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029)}) for t in texts]
    vectorize = keras.layers.TextVectorization(max_tokens=10000, output_sequence_length=200)
    vectorize.adapt(tf.constant(clean))
    inputs = keras.Input(shape=(1,), dtype="string")
    x = keras.layers.Embedding(10001, 64 if kind == "heavy" else 16)(vectorize(inputs))
    if kind == "heavy":  # a 1-D CNN: the model, not the I/O, dominates
        x = keras.layers.Conv1D(256, 5, activation="relu")(x)
        x = keras.layers.Conv1D(256, 5, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    model.compile("adam", "binary_crossentropy")
    model.fit(tf.constant(texts)[:, None], tf.constant(labels), epochs=2, batch_size=64, verbose=0)
    model.save(model_path)


def single(model_path: str, docs: str, out: str) -> None:
    import tensorflow as tf

    model = load(model_path)
    paths = sorted(glob.glob(os.path.join(docs, "*.txt")))
    texts = [open(p, encoding="utf-8").read() for p in paths]
    scores = model.predict(tf.constant(texts)[:, None], batch_size=256, verbose=0).ravel()
    with open(out, "w") as f:
        f.writelines(record(p, float(s)) for p, s in zip(paths, scores))


def single_table(model_path: str, table: str, out: str) -> None:
    import pyarrow.parquet as pq
    import tensorflow as tf

    model = load(model_path)
    texts = pq.read_table(table, columns=["text"]).column("text").to_pylist()
    scores = model.predict(tf.constant(texts)[:, None], batch_size=256, verbose=0).ravel()
    with open(out, "w") as f:
        f.writelines(record(f"{table}#{i}", float(s)) for i, s in enumerate(scores))


def alone(model_path: str, docs: str, n: str) -> None:
    """Prints the model's own throughput on one core: predict time only, texts in memory."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    model = load(model_path)
    texts = [open(p, encoding="utf-8").read() for p in sorted(glob.glob(os.path.join(docs, "*.txt")))[: int(n)]]
    # Trace first, for a full batch and for the last, shorter one, so that no tracing is timed.
    model.predict(tf.constant(texts[: 256 + len(texts) % 256])[:, None], batch_size=256, verbose=0)
    started = time.perf_counter()
    model.predict(tf.constant(texts)[:, None], batch_size=256, verbose=0)
    print(len(texts) / (time.perf_counter() - started))


def loop(model_path: str, docs: str, out: str, n: str) -> None:
    import tensorflow as tf

    model = load(model_path)
    with open(out, "w") as f:
        for path in sorted(glob.glob(os.path.join(docs, "*.txt")))[: int(n)]:
            text = open(path, encoding="utf-8").read()
            f.write(record(path, float(model.predict(tf.constant([[text]]), verbose=0)[0, 0])))


_MODEL = {}


def _cached(model_path: str):
    if model_path not in _MODEL:
        _MODEL[model_path] = load(model_path)
    return _MODEL[model_path]


def _predict_lines(lines, model_path):
    import tensorflow as tf

    lines = list(lines)
    if not lines:
        return []
    # a direct call: model.predict costs ~50 ms of set-up per call, which would dwarf one file
    scores = _cached(model_path)(tf.constant(lines)[:, None], training=False).numpy().ravel()
    return [record("?", float(s)) for s in scores]


def readtext(model_path: str, docs: str, outdir: str, n: str) -> None:
    import dask.bag as db
    from distributed import Client, LocalCluster

    import peers  # by module name, so workers import it and keep one model each

    here = os.path.dirname(os.path.abspath(__file__))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    paths = sorted(glob.glob(os.path.join(docs, "*.txt")))[: int(n)]
    with LocalCluster(host="127.0.0.1", dashboard_address=None) as cluster, Client(cluster):
        bag = db.read_text(paths).map_partitions(peers._predict_lines, model_path)
        bag.to_textfiles(os.path.join(outdir, "*.jsonl"))


def ray_data(model_path: str, docs: str, outdir: str, batch: str = "256") -> None:
    import numpy as np
    import ray

    class Scorer:
        def __init__(self):
            self.model = load(model_path)

        def __call__(self, batch):
            import tensorflow as tf

            texts = [b.decode("utf-8") for b in batch["bytes"]]
            scores = self.model.predict(tf.constant(texts)[:, None], batch_size=len(texts), verbose=0).ravel()
            return {"filepath": batch["path"], "logit_prob": scores.astype(np.float64)}

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ds = ray.data.read_binary_files(docs, include_paths=True)
    # Actors take half a logical CPU each: with whole CPUs they would leave none for the reads.
    ds.map_batches(Scorer, batch_size=int(batch), concurrency=os.cpu_count(), num_cpus=0.5).write_json(outdir)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    command, *rest = sys.argv[1:]
    {"train": train, "single": single, "single-table": single_table, "alone": alone, "loop": loop, "readtext": readtext, "ray": ray_data}[command](*rest)
