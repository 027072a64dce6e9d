"""Exceptions as the one-line messages users read."""

from __future__ import annotations

import errno
import re
from typing import Optional


class ConfigError(ValueError):
    """A configuration the user must fix; its message is one line."""


class RunFailed(RuntimeError):
    """The run cannot finish for a reason the user must see (and retrying won't fix)."""


class ModelLoadError(RunFailed):
    """The model exists but could not be loaded; retrying will not help."""


class NotATextModel(ModelLoadError, ConfigError):
    """The model loads, but daskinfer cannot feed it or read it as it is configured (it takes
    token ids, it has several outputs and inference.model_output names none of them): a
    configuration matter, exit status 2."""


class ErrorBudgetExceeded(RunFailed):
    """More documents failed than inference.error_budget allows; all output was written."""


class WorkersDied(RunFailed):
    """dask gave up on a task whose workers kept dying, and the run cannot go around it."""


class Incomplete(RunFailed):
    """The run stopped before the end (a lost scheduler, a storage outage, a full disk),
    with what was written kept for inference.resume."""

    def __init__(self, reason: str, output_uri: str, hint_apart: bool = False, model_uri: Optional[str] = None):
        super().__init__(reason)
        self.output_uri = output_uri
        self.hint_apart = hint_apart  # the resume command on a line of its own, before the reason
        # the model's MLflow URI pinned to the version the run used: its alias may move before the resume
        self.model_uri = model_uri


class Interrupted(Incomplete):
    """Stopped by Ctrl-C or SIGTERM, with what was written kept for inference.resume."""

    def __init__(self, output_uri: str, model_uri: Optional[str] = None):
        super().__init__(f"interrupted; partial results kept for resuming into {output_uri}", output_uri,
                         model_uri=model_uri)


def this_worker() -> str:
    """"this worker", with its address when it is a dask worker's: of several, one set up
    otherwise (a package missing) must be found by the one line."""
    try:
        from distributed import get_worker

        return f"this worker ({get_worker().address})"
    except (ImportError, ValueError):
        return "this worker"


def first_line(exc: BaseException) -> str:
    """One line that says what went wrong: the message's first line, or its type's name.

    A first line that only announces more ("Graph execution error:", as TensorFlow's
    errors start) gets the first informative line after it.
    """
    # TensorFlow starts an op's error with the traced function's name: {{function_node __inference_...}}
    lines = [_FUNCTION_NODE.sub("", line).strip() for line in str(exc).splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return type(exc).__name__
    if lines[0].startswith(_DASK_BACKEND):  # dask re-raises a reader's error with this line first
        original = next((line for line in lines[1:] if line.startswith("Original Message: ")), None)
        if original:
            return original[len("Original Message: "):]
    if lines[0].endswith(":"):
        detail = next((line for line in lines[1:] if not line.startswith(_SCAFFOLDING)), None)
        if detail:
            return f"{lines[0]} {detail}"
    return lines[0]


_FUNCTION_NODE = re.compile(r"^\{\{function_node [^}]*\}\}")


def may_pass(exc: BaseException) -> bool:
    """Whether a document's failure may pass on a later try: a timeout, throttling, a reset
    connection, a busy or exhausted resource; not a bad file or a model that cannot read it.
    errors.jsonl marks such entries "transient"."""
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    if isinstance(exc, OSError) and exc.errno in _PASSING_ERRNOS:
        return True
    text = f"{type(exc).__name__} {exc}"
    return any(mark in text for mark in _PASSING_MARKS)


_PASSING_ERRNOS = {errno.EAGAIN, errno.EBUSY, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNABORTED, errno.EINTR}
_PASSING_MARKS = ("SlowDown", "Throttl", "RequestTimeout", "ServiceUnavailable", "TooManyRequests",
                  "ResourceExhaustedError", "UnavailableError", "DeadlineExceededError", "EndpointConnectionError",
                  "ReadTimeout", "ConnectTimeout")


def root_cause(exc: BaseException) -> BaseException:
    """The exception at the bottom of a chain: wrappers such as dask's "An error occurred
    while calling read_parquet" or distributed's "Nanny failed to start" say less."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


_DASK_BACKEND = "An error occurred while calling the "  # ... read_json method registered to the pandas backend.
# Lines of TensorFlow's error messages that locate the error rather than state it.
_SCAFFOLDING = ("Detected at node", "<stack traces", "[[", "File ", "Traceback")
