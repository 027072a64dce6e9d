"""Private APIs of daskinfer's dependencies, each used here and nowhere else, with the
reason. An upgrade may rename any of them; tests/test_compat.py fails when one of them
would then silently do nothing."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, List, Optional, Tuple


def skip_distributed_forkserver_preload() -> None:
    """Tell distributed that the forkserver's preload is already set.

    The first nanny calls distributed.utils.get_mp_context, which otherwise sets a preload
    of its own, importing pandas and more into the driver just to name them: 70 MiB of the
    driver's memory and 0.5 s of its CPU, for a forkserver already running with ours
    (cluster.start_forkserver). Private: distributed.utils._forkserver_preload_set.
    """
    import distributed.utils

    distributed.utils._forkserver_preload_set = True


def default_worker_shape() -> Tuple[int, int]:
    """(workers, threads per worker) that LocalCluster picks for this machine, so that an
    adaptive cluster adds workers of the shape a fixed one would have.
    Private: distributed.deploy.utils.nprocesses_nthreads."""
    from distributed.deploy.utils import nprocesses_nthreads

    return nprocesses_nthreads()


def run_exit_functions() -> None:
    """What a normal interpreter exit runs (logging's flush, multiprocessing's clean-up),
    for a command line that then leaves with os._exit. Private: atexit._run_exitfuncs."""
    import atexit

    atexit._run_exitfuncs()


def kill_forkserver() -> None:
    """End the LocalCluster's forkserver at once, if this process started one.

    A run that fails before its cluster starts (no matching files, an output in use) would
    otherwise leave the forkserver importing TensorFlow for seconds more, holding the
    terminal's, or a calling script's, stdout and stderr open. multiprocessing has no public
    way to stop it. Private: multiprocessing.forkserver._forkserver._forkserver_pid.
    """
    import signal
    from multiprocessing import forkserver

    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    if pid:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def padded_widths(graph) -> List[Optional[int]]:
    """The width of every ragged-to-dense conversion in a traced graph and in the functions
    it calls: how a SavedModel pads its tokens, to a fixed width or (None) to each batch's
    longest document.

    A SavedModel's serving signature calls the model's body as a library function, and a
    tf.Graph lists only its own operations; the library's functions, with their shapes
    inferred, are only in Graph._functions. Private: tf.Graph._functions.
    """
    widths, stack, seen = [], [graph], {id(graph)}
    while stack:
        g = stack.pop()
        for op in g.get_operations():
            if op.type == "RaggedTensorToTensor":
                shape = op.outputs[0].shape
                widths.append(shape[-1] if shape.rank else None)
        for function in getattr(g, "_functions", {}).values():
            body = getattr(function, "graph", None)
            if body is not None and id(body) not in seen:
                seen.add(id(body))
                stack.append(body)
    return widths


def sublayers(model) -> list:
    """Every layer inside model, however deep: in nested models, and in a custom layer's
    attributes, which Model.layers does not list. Private: keras.Layer._flatten_layers."""
    return list(model._flatten_layers(include_self=False, recursive=True))


def pages_listable(fs) -> bool:
    """Whether fs can list a prefix page by page (list_pages): s3fs can (another filesystem's
    private methods of the same name need not mean the same)."""
    return type(fs).__module__.split(".")[0] == "s3fs" and callable(getattr(fs, "_iterdir", None))


def list_pages(fs, base: str, recursive: bool, page: int = 1000) -> Iterator[dict]:
    """The objects under base (a "bucket/prefix/" path), as s3fs info dicts, in the store's
    order, fetched a page at a time as they are consumed.

    fsspec's public find() and ls() return only once the whole prefix is listed, which for
    ten million keys is ten thousand sequential requests before the first result. s3fs
    pages through list_objects_v2 in its async generator, with its own retries, credentials
    and endpoint handling. Private: s3fs.S3FileSystem._iterdir.
    """
    from fsspec.asyn import sync

    bucket, key, _ = fs.split_path(base)
    listing = fs._iterdir(bucket, delimiter="" if recursive else "/", prefix=key.rstrip("/") + "/" if key else "")
    while True:
        items = sync(fs.loop, _take, listing, page)
        if not items:
            return
        yield from items


async def _take(listing, n: int) -> list:
    items = []
    async for item in listing:
        items.append(item)
        if len(items) >= n:
            break
    return items
