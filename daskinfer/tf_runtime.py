"""TensorFlow's process set-up on a worker, each setting once: its log level before it is
imported, its Python loggers, and its thread pools sized to the threads dask gives the
worker (two workers on two cores must not each start a pool per core).

TensorFlow's C++ runtime prints notices (CUDA drivers, CPU features) straight to file
descriptor 2 while its libraries load, before any log level applies. Measured here: they
come at `import tensorflow` only, not when a model loads or runs. So stderr is silenced
for the import alone, which happens once per process, in the forkserver or a worker's
preload, before the worker runs any task: no other thread's message is hidden.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
from typing import Iterator, Optional

_worker_threads: Optional[int] = None  # set by worker_setup.dask_setup

# TensorFlow's oneDNN kernels are on by default only on CPUs with AVX-512 VNNI or newer, off
# elsewhere (AVX2-only CPUs: older AMD EPYC and Intel). Measured on a 2-core EPYC (AVX2), one core,
# length-aware batches: a transformer encoder 190 to 320 docs/s, a 1-D CNN 465 to 578, the
# small pooled-embedding model 22,000 to 17,000 at the model alone (3% of a 40,000-document
# run's time); predictions within 2.4e-7 of oneDNN off. It takes more memory per batch (a
# worker's peak on very long documents 11.2 GiB against 7.3 at the batch budget of 256 Ki),
# hence a smaller batch budget (predict.batch_budget). TensorFlow reads
# the variable once, as it is imported: a user's own value wins.
WORKER_ENVIRONMENT = {"TF_ENABLE_ONEDNN_OPTS": "1"}


def set_worker_environment() -> None:
    """TensorFlow's settings for a daskinfer worker, before TensorFlow is imported."""
    for name, value in WORKER_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


def import_tensorflow():
    """TensorFlow, imported quietly (a user's own TF_CPP_MIN_LOG_LEVEL wins for what it
    logs afterwards)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" not in sys.modules:
        with _stderr_silenced(), _collector_paused():
            import tensorflow  # noqa: F401
    import tensorflow as tf

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
    return tf


@contextlib.contextmanager
def hidden(*packages: str) -> Iterator[None]:
    """Inside, `import package` fails as if it were not installed (unless already imported).

    Keras imports matplotlib.pyplot, pandas and scikit-learn (with SciPy) when they are
    installed, for plotting image galleries, fitting on DataFrames and its scikit-learn
    wrappers, and does without them otherwise. A worker does none of that, and the import is
    on the way to the first result: matplotlib 0.4 to 0.6 s, scikit-learn (which MLflow
    installs) 0.7 to 1 s of TensorFlow's 3.4 to 4 s here. All import as usual afterwards (a
    table's tasks need pandas); only Keras's scikit-learn wrappers stay unusable in the process.
    """
    hide = [name for name in packages if name not in sys.modules]
    sys.modules.update(dict.fromkeys(hide, None))
    try:
        yield
    finally:
        for name in hide:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No garbage collection inside. TensorFlow's import makes some 500,000 objects that live
    as long as the process, and the collector scans them again and again as they are made:
    without it the import takes 2.7 s rather than 3.2 s here (median of 8 interleaved), on the
    way to a run's first result. The cycles it leaves uncollected hold 2 MiB."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def set_worker_threads(n: int) -> None:
    """The dask threads of this worker process, for loads outside a task (preload)."""
    global _worker_threads
    _worker_threads = n


def configure_threads(tf, intra: Optional[int], inter: Optional[int]) -> None:
    """TensorFlow's pools = the threads dask gives this worker, unless configured."""
    threads = _worker_threads or os.cpu_count() or 1
    try:
        from distributed import get_worker

        threads = get_worker().state.nthreads
    except (ImportError, ValueError, AttributeError):
        pass
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra or threads)
        tf.config.threading.set_inter_op_parallelism_threads(inter or threads)
    except RuntimeError:
        pass  # TensorFlow already started in this process (e.g. a notebook): keep its pools

