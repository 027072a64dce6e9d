"""Each private API of a dependency that daskinfer relies on (daskinfer/compat.py) still
does what it is used for: an upgrade that renames or drops one fails here, not silently."""

from __future__ import annotations

import subprocess
import sys


def test_distributed_still_reads_its_forkserver_preload_flag():
    """compat.skip_distributed_forkserver_preload sets a flag that distributed's
    get_mp_context must consult before setting a preload of its own."""
    import inspect

    import distributed.utils

    from daskinfer import compat

    assert hasattr(distributed.utils, "_forkserver_preload_set")
    assert "_forkserver_preload_set" in inspect.getsource(distributed.utils.get_mp_context)
    code = (
        "import multiprocessing.forkserver as fs, distributed.utils as du\n"
        "from daskinfer import compat\n"
        "compat.skip_distributed_forkserver_preload()\n"
        "fs.set_forkserver_preload(['daskinfer.errors'])\n"
        "du.get_mp_context()\n"
        "print(fs._forkserver._preload_modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['daskinfer.errors']"  # distributed left our preload alone
    assert compat.skip_distributed_forkserver_preload() is None


def test_dask_still_names_the_local_cluster_shape():
    import os

    from daskinfer import compat

    workers, threads = compat.default_worker_shape()
    assert workers >= 1 and threads >= 1 and workers * threads <= (os.cpu_count() or 1)


def test_exit_functions_still_run_before_the_command_line_leaves():
    code = (
        "import atexit, os\n"
        "from daskinfer import compat\n"
        "atexit.register(lambda: print('ran', flush=True))\n"
        "compat.run_exit_functions()\n"
        "os._exit(0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ran"


def test_the_forkserver_can_still_be_found_and_ended():
    """compat.kill_forkserver finds the forkserver multiprocessing started, by its private pid."""
    code = (
        "import os, time\n"
        "from multiprocessing import forkserver\n"
        "from daskinfer import compat\n"
        "forkserver.ensure_running()\n"
        "pid = forkserver._forkserver._forkserver_pid\n"
        "assert pid and os.kill(pid, 0) is None\n"
        "compat.kill_forkserver()\n"
        "time.sleep(0.5)\n"
        "print(os.waitpid(pid, os.WNOHANG)[0] == pid)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "True", done.stderr


def test_s3fs_still_lists_a_prefix_page_by_page():
    """compat.list_pages drives s3fs's async generator of a listing's objects; the end-to-end
    check that a bucket is scored while its last page is held back is
    tests/test_listing_stream.py."""
    import inspect

    import s3fs

    from daskinfer import compat

    fs = s3fs.S3FileSystem(anon=True)
    assert compat.pages_listable(fs)
    assert inspect.isasyncgenfunction(s3fs.S3FileSystem._iterdir)
    assert {"bucket", "delimiter", "prefix"} <= set(inspect.signature(s3fs.S3FileSystem._iterdir).parameters)


def test_tensorflow_still_keeps_a_graphs_functions_with_their_shapes():
    """compat.padded_widths finds a ragged-to-dense conversion inside a called function (as
    in a SavedModel's signature), with its width: fixed, or None for each batch's longest."""
    import tensorflow as tf

    from daskinfer import compat

    for shape, width in (([None, 5], 5), (None, None)):
        inner = tf.function(lambda x: tf.strings.split(x).to_tensor("", shape=shape))
        outer = tf.function(lambda x: inner(x), input_signature=[tf.TensorSpec([None], tf.string)])
        graph = outer.get_concrete_function().graph
        assert "RaggedTensorToTensor" not in {op.type for op in graph.get_operations()}  # only in the callee
        assert compat.padded_widths(graph) == [width]


def test_keras_still_lists_the_layers_a_custom_layer_holds():
    import keras

    from daskinfer import compat

    class Holder(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.inner = keras.layers.Dense(2)

    inputs = keras.Input(shape=(3,))
    holder = Holder()
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.holder = holder
    assert holder.inner in compat.sublayers(model) and holder in compat.sublayers(model)
