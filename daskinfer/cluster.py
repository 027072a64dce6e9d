"""The Dask cluster: a LocalCluster sized to the machine, or a running scheduler.

Security (TLS) and timeouts come from dask's own configuration (dask config files and
DASK_* environment variables), read by `distributed` itself.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from typing import Any, Callable, Iterator

from omegaconf import DictConfig

from daskinfer.config import ConfigError
from daskinfer.errors import first_line

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
def connect(cfg: DictConfig) -> Iterator[Any]:
    """A Client on the configured cluster, closed quietly on exit."""
    import distributed

    quiet_logs()
    cluster = None
    if cfg.address:
        client = _remote_client(cfg)
    else:
        cluster = _local_cluster(cfg)
        client = distributed.Client(cluster)
    try:
        _wait_for_workers(client, cfg)
        yield client
    finally:
        quiet_logs()
        with contextlib.suppress(Exception):
            client.close()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()


def _local_cluster(cfg: DictConfig):
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
    }
    with dask.config.set(settings), warnings.catch_warnings():
        # A busy dashboard port (another job's) is fine: dask picks another, and we log it.
        warnings.filterwarnings("ignore", message="Port .* is already in use")
        return distributed.LocalCluster(
            n_workers=cfg.n_workers,
            threads_per_worker=cfg.threads_per_worker,
            processes=True,
            host="127.0.0.1",
            dashboard_address=cfg.dashboard_address,
            silence_logs=logging.CRITICAL,
            preload=["daskinfer.model"],  # workers import TensorFlow as they start
        )


def describe(client, cfg: DictConfig) -> None:
    """Log where the job runs: the scheduler, and the dashboard to watch it on."""
    if cfg.address:
        log.info("Connected to the dask scheduler at %s", cfg.address)
    if "dashboard" in client.scheduler_info(n_workers=0).get("services", {}):
        log.info("Dask dashboard: %s", client.dashboard_link)


def total_threads(client) -> int:
    return sum(client.nthreads().values()) or 1


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
