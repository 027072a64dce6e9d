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


def test_a_worker_its_local_cluster_closed_is_started_again():
    """A LocalCluster closes the nanny of a worker that is not back 15 s after a death
    (distributed.deploy.lost-worker-timeout), as it does to one that dies again and again
    on a document: the run's look at the workers starts it again."""
    import logging

    import distributed

    from daskinfer import cluster

    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=logging.CRITICAL) as local, distributed.Client(local) as client:
        client.wait_for_workers(1, timeout=60)
        [(name, nanny)] = local.workers.items()
        local.sync(nanny.close)  # what the cluster does then
        del local.workers[name]
        while client.scheduler_info()["workers"]:  # the scheduler hears of it a moment later
            time.sleep(0.1)
        cluster.revive(client)
        client.wait_for_workers(1, timeout=60)
        assert client.submit(sum, [1, 2], pure=False).result(timeout=60) == 3


class _SubmitInterrupted:
    """The session's client, but its third submit is interrupted (as Jupyter's "interrupt the
    kernel" can be, between any two bytecodes) once the scheduler has the task: its future
    lives on in the exception's frames, as sys.last_value keeps them in a notebook."""

    def __init__(self, client):
        self.client, self.calls, self.kept = client, 0, []

    def __getattr__(self, name):
        return getattr(self.client, name)

    def submit(self, fn, *args, **kwargs):
        self.calls += 1
        self.kept.append(self.client.submit(_after, 60, None, **kwargs))  # a task that would hold a thread a minute
        if self.calls == 3:
            raise KeyboardInterrupt
        return self.kept[-1]


def test_a_task_submitted_as_the_run_is_interrupted_is_cancelled_too(client):
    from daskinfer.units import Unit

    interrupted = _SubmitInterrupted(client)
    runner = Runner(interrupted, settings=None, wait_s=30)
    with pytest.raises(KeyboardInterrupt):
        list(runner.in_order([Unit(piece=i, data=(), documents=1, skipped=0) for i in range(6)], window=4))

    def run_tasks(dask_scheduler):
        return [str(key) for key, task in dask_scheduler.tasks.items()
                if str(key).startswith("daskinfer-partition") and task.state != "forgotten"]

    deadline = time.monotonic() + 30  # the third task may reach the scheduler after the interrupt
    while interrupted.kept[2].status == "pending" and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1)
    while client.run_on_scheduler(run_tasks) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [f.status for f in interrupted.kept] == ["cancelled"] * 3
    assert client.run_on_scheduler(run_tasks) == []


def test_a_scheduler_lost_as_a_result_is_fetched_is_said_so(tmp_path):
    """A `dask scheduler` killed while a finished task's result is being fetched: the fetch
    fails on the closed connection (not with a cancelled future, as when the client noticed
    first), and that is a lost scheduler too, not "Stream is closed"."""
    import os
    import signal
    import threading

    import distributed
    from dask_processes import start_cluster

    cluster = start_cluster(tmp_path, n_workers=1, nanny=False)
    try:
        with distributed.Client(cluster.address, timeout=60) as client:
            client.wait_for_workers(1, timeout=120)
            runner = Runner(client, settings=None, wait_s=30)
            future = client.submit(bytes, 2**23, pure=False)  # a builtin: this module is not on the worker
            distributed.wait(future, timeout=60)
            runner._last_look = time.monotonic() + 60  # its look at the workers would notice first
            os.killpg(cluster.scheduler.pid, signal.SIGSTOP)  # the fetch is asked for, and waits
            threading.Timer(0.5, os.killpg, (cluster.scheduler.pid, signal.SIGKILL)).start()
            with pytest.raises(ConnectionError, match=f"lost the dask scheduler at {cluster.address}"):
                runner.result(future)
    finally:
        cluster.close()
