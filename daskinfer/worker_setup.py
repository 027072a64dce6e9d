"""What makes a process a daskinfer worker, done once, before any task.

Importing this module imports distributed and TensorFlow (quietly, and without Keras's
optional plotting and DataFrame imports) and leaves everything imported out of the garbage
collector's full collections. The LocalCluster's forkserver imports it once, while the
driver starts (cluster.start_forkserver), so every worker forked from it starts with all of
that done. As a worker preload (`dask worker --preload daskinfer.worker_setup`, or
docker/dask.yaml) it does the same for workers started by hand, and dask_setup can start
loading the run's model at once.

Only dask's own processes import this module: freezing a user's interpreter would keep
whatever garbage it held at that moment forever.
"""

import contextlib
import gc
import json
import sys
import threading

import click
import distributed  # noqa: F401

from daskinfer import model, predict  # noqa: F401  (predict: what the first task unpickles)


@contextlib.contextmanager
def _hidden(*packages: str):
    """Inside, `import package` fails as if it were not installed (unless already imported)."""
    hidden = [name for name in packages if name not in sys.modules]
    sys.modules.update(dict.fromkeys(hidden, None))
    try:
        yield
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]


# Keras imports matplotlib.pyplot and pandas when they are installed, for plotting image
# galleries and for fitting on DataFrames, and does without them otherwise. A worker does
# neither, and the import is on the way to the first result: 0.4 to 0.55 s of TensorFlow's
# 2.1 s here. Both import as usual afterwards (a table's tasks need pandas).
try:
    with _hidden("matplotlib", "pandas"):
        model.import_tensorflow_quietly()
except ImportError:  # a version that needs them after all
    model.import_tensorflow_quietly()
# distributed, TensorFlow and Keras make some 400,000 objects that live as long as the
# process; a worker's full collection took 0.25 s scanning them, every few hundred
# thousand documents.
gc.freeze()


@click.command()
@click.option("--load-model", "spec", default=None, help="a model.ModelSpec as JSON, to load as the worker starts")
def dask_setup(worker, spec) -> None:
    """Worker preload hook: record the worker's threads (TensorFlow's pools follow them)
    and, given a model, load it in the background while the worker joins the scheduler
    and the first partition's files are read. The first task waits for it."""
    model.worker_threads(worker.state.nthreads)
    gc.freeze()  # the worker's own start-up objects too
    if spec:
        spec = model.ModelSpec(**json.loads(spec))
        threading.Thread(target=model.preload, args=(spec,), name="daskinfer-model-load", daemon=True).start()
