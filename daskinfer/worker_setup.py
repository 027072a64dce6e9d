"""What makes a process a daskinfer worker, done once, before any task.

Importing this module imports distributed and TensorFlow (quietly, with its oneDNN
kernels, and without Keras's optional plotting, DataFrame and scikit-learn imports: see
tf_runtime) and leaves everything imported out of the garbage collector's full collections.
The LocalCluster's forkserver imports it once, while the driver starts
(cluster.start_forkserver), so every worker forked from it starts with all of that done. As
a worker preload (`dask worker --preload daskinfer.worker_setup`, or docker/dask.yaml) it
does the same for workers started by hand, and dask_setup can start loading the run's model
at once.

Only dask's own processes import this module: freezing a user's interpreter would keep
whatever garbage it held at that moment forever.
"""

import contextlib
import gc
import json
import signal
import tempfile
import threading

import click
import distributed  # noqa: F401

from daskinfer import model, predict, tf_runtime  # noqa: F401  (predict: what the first task unpickles)

tf_runtime.set_worker_environment()
try:
    with tf_runtime.hidden("matplotlib", "pandas", "sklearn"):
        tf_runtime.import_tensorflow()
except ImportError:  # a version that needs them after all
    tf_runtime.import_tensorflow()
# distributed, TensorFlow and Keras make some 400,000 objects that live as long as the
# process; a worker's full collection took 0.25 s scanning them, every few hundred
# thousand documents.
gc.freeze()


@click.command()
@click.option("--load-model", "spec", default=None, help="a model.ModelSpec as JSON, to load as the worker starts")
@click.option("--driver-handles-ctrl-c", "owned", is_flag=True, help="ignore SIGINT: the driver stops this worker")
def dask_setup(worker, spec, owned) -> None:
    """Worker preload hook: record the worker's threads (TensorFlow's pools follow them)
    and, given a model, load it in the background while the worker joins the scheduler and
    its first task is sent. That task waits for it before reading (predict.score_piece)."""
    if owned:
        # Ctrl-C in a terminal reaches every process of its group: each of a LocalCluster's
        # workers would print a KeyboardInterrupt traceback, and the driver stops them anyway.
        with contextlib.suppress(ValueError):  # not the main thread: nothing to protect
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    tf_runtime.set_worker_threads(worker.state.nthreads)
    # TensorFlow's autograph writes each traced function's source to a temporary file and
    # deletes it at exit, but a worker process leaves by os._exit (multiprocessing's way),
    # skipping that: every run left a file per worker in /tmp. In the worker's own folder,
    # dask removes them with it.
    tempfile.tempdir = worker.local_directory
    gc.freeze()  # the worker's own start-up objects too
    if spec:
        spec = model.ModelSpec(**json.loads(spec))
        threading.Thread(target=model.preload, args=(spec,), name="daskinfer-model-load", daemon=True).start()
