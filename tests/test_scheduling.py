"""The ordered window's result wait, on the session's LocalCluster."""

from __future__ import annotations

import time

import pytest

from daskinfer.scheduling import Runner


def _after(seconds: float, value: object) -> object:
    time.sleep(seconds)
    if isinstance(value, Exception):
        raise value
    return value


def test_results_come_back_whenever_they_land(client):
    """Runner.result looks at the workers once a second while it waits. Results that land
    around a second's end (where a dask wait with a timeout can fail with an
    UnboundLocalError, dask/distributed#8514), a slow one, and a failing task all come
    back as themselves."""
    runner = Runner(client, settings=None, wait_s=30)
    edges = [0.96, 0.98, 1.0, 1.0, 1.02, 1.04, 0.99, 1.01]
    futures = [client.submit(_after, s, i, pure=False) for i, s in enumerate(edges)]
    assert [runner.result(f) for f in futures] == list(range(len(edges)))
    assert runner.result(client.submit(_after, 2.5, "slow", pure=False)) == "slow"
    with pytest.raises(ValueError, match="one bad partition"):
        runner.result(client.submit(_after, 0.1, ValueError("one bad partition"), pure=False))
