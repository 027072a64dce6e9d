"""The Dask cluster's lifecycle: a LocalCluster sized to the machine, a cluster manager's
cluster, or a running scheduler; started, described, and closed quietly.

Security (TLS) and timeouts come from dask's own configuration (dask config files and
DASK_* environment variables), read by `distributed` itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import logging
import signal
import threading
import time
import warnings
from typing import TYPE_CHECKING, Any, Iterator, Optional

from omegaconf import DictConfig, OmegaConf

from daskinfer import compat, remote_scheduler
from daskinfer.redaction import redacted
from daskinfer.errors import ConfigError, first_line, root_cause

if TYPE_CHECKING:
    from daskinfer.model import ModelSpec

log = logging.getLogger("daskinfer")

# Loggers that print tracebacks for connections closed during a normal shutdown.
_NOISY_LOGGERS = (
    "distributed",
    "distributed.batched",
    "distributed.comm",
    "distributed.core",
    "distributed.nanny",
    "distributed.scheduler",
    "distributed.worker",
    "distributed.client",
    "distributed.http.proxy",
    "tornado.application",
    "asyncio",  # "Task exception was never retrieved" for gathers cancelled at close
    "bokeh",
)


def quiet_logs(level: int = logging.CRITICAL) -> None:
    """Keep dask's own chatter off the user's terminal (after `distributed` is imported,
    which resets its loggers from its config)."""
    import distributed  # noqa: F401  (importing configures the loggers we then tune)

    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def connect(cfg: DictConfig, model_spec: Optional[ModelSpec] = None) -> Iterator[Any]:
    """A Client on the configured cluster, closed quietly on exit. The workers of a
    LocalCluster start loading model_spec's model as they start."""
    import distributed

    quiet_logs()
    with contextlib.ExitStack() as stack:
        with _signals_deferred():
            if cfg.address:
                client = remote_scheduler.client(cfg)
            else:
                cluster = _managed_cluster(cfg) if cfg.manager else _local_cluster(cfg, model_spec)
                stack.callback(_close, cluster)
                _scale(cluster, cfg)
                client = distributed.Client(cluster)
            stack.callback(_close, client)
        stack.callback(quiet_logs)  # closing makes dask log again: silence it first
        if not _starts_empty(cfg):
            _wait_for_workers(client, cfg)
        yield client


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Ctrl-C or SIGTERM while a cluster starts is taken once it has started: interrupting
    dask half-way through its start-up makes it fail its own consistency checks, loudly,
    when it is closed. The run then stops as usual (cleanly, within a second or two)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list = []
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if caught:
        raise KeyboardInterrupt


def performance_report(path: Optional[str]):
    """dask's own performance report of what runs inside (distributed.performance_report),
    written to path; nothing when path is None."""
    if not path:
        return contextlib.nullcontext()
    import distributed

    return distributed.performance_report(filename=path)


def _close(thing) -> None:
    with contextlib.suppress(Exception):
        thing.close()


def adaptive(cfg: DictConfig) -> bool:
    """Whether the cluster scales itself (cluster.adapt)."""
    return cfg.adapt.minimum is not None or cfg.adapt.maximum is not None


def _starts_empty(cfg: DictConfig) -> bool:
    """An adaptive cluster with no minimum gets its first worker only once work is queued."""
    return adaptive(cfg) and not cfg.adapt.minimum


def _managed_cluster(cfg: DictConfig):
    """An instance of the cluster manager class named by its import path, with its keyword
    arguments as configured: whatever the manager needs (queues, images, ...) is its own."""
    module, _, name = cfg.manager.rpartition(".")
    try:
        manager = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"cluster.manager: cannot import {cfg.manager}: {first_line(exc)}") from None
    kwargs = OmegaConf.to_container(cfg.manager_kwargs, resolve=True)
    logging.disable(logging.CRITICAL)  # managers log their workers' start-up failures with tracebacks
    try:
        return manager(**kwargs)
    except Exception as exc:
        root = root_cause(exc)
        raise ConfigError(
            f"cluster.manager {cfg.manager} did not start with cluster.manager_kwargs={redacted(kwargs)}: "
            f"{type(root).__name__}: {first_line(root)}"
        ) from None
    finally:
        logging.disable(logging.NOTSET)


def _scale(cluster, cfg: DictConfig) -> None:
    """Adaptive scaling when asked for; a manager started empty gets cluster.n_workers."""
    if adaptive(cfg):
        limits = {k: v for k, v in cfg.adapt.items() if v is not None}
        cluster.adapt(**limits)
    elif cfg.manager and cfg.n_workers:
        cluster.scale(cfg.n_workers)


