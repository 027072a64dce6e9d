"""Talking to MLflow: importing it only when asked, its HTTP settings bounded for our calls,
and its exceptions as Python's own with one line that never shows a secret.

MLflow is imported only through import_mlflow, and only when a URI or the configuration asks
for it: its import takes about 2 s and brings pandas, so a run without MLflow never pays it.
"""

from __future__ import annotations

import contextlib
import os
import re
import urllib.parse
from typing import Dict, Iterator, Optional

from daskinfer import storage
from daskinfer.errors import ConfigError, first_line

# MLflow's HTTP client retries 7 times with growing pauses and waits 120 s for an answer: minutes
# before a dead server is reported. Metadata calls get 3 tries of 5 s (under 30 s in all);
# transfers keep the retries but wait longer for each read. A value the user set wins.
LOOKUP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
          "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
TRANSFER = {**LOOKUP, "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}
# No progress bars on the driver's stderr, no "View run at" lines on its stdout. Files go
# through the tracking server, the one place the user named: MLflow 3 would otherwise send
# each worker straight to the artifact store with presigned URLs, which it may not be able to
# reach (retried for minutes, then failed). MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD=true
# brings the direct, parallel downloads back where the store is reachable.
DEFAULTS = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
            "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false", "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "false"}
SECRET_VARIABLES = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
AUTH_CODES = ("UNAUTHENTICATED", "PERMISSION_DENIED", "UNAUTHORIZED", "CUSTOMER_UNAUTHORIZED")


class LogFailed(RuntimeError):
    """A batch run could not be logged to MLflow; one line, for a warning (the results stay)."""


def import_mlflow(what: str):
    """The mlflow module, or a one-line ConfigError saying how to install it."""
    try:
        import mlflow
        import mlflow.artifacts  # noqa: F401  (not imported by `import mlflow` alone)
    except ImportError:
        raise ConfigError(f"{what} needs MLflow, which is not installed here: pip install 'daskinfer[mlflow]'") from None
    return mlflow


def require_tracking_uri(mlflow, what: str) -> str:
    """The tracking URI, credentials removed. Unset, MLflow would quietly create an empty
    store (mlflow.db) in the current folder and report every model as missing."""
    tracking = mlflow.get_tracking_uri()
    local = _local_store(tracking)
    if local is not None and not os.path.exists(local):
        raise ConfigError(f"{what} needs an MLflow tracking server, and none is set: "
                          "export MLFLOW_TRACKING_URI=http://<server>:5000 (and its credentials)")
    return redact_uri(tracking)


def _local_store(tracking: str) -> Optional[str]:
    """The file or folder of a local tracking store (sqlite, file), or None for a server."""
    if tracking.startswith("sqlite:///"):
        return tracking[len("sqlite:///"):]
    parsed = urllib.parse.urlparse(tracking)
    if parsed.scheme in ("", "file"):
        return parsed.path
    return None


def redact_uri(uri: str) -> str:
    """uri without the user:password@ it may hold."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.username is None and parsed.password is None:
        return uri
    return urllib.parse.urlunsplit(parsed._replace(netloc="***@" + parsed.netloc.rpartition("@")[2]))


def scrub(text: str) -> str:
    """text without any secret the environment holds, and URIs without their credentials."""
    for name in SECRET_VARIABLES:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return re.sub(r"(\w+://)[^/@\s]+@", r"\1***@", text)


@contextlib.contextmanager
def settings(values: Dict[str, str]) -> Iterator[None]:
    """MLflow's environment settings for the calls inside, unless the user set them; the
    environment is as it was afterwards."""
    wanted = {**values, **DEFAULTS}
    saved = {name: os.environ.get(name) for name in wanted}
    for name, value in wanted.items():
        os.environ.setdefault(name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def one_line_errors(what: str) -> Iterator[None]:
    """MLflow's and requests' exceptions as Python's own, each with one line naming what."""
    try:
        yield
    except (ConfigError, FileNotFoundError, PermissionError, ConnectionError):
        raise
    except Exception as exc:
        raise translate(exc, what) from None


def is_missing(exc: BaseException) -> bool:
    """True when MLflow says the thing asked for does not exist."""
    code = getattr(exc, "error_code", "")
    # an unknown alias comes back as INVALID_PARAMETER_VALUE "... alias x not found"
    return code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or (
        code == "INVALID_PARAMETER_VALUE" and "not found" in str(exc).lower())


def translate(exc: BaseException, what: str) -> Exception:
    """exc as FileNotFoundError, PermissionError or ConnectionError, one line, no secrets.
    MLflow's own errors carry an error_code; an artifact store on S3 answers through boto3."""
    server = redact_uri(_tracking_uri())
    code = getattr(exc, "error_code", "") or _s3_code(exc)
    text = scrub(first_line(exc))
    if is_missing(exc) or code in ("NoSuchKey", "NoSuchBucket", "404"):
        return FileNotFoundError(f"{what} not found: {_without_code(text)}")
    if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
        return PermissionError(f"the artifact store refused access to {what}: {text}")
    if code in AUTH_CODES or re.search(r"error code 40[13]\b", text):
        denied = code == "PERMISSION_DENIED" or re.search(r"error code 403\b", text)
        advice = "this user lacks the permission" if denied else \
            "check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN"
        return PermissionError(f"the MLflow tracking server at {server} refused access to {what}: {advice}")
    reason = _connection_reason(exc, text)
    if reason and type(exc).__module__.startswith("botocore"):
        return ConnectionError(f"cannot reach the artifact store for {what}: {text}")
    if reason:
        return ConnectionError(f"cannot reach the MLflow tracking server at {server} for {what}: {reason}")
    return ConnectionError(f"the MLflow tracking server at {server} failed on {what}: {_without_code(text)}")


def _s3_code(exc: BaseException) -> str:
    """The error code of a botocore ClientError (AccessDenied, NoSuchKey, ...), else ""."""
    response = getattr(exc, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def _tracking_uri() -> str:
    try:
        import mlflow

        return mlflow.get_tracking_uri()
    except Exception:
        return os.environ.get("MLFLOW_TRACKING_URI", "")


def _connection_reason(exc: BaseException, text: str) -> Optional[str]:
    """Why the server could not be reached (refused, no answer in time, unknown host), or None."""
    chain, seen = [], exc
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    blob = " ".join(str(e) for e in chain) + " " + text
    if re.search(r"timed? ?out|Timeout", blob):
        timeout = os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", LOOKUP["MLFLOW_HTTP_REQUEST_TIMEOUT"])
        return f"no answer within {timeout} s (MLFLOW_HTTP_REQUEST_TIMEOUT)"
    errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", blob)
    if errno:
        return errno.group(1).strip().lower()
    if "Max retries exceeded" in blob or any(storage.is_connection_error(e) or type(e).__name__ == "ConnectionError"
                                             for e in chain):
        return "connection failed"
    return None


def _without_code(text: str) -> str:
    """MLflow's message without its leading error code (RESOURCE_DOES_NOT_EXIST: ...)."""
    return re.sub(r"^[A-Z_]+:\s*", "", text)
