"""daskinfer: batch inference of TensorFlow text classifiers on Dask.

The same pipeline as the command line, for notebooks:

    import daskinfer
    cfg = daskinfer.load_config(["inference.model_path=...", "inference.input_data_dir=..."])
    result = daskinfer.run(cfg)              # writes the JSONL, returns its location and summary
    bag = daskinfer.records_bag(cfg)         # or explore lazily: bag.to_dataframe().compute()
"""

from daskinfer.config import ConfigError, load_config
from daskinfer.errors import ErrorBudgetExceeded, RunFailed
from daskinfer.model import ModelLoadError
from daskinfer.pipeline import RunResult, records_bag, run

__all__ = [
    "ConfigError", "ErrorBudgetExceeded", "ModelLoadError", "RunFailed", "RunResult", "load_config", "records_bag", "run",
]
