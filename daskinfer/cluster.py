"""The Dask cluster: a LocalCluster sized to the machine, or a running scheduler.

Security (TLS) and timeouts come from dask's own configuration (dask config files and
DASK_* environment variables), read by `distributed` itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
import warnings
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

from omegaconf import DictConfig, OmegaConf

from daskinfer.config import redacted
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
        if cfg.address:
            client = _remote_client(cfg)
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


def _close(thing) -> None:
    with contextlib.suppress(Exception):
        thing.close()


def adaptive(cfg: DictConfig) -> bool:
    return cfg.adapt.minimum is not None or cfg.adapt.maximum is not None


def _starts_empty(cfg: DictConfig) -> bool:
    """An adaptive cluster with no minimum gets its first worker only once work is queued."""
    return adaptive(cfg) and not cfg.adapt.minimum


def _managed_cluster(cfg: DictConfig):
    """An instance of the cluster manager class named by its import path, with its keyword
    arguments as configured: whatever the manager needs (queues, images, ...) is its own."""
    from distributed.utils import import_term

    try:
        manager = import_term(cfg.manager)
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
    import distributed.utils
    from distributed.deploy.utils import nprocesses_nthreads

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
    }
    if cfg.start_method == "forkserver":
        start_forkserver(cfg)  # when the caller has not already
        # The first nanny would otherwise set a preload of its own, importing pandas and
        # more into this process just to name them: 70 MiB of the driver's memory and 0.5 s
        # of its CPU, for a forkserver already running with ours.
        distributed.utils._forkserver_preload_set = True
    n_workers, threads = cfg.n_workers, cfg.threads_per_worker
    if adaptive(cfg):  # start at the minimum; dask adds workers of the same shape
        n_workers, threads = cfg.adapt.minimum or 0, threads or nprocesses_nthreads()[1]
    with dask.config.set(settings), warnings.catch_warnings():
        # A busy dashboard port (another job's) is fine: dask picks another, and we log it.
        warnings.filterwarnings("ignore", message="Port .* is already in use")
        return distributed.LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads,
            processes=True,
            host="127.0.0.1",
            dashboard_address=cfg.dashboard_address,
            silence_logs=logging.CRITICAL,
            preload=["daskinfer.worker_setup"],
            preload_argv=["--load-model", json.dumps(dataclasses.asdict(model_spec))] if model_spec else [],
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
    forkserver.ensure_running()


def describe(client, cfg: DictConfig) -> None:
    """Log where the job runs: the scheduler, and the dashboard to watch it on."""
    if cfg.address:
        log.info("Connected to the dask scheduler at %s", cfg.address)
    elif cfg.manager:
        log.info("Started a dask cluster with %s", cfg.manager)
    if adaptive(cfg):
        log.info("Adaptive scaling: %s to %s workers", cfg.adapt.minimum or 0, cfg.adapt.maximum or "any number of")
    if "dashboard" in client.scheduler_info(n_workers=0).get("services", {}):
        log.info("Dask dashboard: %s", client.dashboard_link)


def planned_threads(client, cfg: DictConfig) -> int:
    """The threads the run will have: those of the workers now, or, on an adaptive
    cluster, of cluster.adapt.maximum workers shaped like them."""
    nthreads = client.nthreads()
    if not adaptive(cfg) or not cfg.adapt.maximum:
        return sum(nthreads.values()) or 1
    per_worker = sum(nthreads.values()) / len(nthreads) if nthreads else cfg.threads_per_worker or 1
    return max(1, round(cfg.adapt.maximum * per_worker))


def tasks_ahead(threads: int, cfg: DictConfig) -> int:
    """How many partitions to keep submitted ahead of the one being written.

    Two per thread keeps every thread busy while bounding what the driver and the
    scheduler hold. Adaptive scaling asks for workers in proportion to the work it sees
    queued (a worker per distributed.adaptive.target-duration, 5 s, of it), so an
    adaptive cluster is shown more.
    """
    return max(32, 4 * threads) if adaptive(cfg) else 2 * threads + 2


def _remote_client(cfg: DictConfig):
    import distributed

    sec = security(cfg)
    if cfg.address.startswith("tls://") and not sec.tls_ca_file:
        raise ConfigError(
            f"the scheduler at {cfg.address} speaks TLS and no certificates are configured: set "
            "cluster.tls.ca_file/client_cert/client_key or DASK_DISTRIBUTED__COMM__TLS__CA_FILE, "
            "..._CLIENT__CERT and ..._CLIENT__KEY"
        )
    try:
        return distributed.Client(cfg.address, security=sec)
    except OSError as exc:
        raise ConnectionError(f"cannot reach the dask scheduler at {cfg.address}: {first_line(exc)}") from None


def security(cfg: DictConfig):
    """TLS settings: cluster.tls.* when given, else dask's own configuration
    (dask config files, DASK_DISTRIBUTED__COMM__TLS__* variables), which Security() reads."""
    from distributed import Security

    tls = {f"tls_{key}": value for key, value in cfg.tls.items() if value}
    return Security(require_encryption=True, **tls) if tls else Security()


def watch_workers(client, wait_s: float) -> Callable[[], None]:
    """A check to call while waiting on results: raises once no worker has been
    connected for wait_s seconds (a run cannot finish then; a worker that comes back
    in time takes the lost work)."""
    lost_since: list = []
    last_look = [0.0]

    def check() -> None:
        now = time.monotonic()
        if now - last_look[0] < 1.0:
            return  # asking the scheduler once a second is plenty
        last_look[0] = now
        if client.scheduler_info(n_workers=-1).get("workers"):
            lost_since.clear()
            return
        lost_since[:] = lost_since or [now]
        if now - lost_since[0] > wait_s:
            raise TimeoutError(f"no dask worker left for {wait_s:g} s (cluster.wait_for_workers_s); the run is incomplete")

    return check


def _wait_for_workers(client, cfg: DictConfig) -> None:
    try:
        client.wait_for_workers(1, timeout=cfg.wait_for_workers_s)
    except (TimeoutError, OSError):
        where = cfg.address or "the LocalCluster"
        raise TimeoutError(f"no dask worker joined {where} within {cfg.wait_for_workers_s:g} s") from None
