"""The Dask cluster: a LocalCluster sized to the machine, or a running scheduler.

Security (TLS) and timeouts come from dask's own configuration (dask config files and
DASK_* environment variables), read by `distributed` itself.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

from omegaconf import DictConfig

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
    "bokeh",
)


def quiet_logs(level: int = logging.CRITICAL) -> None:
    """Keep dask's own chatter off the user's terminal (after `distributed` is imported,
    which resets its loggers from its config)."""
    import distributed  # noqa: F401  (importing configures the loggers we then tune)

    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def connect(cfg: DictConfig) -> Iterator["distributed.Client"]:
    """A Client on the configured cluster, closed quietly on exit."""
    import distributed

    quiet_logs()
    cluster = None
    try:
        if cfg.address:
            client = _remote_client(cfg)
        else:
            cluster = distributed.LocalCluster(
                n_workers=cfg.n_workers,
                threads_per_worker=cfg.threads_per_worker,
                processes=True,
                host="127.0.0.1",
                dashboard_address=cfg.dashboard_address,
                silence_logs=logging.CRITICAL,
            )
            client = distributed.Client(cluster)
    except OSError as exc:
        raise ConnectionError(f"cannot reach the dask scheduler at {cfg.address}: {first_line(exc)}") from None
    try:
        _wait_for_workers(client, cfg)
        if client.dashboard_link and (cfg.address or cfg.dashboard_address):
            log.info("Dask dashboard: %s", client.dashboard_link)
        yield client
    finally:
        quiet_logs()
        with contextlib.suppress(Exception):
            client.close()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()


def total_threads(client) -> int:
    return sum(client.nthreads().values()) or 1


def _remote_client(cfg: DictConfig):
    import distributed

    log.info("Connecting to the dask scheduler at %s", cfg.address)
    return distributed.Client(cfg.address)


def _wait_for_workers(client, cfg: DictConfig) -> None:
    try:
        client.wait_for_workers(1, timeout=cfg.wait_for_workers_s)
    except (TimeoutError, OSError):
        where = cfg.address or "the LocalCluster"
        raise TimeoutError(f"no dask worker joined {where} within {cfg.wait_for_workers_s:g} s") from None
