"""A transformer classifier whose cost grows with document length: what length-aware
batching is worth, whole processes, interleaved rounds.

    python benchmarks/transformer.py [--docs 10000] [--repeat 2] [--only a,b,c,d,e] [--memory] [--against REV]

Trains (briefly, on ../shared/data/imdb-sample/train) a transformer encoder classifier: a
TextVectorization without a fixed length (each batch padded to its longest document),
masked embeddings, two encoder blocks (self-attention and a feed-forward layer, residuals,
layer norms), masked pooling, a sigmoid. Then times, on N copies of the IMDb sample:
  (a) daskinfer, default settings (length-aware batching on)
  (b) daskinfer with length-aware batching off (inference.length_batching=false): batches of
      --peer-batch documents in input order, as daskinfer batched before (only the memory guard of
      2^20 padded characters, which batches of 64 IMDb reviews never reach)
  (f) daskinfer with inference.length_batching=false and the default budget set by hand
      (inference.max_batch_chars=16384): input order within the budget
  (c) the single process users write: read all, predict in batches of 256 in input order
  (d) Ray Data (map_batches on an actor pool, arrival order), when ray is installed
  (e) the model alone on one core, texts in memory, the same documents cut into partitions
      and batched as daskinfer does, TensorFlow set as on daskinfer's workers (oneDNN): (a) is
      compared with cores x (e) of the same round (parallel efficiency)
  (g) with --against REV: daskinfer defaults as it was at git revision REV
  (h) the machine's own ceiling: one copy of (e) per core, all at once, their docs/s summed;
      (h) / (cores x e) is what two busy cores give of two lone ones on this model, a bound on
      any parallel efficiency here (shared caches, memory bandwidth, a host's other guests)
With --sizes 64,500,2000,...: only the model alone on one core against the partition size
(what length-aware batching gains from larger partitions). With --memory: the worker's peak
RSS scoring the 1% longest reviews concatenated tenfold, at the default max_batch_chars and
at 128 Ki (the old default, a fixed-length model's).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from throughput import IMDB, make_docs, remove_worktree, timed, worktree  # noqa: E402

PY = sys.executable
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def train(model_path: str) -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(11)
    texts, labels = [], []
    for label, sub in ((1, "pos"), (0, "neg")):
        for path in sorted(glob.glob(os.path.join(IMDB, "train", sub, "*.txt"))):
            texts.append(open(path, encoding="utf-8").read())
            labels.append(label)
    breakers = {c: " " for c in (0x0B, 0x0C, 0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029)}
    short = [" ".join(t.translate(breakers).split()[:100]) for t in texts]  # quick training
    vectorize = keras.layers.TextVectorization(max_tokens=20000)
    vectorize.adapt(tf.constant(short))
    inputs = keras.Input(shape=(1,), dtype="string")
    x = keras.layers.Embedding(20001, 64, mask_zero=True)(vectorize(inputs))
    for _ in range(2):
        attended = keras.layers.MultiHeadAttention(num_heads=2, key_dim=32)(x, x)
        x = keras.layers.LayerNormalization()(keras.layers.Add()([x, attended]))
        fed = keras.layers.Dense(64)(keras.layers.Dense(128, activation="relu")(x))
        x = keras.layers.LayerNormalization()(keras.layers.Add()([x, fed]))
    x = keras.layers.GlobalAveragePooling1D()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(0.002), "binary_crossentropy")
    model.fit(tf.constant(short)[:, None], tf.constant(labels), epochs=2, batch_size=32, verbose=0)
    model.save(model_path)


def _read(docs: str):
    paths = sorted(glob.glob(os.path.join(docs, "*.txt")))
    return paths, [open(p, encoding="utf-8").read() for p in paths]


def single(model_path: str, docs: str, out: str, batch: str = "256") -> None:
    """The script users write: batches of 256 (or batch) in input order."""
    import keras
    import tensorflow as tf

    model = keras.saving.load_model(model_path, compile=False)
    paths, texts = _read(docs)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.gmtime())
    with open(out, "w", encoding="utf-8") as f:
        n = int(batch)
        for start in range(0, len(texts), n):
            scores = model(tf.constant(texts[start:start + n])[:, None], training=False).numpy()[:, 0]
            for path, score in zip(paths[start:start + n], scores):
                f.write(json.dumps({"time": stamp, "filepath": path, "logit_prob": float(score),
                                    "sentiment": "positive" if score > 0.5 else "negative"}) + "\n")


def alone(model_path: str, docs: str, n: str, start_at: str = "0") -> None:
    """docs/s of the model alone on one core, texts in memory: the documents cut into
    partitions as daskinfer cuts them on this machine's cores, the partitions that hold the
    first n documents (all when n is 0) batched as daskinfer batches them. The first calls'
    tracing counts, as each worker pays it too; loading does not. With start_at (a Unix
    time), scoring starts then, so that copies of this loaded at once score at once."""
    from daskinfer.partitions import partition_sizes

    predict = _model_on_one_core(model_path)
    _, texts = _read(docs)
    size, cuts = partition_sizes(lambda: len(texts), os.cpu_count() or 1, None), []
    while sum(cuts) < min(int(n) or len(texts), len(texts)):
        cuts.append(size())
    formed = _batched(texts, cuts, predict)
    if time.time() > float(start_at) > 0:
        print(f"loaded {time.time() - float(start_at):.1f} s after the start asked: the copies overlap less", file=sys.stderr)
    time.sleep(max(0.0, float(start_at) - time.time()))
    print(_docs_per_s(predict, formed))


def together(alone_cmd, copies: int) -> float:
    """docs/s of copies of (e) scoring at once, summed."""
    start_at = str(time.time() + 20)  # the copies' imports and loads fit in it on 2 cores
    jobs = [subprocess.Popen([*alone_cmd, start_at], stdout=subprocess.PIPE, text=True) for _ in range(copies)]
    return sum(float(job.communicate()[0].strip().splitlines()[-1]) for job in jobs)


def sweep(model_path: str, docs: str, sizes: str, n: str, repeat: str) -> None:
    """docs/s of the model alone on one core against the partition size: the first n
    documents cut into partitions of each size and batched as daskinfer batches them,
    in one process, sizes interleaved in each round (median of the rounds)."""
    predict = _model_on_one_core(model_path)
    texts = _read(docs)[1][: int(n)]
    predict(texts[:256])  # the runtime's first calls, before any size is timed
    rates: dict = {int(size): [] for size in sizes.split(",")}
    for _ in range(int(repeat)):
        for size in rates:
            rates[size].append(_docs_per_s(predict, _batched(texts, [size] * -(-len(texts) // size), predict)))
    for size, taken in rates.items():
        print(f"partitions of {size:>6} documents: {statistics.median(taken):7.1f} docs/s "
              f"({' '.join(f'{r:.1f}' for r in taken)})", flush=True)


def _model_on_one_core(model_path: str):
    from daskinfer import tf_runtime

    tf_runtime.set_worker_environment()  # TensorFlow as daskinfer's workers run it (oneDNN)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from daskinfer import model as models

    return models.predictor(models.ModelSpec(model_path, intra_op_threads=1, inter_op_threads=1))


def _batched(texts, cuts, predict):
    """The model's batches, as daskinfer forms them within each partition of cuts' sizes."""
    from daskinfer.model import ModelSpec
    from daskinfer.predict import Settings, Text, batch_budget, batches

    formed, start, budget = [], 0, batch_budget(Settings(model=ModelSpec("")), predict)
    for size in cuts:
        part = [Text(str(i), t, i) for i, t in enumerate(texts[start:start + size])]
        formed.extend(batches(part, Settings.batch_size, budget))
        start += size
    return formed


def _docs_per_s(predict, formed) -> float:
    started = time.perf_counter()
    for batch in formed:
        predict([t.text for t in batch])
    return sum(len(batch) for batch in formed) / (time.perf_counter() - started)


def long_docs(docs: str, out: str) -> None:
    """The 1% longest reviews, each concatenated tenfold."""
    paths, texts = _read(docs)
    longest = sorted(set(texts), key=len)[-max(1, len(set(texts)) // 100):]
    os.makedirs(out, exist_ok=True)
    for i, text in enumerate(longest):
        with open(os.path.join(out, f"{i:05d}_1.txt"), "w", encoding="utf-8") as f:
            f.write(" ".join([text] * 10))


def peak_worker_rss(cmd, cwd: Path) -> float:
    """MiB: the largest RSS any child process of the command reached (sampled every 50 ms)."""
    import psutil

    job = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = [0]

    def sample() -> None:
        parent = psutil.Process(job.pid)
        while job.poll() is None:
            try:
                for child in parent.children(recursive=True):
                    peak[0] = max(peak[0], child.memory_info().rss)
            except psutil.Error:
                pass
            time.sleep(0.05)

    watcher = threading.Thread(target=sample)
    watcher.start()
    job.wait()
    watcher.join()
    return peak[0] / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--only", default="a,b,c,d,e")
    ap.add_argument("--alone-sample", type=int, default=0,
                    help="(e) on the partitions holding the first N documents; 0: all")
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--against", default=None, help="a git revision of daskinfer to time as (g)")
    ap.add_argument("--peer-batch", type=int, default=256,
                    help="documents per batch in (c), (d) and (f); 256 runs out of memory on long reviews with oneDNN")
    ap.add_argument("--sizes", default=None, metavar="N,N,...",
                    help="only the model alone on one core against these partition sizes, on --docs documents")
    args = ap.parse_args()
    only = set(args.only.split(","))
    work = Path(tempfile.mkdtemp(prefix="daskinfer-transformer-"))
    try:
        measure(args, only, work)
    finally:
        if args.against:
            remove_worktree(work / "before")
        shutil.rmtree(work, ignore_errors=True)


def measure(args, only, work: Path) -> None:
    docs, model = work / "docs", str(work / "transformer.keras")
    make_docs(docs, args.docs)
    subprocess.run([PY, __file__, "train", model], check=True)
    me = [PY, __file__]
    if args.sizes:
        subprocess.run([*me, "sweep", model, str(docs), args.sizes, str(args.docs), str(args.repeat)], check=True)
        return
    daskinfer = [PY, "-m", "daskinfer", f"inference.model_path={model}", f"inference.input_data_dir={docs}"]
    runs = {
        "a": lambda i: [*daskinfer, f"inference.output_path={work}/a{i}/out.jsonl"],
        "b": lambda i: [*daskinfer, f"inference.output_path={work}/b{i}/out.jsonl", "inference.length_batching=false",
                        f"inference.batch_size={args.peer_batch}"],
        "f": lambda i: [*daskinfer, f"inference.output_path={work}/f{i}/out.jsonl", "inference.length_batching=false",
                        "inference.max_batch_chars=16384"],
        "c": lambda i: [*me, "single", model, str(docs), f"{work}/c{i}.jsonl", str(args.peer_batch)],
        "d": lambda i: [PY, str(HERE / "peers.py"), "ray", model, str(docs), f"{work}/d{i}", str(args.peer_batch)],
    }
    envs = {}
    if args.against:
        envs["g"] = worktree(args.against, work / "before")
        runs["g"] = lambda i: [*daskinfer, f"inference.output_path={work}/g{i}/out.jsonl"]
        only.add("g")
    if "d" in only and subprocess.run([PY, "-c", "import ray"], capture_output=True).returncode != 0:
        print("(d) skipped: ray is not installed (pip install -e '.[benchmarks]')")
        only.discard("d")
    alone = [*me, "alone", model, str(docs), str(args.alone_sample)]
    times = {key: [] for key in sorted(only & set(runs))}
    e_rates: list = []
    h_rates: list = []
    for i in range(args.repeat):  # each round runs every contender once: drift weighs on all alike
        for key in times:
            times[key].append(timed(runs[key](i), work, envs.get(key)))
            print(f"  round {i} ({key}) {times[key][-1]:.1f} s", flush=True)
        if "e" in only:
            done = subprocess.run(alone, check=True, capture_output=True, text=True)
            e_rates.append(float(done.stdout.strip().splitlines()[-1]))
            print(f"  round {i} (e) model alone, one core, daskinfer's batches: {e_rates[-1]:.1f} docs/s", flush=True)
        if "h" in only:
            h_rates.append(together(alone, os.cpu_count() or 1))
            print(f"  round {i} (h) one copy of (e) per core, at once: {h_rates[-1]:.1f} docs/s summed", flush=True)
    rates = {"e": statistics.median(e_rates)} if e_rates else {}
    for key, taken in times.items():
        rates[key] = args.docs / statistics.median(taken)
        print(f"({key}) {args.docs} docs  median {statistics.median(taken):8.1f} s  {rates[key]:8.1f} docs/s  "
              f"({' '.join(f'{t:.1f}' for t in taken)})", flush=True)
    for other in ("b", "c", "d", "f", "g"):
        if "a" in rates and other in rates:
            print(f"(a) / ({other}) = {rates['a'] / rates[other]:.2f}x")
    if "a" in times and e_rates:  # per round: (a) and (e) of one round saw the same machine
        cores = os.cpu_count() or 1
        each = [args.docs / t / (cores * e) for t, e in zip(times["a"], e_rates)]
        print(f"(e) median {rates['e']:.1f} docs/s ({' '.join(f'{e:.1f}' for e in e_rates)})")
        print(f"(a) / ({cores} cores x e) = {statistics.median(each):.3f} median "
              f"({' '.join(f'{x:.3f}' for x in each)})")
    cores = os.cpu_count() or 1
    if h_rates and e_rates:
        ceiling = [h / (cores * e) for h, e in zip(h_rates, e_rates)]
        print(f"(h) median {statistics.median(h_rates):.1f} docs/s: (h) / ({cores} cores x e) = "
              f"{statistics.median(ceiling):.3f} median ({' '.join(f'{x:.3f}' for x in ceiling)}), the machine's ceiling")
    if h_rates and "a" in times:
        against = [args.docs / t / h for t, h in zip(times["a"], h_rates)]
        print(f"(a) / (h) = {statistics.median(against):.3f} median ({' '.join(f'{x:.3f}' for x in against)})")
    if args.memory:
        long = work / "long"
        subprocess.run([*me, "long", str(docs), str(long)], check=True)
        for chars in ("null", 2**17):  # the default (16 Ki for this model), and the fixed-length budget
            peak = peak_worker_rss([PY, "-m", "daskinfer", f"inference.model_path={model}",
                                    f"inference.input_data_dir={long}", f"inference.output_path={work}/m{chars}/o.jsonl",
                                    f"inference.max_batch_chars={chars}"], work)
            print(f"worker peak RSS on the 1% longest x10: {peak:.0f} MiB at max_batch_chars={chars}", flush=True)
    print(json.dumps({"docs": args.docs, "docs_per_s": rates}))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("train", "single", "alone", "long", "sweep"):
        {"train": train, "single": single, "alone": alone, "long": long_docs, "sweep": sweep}[sys.argv[1]](*sys.argv[2:])
    else:
        main()
