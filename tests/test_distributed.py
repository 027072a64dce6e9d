"""daskinfer against real `dask scheduler` / `dask worker` processes, as on several VMs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import distributed
import pytest
from conftest import assert_predictions, local_docs, read_jsonl, run_cli
from dask_processes import make_certificates, start_cluster
from test_errors import assert_user_error
from test_tables import assert_rows

# Tiny model calls keep these runs going for several seconds, long enough to interrupt.
SLOW = "inference.batch_size=4"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    running = start_cluster(tmp_path_factory.mktemp("dask"), n_workers=2)
    try:
        with distributed.Client(running.address) as client:
            client.wait_for_workers(2, timeout=60)
        yield running
    finally:
        running.close()


def worker_tf_threads(address: str, security=None) -> dict:
    with distributed.Client(address, security=security) as client:
        return client.run(lambda: (
            __import__("tensorflow").config.threading.get_intra_op_parallelism_threads(),
            __import__("tensorflow").config.threading.get_inter_op_parallelism_threads(),
        ))


# Whether a process's TensorFlow runs its oneDNN kernels, as an expression for workers to
# evaluate. TensorFlow has no public call for it; its own scripts ask this private module, so
# a release that moves it fails these tests rather than letting them pass unchecked.
ONEDNN_ON = "bool(__import__('tensorflow.python.util._pywrap_util_port', fromlist=['_']).IsMklEnabled())"


def test_runs_on_an_existing_cluster_from_the_environment(cluster, models, test_docs, reference_scores, tmp_path):
    out = tmp_path / "res.jsonl"
    run = run_cli(
        f"inference.model_path={models['tf-keras2-savedmodel'][0]}", f"inference.input_data_dir={test_docs}",
        f"inference.output_path={out}", cwd=tmp_path, env={"DASK_SCHEDULER_ADDRESS": cluster.address},
    )
    assert run.returncode == 0, run.stderr
    assert f"Connected to the dask scheduler at {cluster.address}" in run.stderr
    assert_predictions(read_jsonl(out), local_docs(test_docs), reference_scores["tf-keras2-savedmodel"])
    loads = json.loads((tmp_path / "summary.json").read_text())["model_loads"]
    assert len(loads) == 2 and set(loads.values()) == {1}
    # TensorFlow's pools follow the one thread each `dask worker --nthreads 1` has
    assert set(worker_tf_threads(cluster.address).values()) == {(1, 1)}
    # docker/dask.yaml, as the worker image installs it, keeps glibc's adaptive malloc for TensorFlow,
    # switches off the workers' statistical profiler, times their event loops once a second rather
    # than every 20 ms, and preloads daskinfer.worker_setup (TensorFlow imported at start, then left
    # out of full garbage collections)
    with distributed.Client(cluster.address) as client:
        settings = client.run(lambda dask_worker: (
            os.environ.get("MALLOC_TRIM_THRESHOLD_"),
            __import__("dask").config.get("distributed.worker.profile.enabled"),
            dask_worker.periodic_callbacks["tick"].callback_time,
            __import__("gc").get_freeze_count() > 100_000,
            eval(ONEDNN_ON),
        ))
    assert set(settings.values()) == {(None, False, 1000, True, True)}


def test_a_relative_model_path_reaches_workers_started_in_other_folders(cluster, models, test_docs, reference_scores,
                                                                       tmp_path):
    """inference.model_path=model.keras, as the driver finds it in its folder: the workers, each
    started from a folder of its own, load that file too (as input_data_dir's documents)."""
    shutil.copyfile(models["keras"][0], tmp_path / "model.keras")
    out = tmp_path / "res.jsonl"
    run = run_cli("inference.model_path=model.keras", f"inference.input_data_dir={test_docs}",
                  f"inference.output_path={out}", f"cluster.address={cluster.address}", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert_predictions(read_jsonl(out), local_docs(test_docs), reference_scores["keras"])


def test_a_worker_that_does_not_see_the_input_files_stops_the_run_naming_it(tmp_path, models, test_docs):
    """A worker on a VM without the input folder (here: one whose opens of it fail, as there)
    would file every document it is given as not found; the run stops instead, resumable,
    naming the worker."""
    blind = tmp_path / "blind"
    blind.mkdir()
    (blind / "sitecustomize.py").write_text(textwrap.dedent(f"""\
        import errno, os
        hidden, real_open = {str(test_docs)!r}, os.open
        def blind_open(path, *args, **kwargs):
            if str(path).startswith(hidden):
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
            return real_open(path, *args, **kwargs)
        os.open = blind_open
        """))
    alone = start_cluster(tmp_path, n_workers=0)
    out = tmp_path / "out" / "res.jsonl"
    try:
        alone.add_worker("blind", env={"PYTHONPATH": str(blind)})
        with distributed.Client(alone.address) as client:
            client.wait_for_workers(1, timeout=120)
            [address] = client.scheduler_info(n_workers=-1)["workers"]
        run = run_cli(f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={test_docs}",
                      f"inference.output_path={out}", f"cluster.address={alone.address}",
                      "inference.partition_size=10", cwd=tmp_path)
    finally:
        alone.close()
    assert_user_error(run, f"this worker ({address}) does not find the input files the driver listed",
                      "run the workers where the inputs are", code=1, single_line=False)
    assert not out.exists() and not (out.parent / "errors.jsonl").exists()  # no error entry for a present file


def test_a_worker_without_tensorflow_is_one_line_naming_it(tmp_path, models, many_small_docs):
    """A worker set up without TensorFlow (and so without daskinfer's preload, which would
    not start): its first task fails, the run stops in one line that says what to install,
    and what the healthy worker wrote is kept to resume."""
    blocker = tmp_path / "no-tensorflow"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(textwrap.dedent("""\
        import importlib.abc, sys
        class NoTensorFlow(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in ("tensorflow", "keras"):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        sys.meta_path.insert(0, NoTensorFlow())
        """))
    mixed = start_cluster(tmp_path, n_workers=1)
    out = tmp_path / "out" / "res.jsonl"
    try:
        mixed.add_worker("without-tensorflow", env={"PYTHONPATH": str(blocker), "DASK_CONFIG": None})
        with distributed.Client(mixed.address) as client:
            client.wait_for_workers(2, timeout=120)
            [lacking] = [address for address, worker in client.scheduler_info(n_workers=-1)["workers"].items()
                         if worker["name"] == "without-tensorflow"]
        run = run_cli(f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={many_small_docs[0]}",
                      f"inference.output_path={out}", f"cluster.address={mixed.address}", cwd=tmp_path)
    finally:
        mixed.close()
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert f"this worker ({lacking}) cannot import TensorFlow" in run.stderr_lines[-1], run.stderr  # which of them
    assert "pip install tensorflow" in run.stderr_lines[-1]
    assert not out.exists()
    if Path(f"{out}.partial").exists():  # the healthy worker's partitions, kept
        assert "inference.resume=true" in run.stderr, run.stderr


@pytest.mark.parametrize("given, expected", [(None, True), ("0", False)])
def test_workers_run_tensorflow_with_onednn_unless_told_otherwise(given, expected):
    """oneDNN's kernels score a transformer about 1.6 times as fast on CPUs where TensorFlow
    leaves them off (benchmarks/README); a user's TF_ENABLE_ONEDNN_OPTS still decides."""
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if given is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = given
    code = f"import daskinfer.worker_setup; print({ONEDNN_ON})"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(expected)


def test_table_rows_on_an_existing_cluster(cluster, models, table_files, reviews_table, tmp_path):
    out = tmp_path / "res.jsonl"
    run = run_cli(
        f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={table_files['parquet']}",
        "inference.input_format=parquet", "inference.id_column=id", f"inference.output_path={out}",
        f"cluster.address={cluster.address}", cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert_rows(read_jsonl(out), read_jsonl(tmp_path / "errors.jsonl"), str(table_files["parquet"]), reviews_table)
    by_worker = json.loads((tmp_path / "summary.json").read_text())["documents_by_worker"]
    assert len(by_worker) == 2 and min(by_worker.values()) > 0  # one file's rows spread over both workers


def test_worker_killed_mid_run_loses_nothing(cluster, models, many_small_docs, tmp_path):
    folder, reference = many_small_docs
    out = tmp_path / "res.jsonl"
    job = subprocess.Popen(
        [sys.executable, "-m", "daskinfer", f"inference.model_path={models['keras'][0]}",
         f"inference.input_data_dir={folder}", f"inference.output_path={out}",
         f"cluster.address={cluster.address}", "inference.partition_size=250", SLOW],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    partial = Path(f"{out}.partial")
    deadline = time.monotonic() + 120
    while not (partial.exists() and partial.stat().st_size > 0) and time.monotonic() < deadline and job.poll() is None:
        time.sleep(0.05)
    assert job.poll() is None, "the run ended before a worker could be killed: make it longer"
    cluster.kill_worker_process(cluster.workers[0])
    stdout, stderr = job.communicate(timeout=300)
    assert job.returncode == 0, stderr
    records = read_jsonl(out)
    assert len(records) == len(reference)
    for r in records:
        assert abs(r["logit_prob"] - reference[r["filepath"]]) <= 1e-5
    assert [r["filepath"] for r in records] == sorted(reference)
    loads = json.loads((tmp_path / "summary.json").read_text())["model_loads"]
    assert max(loads.values()) == 1  # the surviving worker and the nanny's restarted one: at most once each


def test_no_worker_joins(tmp_path, models, test_docs):
    empty = start_cluster(tmp_path, n_workers=0)
    try:
        run = run_cli(
            f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={test_docs}",
            f"cluster.address={empty.address}", "cluster.wait_for_workers_s=2", cwd=tmp_path,
        )
    finally:
        empty.close()
    assert_user_error(run, f"no dask worker joined {empty.address} within 2 s", single_line=False)
    assert f"Waiting for a dask worker to join {empty.address}, for up to 2 s" in run.stderr  # not a silent wait
    assert not list(tmp_path.rglob("*.jsonl*"))


def test_every_worker_lost_ends_the_run_with_a_clear_message(tmp_path, models, many_small_docs):
    folder, _ = many_small_docs
    lonely = start_cluster(tmp_path, n_workers=1, nanny=False)
    out = tmp_path / "res.jsonl"
    try:
        # The run waits only 3 s for a worker: on a busy machine, `dask worker` (importing
        # TensorFlow) takes longer than that to join, and the run would end before it lost one.
        with distributed.Client(lonely.address) as client:
            client.wait_for_workers(1, timeout=120)
        job = subprocess.Popen(
            [sys.executable, "-m", "daskinfer", f"inference.model_path={models['keras'][0]}",
             f"inference.input_data_dir={folder}", f"inference.output_path={out}",
             f"cluster.address={lonely.address}", "cluster.wait_for_workers_s=3", "inference.partition_size=250", SLOW],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        partial = Path(f"{out}.partial")
        deadline = time.monotonic() + 120
        while not (partial.exists() and partial.stat().st_size > 0) and time.monotonic() < deadline:
            time.sleep(0.05)
        lonely.kill_worker_process(lonely.workers[0])
        _, stderr = job.communicate(timeout=120)
    finally:
        lonely.close()
    assert job.returncode != 0
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        "daskinfer: error: no dask worker left for 3 s (cluster.wait_for_workers_s); the run is incomplete"
    )
    assert "No dask worker left: waiting up to 3 s for one" in stderr
    assert not out.exists()


def test_tls_cluster_needs_certificates(tmp_path, models, test_docs, reference_scores):
    certs = make_certificates(tmp_path / "certs")
    secured = start_cluster(tmp_path, n_workers=1, tls=certs)
    args = [f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={test_docs}",
            f"cluster.address={secured.address}", "cluster.wait_for_workers_s=60"]
    try:
        with_env = run_cli(*args, f"inference.output_path={tmp_path}/a/res.jsonl", cwd=tmp_path, env=certs.client_env())
        with_keys = run_cli(
            *args, f"inference.output_path={tmp_path}/b/res.jsonl", f"cluster.tls.ca_file={certs.ca_file}",
            f"cluster.tls.client_cert={certs.cert}", f"cluster.tls.client_key={certs.key}", cwd=tmp_path,
        )
        without = run_cli(*args, f"inference.output_path={tmp_path}/c/res.jsonl", cwd=tmp_path,
                          env={"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "5s"})
    finally:
        secured.close()
    for run, folder in ((with_env, "a"), (with_keys, "b")):
        assert run.returncode == 0, run.stderr
        assert_predictions(read_jsonl(tmp_path / folder / "res.jsonl"), local_docs(test_docs), reference_scores["keras"])
    assert without.returncode == 2
    assert_user_error(without, secured.address, "no certificates are configured")
    assert not (tmp_path / "c").exists()


def test_cluster_manager_with_adaptive_scaling(models, many_small_docs, tmp_path):
    """A cluster manager named by import path, scaled by dask between one and two workers."""
    folder, reference = many_small_docs
    out = tmp_path / "res.jsonl"
    run = run_cli(
        f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={folder}",
        f"inference.output_path={out}", "inference.batch_size=8",
        "cluster.manager=distributed.LocalCluster", "cluster.manager_kwargs.n_workers=1",
        "cluster.manager_kwargs.threads_per_worker=1", "cluster.manager_kwargs.dashboard_address=127.0.0.1:0",
        "cluster.adapt.minimum=1", "cluster.adapt.maximum=2", cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    records = read_jsonl(out)
    assert [r["filepath"] for r in records] == sorted(reference)
    for r in records:
        assert abs(r["logit_prob"] - reference[r["filepath"]]) <= 1e-5
    by_worker = json.loads((tmp_path / "summary.json").read_text())["documents_by_worker"]
    assert len(by_worker) == 2 and min(by_worker.values()) > 0, by_worker  # dask added the second worker
    assert sum(by_worker.values()) == len(reference)


@pytest.mark.parametrize("overrides, message", [
    (["cluster.manager=dask_nowhere.SLURMCluster"], "cluster.manager: cannot import dask_nowhere.SLURMCluster"),
    (["cluster.manager=distributed.LocalCluster", "cluster.manager_kwargs.n_workers=two"],
     "cluster.manager distributed.LocalCluster did not start with cluster.manager_kwargs={'n_workers': 'two'}: TypeError"),
    (["cluster.address=tcp://127.0.0.1:1", "cluster.adapt.maximum=2"], "cannot be combined with cluster.address"),
    (["cluster.adapt.minimum=3", "cluster.adapt.maximum=2"], "cluster.adapt.maximum must be >= 1 and >= cluster.adapt.minimum"),
    (["cluster.address=tcp://127.0.0.1:99999"], "cluster.address=tcp://127.0.0.1:99999 is not a scheduler address"),
    (["cluster.address=127.0.0.1:port"], "cluster.address=127.0.0.1:port is not a scheduler address"),
])
def test_bad_cluster_manager_settings(models, test_docs, tmp_path, overrides, message):
    run = run_cli(f"inference.model_path={models['keras'][0]}", f"inference.input_data_dir={test_docs}",
                  *overrides, cwd=tmp_path)
    assert_user_error(run, message, code=2)
    assert not list(tmp_path.rglob("*.jsonl*"))


def test_local_cluster_workers_start_ready_to_score(models, test_docs, tmp_path):
    """The LocalCluster's forkserver imports TensorFlow once, while the driver starts; its
    workers are forked with it imported (and frozen out of full collections), and load
    the run's model before any task asks for it. The driver never imports TensorFlow, nor
    pandas (which distributed's own forkserver set-up would import)."""
    model_path = models["keras"][0]
    code = (
        "import gc, json, os, sys, time\n"
        "from daskinfer import cluster, config, model, planning\n"
        f"cfg = config.load_config(['inference.model_path={model_path}', 'inference.input_data_dir={test_docs}'])\n"
        "cluster.start_forkserver(cfg.cluster)\n"
        "with cluster.connect(cfg.cluster, planning.model_spec(cfg)) as client:\n"
        "    seen = client.run(lambda: ('tensorflow' in sys.modules, gc.get_freeze_count() > 100_000 and gc.isenabled(),\n"
        "                               os.getppid(),\n"
        "                               __import__('dask').config.get('distributed.worker.profile.enabled'),\n"
        "                               any(name in sys.modules for name in ('matplotlib', 'pandas', 'sklearn')),\n"
        "                               'libtensorflow' in open(f'/proc/{os.getppid()}/maps').read(),\n"
        f"                               {ONEDNN_ON}))\n"
        "    importable = client.run(lambda: [__import__(name).__name__ for name in ('matplotlib', 'pandas', 'sklearn')])\n"
        "    ticks = [*client.run(lambda dask_worker: dask_worker.periodic_callbacks['tick'].callback_time).values(),\n"
        "             client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.periodic_callbacks['tick'].callback_time)]\n"
        "    deadline = time.monotonic() + 60\n"
        f"    while set((loads := client.run(model.load_count, '{model_path}')).values()) != {{1}} and time.monotonic() < deadline:\n"
        "        time.sleep(0.1)\n"
        "print(json.dumps([list(seen.values()), list(loads.values()), list(importable.values()),\n"
        "                  'tensorflow' in sys.modules or 'pandas' in sys.modules, ticks]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    workers, loads, importable, driver_imported, ticks = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(workers) >= 2 and not driver_imported
    # the event loops of the workers and the scheduler (which shares the driver's cores with them)
    # are timed once a second, not every 20 ms
    assert ticks == [1000] * (len(workers) + 1)
    # the collector, paused while TensorFlow imports, collects again
    assert all(imported and frozen and profiler is False for imported, frozen, _, profiler, *_ in workers)
    assert all(onednn for *_, onednn in workers)
    # Keras's optional plotting, DataFrame and scikit-learn imports were left out of the workers'
    # start-up, and import as usual afterwards (a table's tasks need pandas)
    assert not any(optional for *_, optional, _, _ in workers)
    assert importable == [["matplotlib", "pandas", "sklearn"]] * len(workers)
    # forked from one forkserver that had TensorFlow loaded before it forked them (a worker
    # importing it itself, as its preload also would, leaves its parent without it)
    assert len({parent for _, _, parent, *_ in workers}) == 1
    assert all(parent_has_tensorflow for *_, parent_has_tensorflow, _ in workers)
    assert loads == [1] * len(workers)  # loaded once each, and no task ran


@pytest.mark.parametrize("address", [None, "127.0.0.1:0"])
def test_a_local_cluster_serves_the_dashboard_only_when_it_has_an_address(address):
    """cluster.dashboard_address=null: no dashboard, and the scheduler's HTTP server (which
    dask starts anyway) on a free port rather than the 8787 of a user's own cluster."""
    import urllib.error
    import urllib.request

    from daskinfer import cluster, config

    cfg = config.load_config(["inference.model_path=m", "inference.input_data_dir=d", "cluster.start_method=spawn",
                              f"cluster.dashboard_address={address or 'null'}"]).cluster
    cfg.n_workers = 0  # the scheduler alone (the settings' check wants at least one worker)
    with cluster._local_cluster(cfg) as local:
        port = local.scheduler.http_server.port
        try:
            status = urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=30).status
        except urllib.error.HTTPError as answer:
            status = answer.code
    assert status == (200 if address else 404) and port != 8787
