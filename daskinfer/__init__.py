"""daskinfer: batch inference of TensorFlow text classifiers on Dask.

The same pipeline as the command line, for notebooks:

    import daskinfer
    cfg = daskinfer.load_config(["inference.model_path=...", "inference.input_data_dir=..."])
    result = daskinfer.run(cfg)              # writes the JSONL, returns its location and summary
    bag = daskinfer.records_bag(cfg)         # or explore lazily: bag.to_dataframe().compute()
"""

import importlib

# Where each public name lives. They are imported on first use, so that the command
# line can read its configuration, and start the workers' imports, before dask loads.
_PUBLIC = {
    "ConfigError": "daskinfer.errors",
    "ErrorBudgetExceeded": "daskinfer.errors",
    "Incomplete": "daskinfer.errors",
    "Interrupted": "daskinfer.errors",
    "ModelLoadError": "daskinfer.model",
    "RunFailed": "daskinfer.errors",
    "RunResult": "daskinfer.pipeline",
    "load_config": "daskinfer.config",
    "records_bag": "daskinfer.pipeline",
    "run": "daskinfer.pipeline",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'daskinfer' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)


def __dir__():
    return sorted(list(globals()) + __all__)