def _local_cluster(cfg: DictConfig, model_spec: Optional[ModelSpec] = None):
    """A LocalCluster on 127.0.0.1. Its workers start by cfg.start_method: forkserver starts
    them about a second sooner than dask's default (spawn), which re-imports everything."""
    import dask
    import distributed

    settings = {
        "distributed.worker.multiprocessing-method": cfg.start_method,
        # The scheduler runs in this process and would keep its last 1,000 messages to
        # each worker for debugging, every partition's file list with them: the driver's
        # memory would then grow with the number of documents.
        "distributed.admin.low-level-log-length": 0,
        # The nanny gives workers MALLOC_TRIM_THRESHOLD_=65536; setting it at all stops
        # glibc from adapting its mmap threshold, so TensorFlow's large buffers are mapped
        # and unmapped on every call (scoring about 1.25x slower here). See docker/dask.yaml.
        "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
        # The workers' statistical profiler (the dashboard's Profile page) samples every
        # thread's stack every 10 ms: a fifth of each worker's event-loop time here.
        "distributed.worker.profile.enabled": False,
        # Every server (the scheduler and the nannies in this process, each worker) times its
        # event loop with a callback every 20 ms, only to warn when the loop stalls for
        # seconds: half of this process's CPU while the workers score, taken from their
        # cores on a machine the driver shares with them. Once a second still warns.
        "distributed.admin.tick.interval": "1s",
    }
    if cfg.start_method == "forkserver":
        start_forkserver(cfg)  # when the caller has not already
        compat.skip_distributed_forkserver_preload()
    n_workers, threads = cfg.n_workers, cfg.threads_per_worker
    if adaptive(cfg):  # start at the minimum; dask adds workers of the same shape
        n_workers, threads = cfg.adapt.minimum or 0, threads or compat.default_worker_shape()[1]
    with dask.config.set(settings), warnings.catch_warnings():
        # A busy dashboard port (another job's) is fine: dask picks another, and we log it.
        warnings.filterwarnings("ignore", message="Port .* is already in use")
        return distributed.LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads,
            processes=True,
            host="127.0.0.1",
            dashboard_address=cfg.dashboard_address,
            # No dashboard still leaves the scheduler's HTTP server (/health, /metrics), on
            # dask's dashboard port unless told otherwise: a free one, not a user's 8787.
            scheduler_kwargs=None if cfg.dashboard_address else {"dashboard_address": "127.0.0.1:0"},
            silence_logs=logging.CRITICAL,
            preload=["daskinfer.worker_setup"],
            preload_argv=["--driver-handles-ctrl-c"]
            + (["--load-model", json.dumps(dataclasses.asdict(model_spec))] if model_spec else []),
        )


def start_forkserver(cfg: DictConfig) -> None:
    """Start the forkserver that the LocalCluster's workers will be forked from, now.

    It imports distributed and TensorFlow before its first fork (daskinfer.worker_setup),
    so TensorFlow's import, seconds long, overlaps the driver's own start-up and every
    worker starts with it done. Nothing to do for a remote or managed cluster.
    """
    if cfg.address or cfg.manager or cfg.start_method != "forkserver":
        return
    from multiprocessing import forkserver

    forkserver.set_forkserver_preload(["daskinfer.worker_setup"])
    try:
        with _sigint_ignored():
            forkserver.ensure_running()
    except OSError as exc:  # its socket is made in the temporary folder, and a socket's path is 107 bytes at most
        if "path too long" not in str(exc):
            raise
        import tempfile

        raise ConfigError(f"the temporary folder {tempfile.gettempdir()} has too long a path for the workers' "
                          "Unix socket (107 bytes at most): set TMPDIR to a shorter one") from None


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored in what starts inside (a process started then inherits that, and
    Python keeps it). Ctrl-C in a terminal reaches every process of its group: the
    forkserver, interrupted while it imports TensorFlow (it ignores SIGINT only after), would
    die with a traceback and the cluster could not start. The driver takes Ctrl-C alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def revive(client) -> None:
    """Start again the workers that client's LocalCluster gave up on. A LocalCluster closes
    a worker's nanny when the worker is not back distributed.deploy.lost-worker-timeout
    after a death (15 s), as happens to one that dies again and again on a document (each
    time restarted, fed it again, and killed: scheduling.Runner isolates that document).
    Its spec still names the worker: scaling to the spec starts it again."""
    local = getattr(client, "cluster", None)
    spec = getattr(local, "worker_spec", None)
    if spec and len(local.workers) < len(spec):
        log.debug("Restarting %d worker(s) the cluster closed", len(spec) - len(local.workers))
        local.scale(len(spec))


def describe(client, cfg: DictConfig) -> None:
    """Log where the job runs: the scheduler, and the dashboard to watch it on."""
    if cfg.address:
        log.info("Connected to the dask scheduler at %s", cfg.address)
    elif cfg.manager:
        log.info("Started a dask cluster with %s", cfg.manager)
    if adaptive(cfg):
        log.info("Adaptive scaling: %s to %s workers", cfg.adapt.minimum or 0, cfg.adapt.maximum or "any number of")
    # A scheduler lists its HTTP server as "dashboard" whether the dashboard is on it or not.
    ours = not (cfg.address or cfg.manager)
    if cfg.dashboard_address if ours else "dashboard" in client.scheduler_info(n_workers=0).get("services", {}):
        log.info("Dask dashboard: %s", client.dashboard_link)


def _wait_for_workers(client, cfg: DictConfig) -> None:
    """Wait until the scheduler has a worker. Decided by what the scheduler says, not by a
    timeout alone: on a busy machine a worker may be there before the answer is."""
    began = time.monotonic()
    deadline, told, where = began + cfg.wait_for_workers_s, False, cfg.address or "the LocalCluster"
    while True:
        try:
            if client.scheduler_info(n_workers=-1).get("workers"):
                return
        except OSError as exc:
            raise ConnectionError(f"lost the dask scheduler at {where}: {first_line(exc)}") from None
        if time.monotonic() > deadline:
            raise TimeoutError(f"no dask worker joined {where} within {cfg.wait_for_workers_s:g} s")
        if not told and time.monotonic() - began > 1:  # a LocalCluster's workers are there by then
            log.info("Waiting for a dask worker to join %s, for up to %g s (cluster.wait_for_workers_s)", where,
                     cfg.wait_for_workers_s)
            told = True
        time.sleep(0.1)
