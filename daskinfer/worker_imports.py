"""Imported by the LocalCluster's forkserver (cluster.start_forkserver), never by the
driver: what is imported here once, every worker forked afterwards starts with."""

import distributed  # noqa: F401

from daskinfer import model

model.import_tensorflow_quietly()
model.freeze_imports()
