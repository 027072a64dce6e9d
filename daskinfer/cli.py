"""Command line: `daskinfer [--config FILE] key=value ...` and `daskinfer demo`.

Anything the user must fix ends the run with one line on stderr and a non-zero exit;
a traceback means a bug in daskinfer.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
import threading
from importlib import metadata
from typing import List, Optional

from daskinfer import compat, config, redaction
from daskinfer.errors import ErrorBudgetExceeded, Incomplete, Interrupted, RunFailed

USER_ERRORS = (
    RunFailed,
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    NotADirectoryError,
    ConnectionError,
    TimeoutError,
)

EXIT_USER_ERROR = 1
EXIT_CONFIG_ERROR = 2
EXIT_ERROR_BUDGET = 3
EXIT_INTERRUPTED = 130


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="daskinfer",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Score every document in a folder or bucket with a TensorFlow text "
        "classifier on Dask, and write one JSONL file of predictions.",
        epilog="commands:\n  demo                   build a demo model and reviews under ./daskinfer-demo and score them\n"
        "  plan key=value ...     a dry run: list the inputs, time the model on a sample, estimate the run\n\n"
        "configuration keys (key=default  meaning):\n" + config.help_text(),
    )
    p.add_argument("--config", metavar="FILE", help="YAML file merged over the defaults; key=value overrides win")
    p.add_argument("--version", action="version", version=f"daskinfer {_version()}")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="configuration overrides (or 'demo' or 'plan' first)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_intermixed_args(argv)  # key=value on both sides of --config
    setup_logging()
    signal.signal(signal.SIGTERM, _interrupt)
    overrides = list(args.overrides)
    try:
        if overrides[:1] == ["demo"]:
            from daskinfer import demo

            demo.run(overrides[1:], args.config)
        elif overrides[:1] == ["plan"]:
            from daskinfer import plan

            print("\n".join(plan.lines(plan.plan(config.load_config(overrides[1:], args.config)))), flush=True)
        else:
            from daskinfer import pipeline

            pipeline.run(config.load_config(overrides, args.config))
    except config.ConfigError as exc:
        return fail(str(exc), EXIT_CONFIG_ERROR)
    except Interrupted as exc:
        return fail(f"{exc}; {resume_hint(argv, exc.output_uri, exc.model_uri)}", EXIT_INTERRUPTED)
    except Incomplete as exc:
        hint = f"partial results kept; {resume_hint(argv, exc.output_uri, exc.model_uri)}"
        if exc.hint_apart:
            print(f"daskinfer: {hint}", file=sys.stderr, flush=True)
            return fail(str(exc), EXIT_USER_ERROR)
        return fail(f"{exc}; {hint}", EXIT_USER_ERROR)
    except ErrorBudgetExceeded as exc:
        return fail(str(exc), EXIT_ERROR_BUDGET)
    except USER_ERRORS as exc:
        return fail(str(exc), EXIT_USER_ERROR)
    except KeyboardInterrupt:
        return fail("interrupted", EXIT_INTERRUPTED)
    return 0


def entry() -> None:
    """The console script: main(), then leave without tearing the interpreter down.

    By then every output is written and closed. Freeing the modules of dask, pandas
    and numpy one by one took 0.15 s here, a few percent of a short run, for nothing.
    An unexpected exception still ends the usual way, with its traceback.
    """
    code = main()
    if code:
        compat.kill_forkserver()  # still importing TensorFlow for a run that never started
    compat.run_exit_functions()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def resume_hint(argv: List[str], output_uri: str, model_uri: Optional[str] = None) -> str:
    """`to resume: ` and the same command, told to resume into the same output, with the
    model pinned (model_uri: an MLflow alias's version then). An override holding a secret is
    left out, and named: a command that passed *** for it would fail."""
    kept, secret = [], []
    for arg in argv:
        if arg.startswith(("inference.resume=", "inference.output_path=")) or \
                (model_uri and arg.startswith("inference.model_path=")):
            continue
        if redaction.redacted_override(arg) == arg:
            kept.append(arg)
        else:
            secret.append(arg.partition("=")[0])
    pinned = [f"inference.model_path={model_uri}"] if model_uri else []
    command = shlex.join(["daskinfer", *kept, *pinned, "inference.resume=true", f"inference.output_path={output_uri}"])
    if secret:
        return f"to resume, add back {', '.join(secret)} (left out as secret) to: {command}"
    return f"to resume: {command}"


def _version() -> str:
    try:
        return metadata.version("daskinfer")
    except metadata.PackageNotFoundError:
        return "unknown"


def _interrupt(signum, frame) -> None:
    """SIGTERM stops the run the way Ctrl-C does: resumable. Not inside an import's lock
    callback, though: an exception there is printed as "Exception ignored" with a traceback
    and lost, and the run goes on half-started. The signal comes again 50 ms later."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            threading.Timer(0.05, os.kill, (os.getpid(), signum)).start()
            return
        frame = frame.f_back
    raise KeyboardInterrupt


def fail(message: str, code: int) -> int:
    text = " ".join(message.split()) or "failed"
    print(f"daskinfer: error: {text}", file=sys.stderr, flush=True)
    return code


def setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    log = logging.getLogger("daskinfer")
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False

