"""A dask scheduler that is already running (cluster.address): its address checked before
anything starts, TLS from cluster.tls or dask's own configuration, and a connection that
gives up within the connect timeout whatever answers at that address."""

from __future__ import annotations

import logging
import threading

from omegaconf import DictConfig

from daskinfer.errors import ConfigError, first_line

log = logging.getLogger("daskinfer")
PATIENCE_S = 2  # a scheduler that answers takes well under this; after it, the run says it waits

SCHEDULER_PROTOCOLS = ("tcp", "tls", "ucx", "inproc", "ws", "wss")


def check_address(address: str) -> None:
    """A scheduler address as dask writes it: tcp://HOST:PORT (or tls://, ...; HOST:PORT
    means tcp). A web address or a bare word is a configuration error, said at once."""
    protocol, sep, location = address.rpartition("://")
    host, colon, port = location.rpartition(":")
    if (sep and protocol not in SCHEDULER_PROTOCOLS) or not (colon and host and port.isdigit()):
        raise ConfigError(
            f"cluster.address must be a dask scheduler address such as tcp://HOST:8786, got {address}"
            + (" (the dashboard's http:// address is not the scheduler's)" if protocol.startswith("http") else "")
        )


def check_remote(cfg: DictConfig) -> None:
    """What can be said of cluster.address before connecting: its form, and TLS settings."""
    check_address(cfg.address)
    if cfg.address.startswith("tls://") and not security(cfg).tls_ca_file:
        raise ConfigError(
            f"cluster.address {cfg.address} asks for TLS and no certificates are configured: set "
            "cluster.tls.ca_file/client_cert/client_key or DASK_DISTRIBUTED__COMM__TLS__CA_FILE, "
            "..._CLIENT__CERT and ..._CLIENT__KEY (or write tcp:// for a scheduler without TLS)"
        )


def client(cfg: DictConfig):
    """A Client on the scheduler at cluster.address, within the connect timeout.

    distributed bounds the TCP connection but not the handshake after it: something that
    accepts connections and never answers as a scheduler (a web server) would hold the run
    for ever. So the client is made in a thread of its own, waited for a little longer than
    the timeout; a thread still stuck then is left behind (a daemon) with the one-line error.
    """
    import dask
    import distributed
    from dask.utils import parse_timedelta

    check_remote(cfg)
    sec = security(cfg)
    timeout = parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), default="s")
    made: dict = {}

    def connect_client() -> None:
        try:
            made["client"] = distributed.Client(cfg.address, security=sec, timeout=timeout)
        except BaseException as exc:  # reported by the waiting thread
            made["error"] = exc

    attempt = threading.Thread(target=connect_client, name="daskinfer-connect", daemon=True)
    attempt.start()
    attempt.join(min(PATIENCE_S, timeout))
    if attempt.is_alive():  # refused (distributed retries until the timeout), or slow: say why we wait
        log.info("Waiting for the dask scheduler at %s, for up to %g s (distributed.comm.timeouts.connect)",
                 cfg.address, timeout)
        attempt.join(timeout + 5)
    if "client" in made:
        return made["client"]
    exc = made.get("error")
    if exc is None:
        reason = f"no dask scheduler answered within {timeout:g} s (distributed.comm.timeouts.connect)"
    elif isinstance(exc, OSError):  # refused, timed out
        reason = first_line(exc)
    else:  # something answered that is no dask scheduler
        reason = f"no dask scheduler answered ({type(exc).__name__}: {first_line(exc)})"
    raise ConnectionError(f"cannot reach the dask scheduler at {cfg.address}: {reason}")


def security(cfg: DictConfig):
    """TLS settings: cluster.tls.* when given, else dask's own configuration
    (dask config files, DASK_DISTRIBUTED__COMM__TLS__* variables), which Security() reads."""
    from distributed import Security

    tls = {f"tls_{key}": value for key, value in cfg.tls.items() if value}
    return Security(require_encryption=True, **tls) if tls else Security()
