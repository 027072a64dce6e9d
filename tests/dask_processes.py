"""Real `dask scheduler` and `dask worker` processes on 127.0.0.1, and TLS certificates."""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import psutil
from conftest import REPO, free_port, wait_for_port

DASK = str(Path(sys.executable).parent / "dask")


@dataclass
class DaskCluster:
    address: str
    scheduler: subprocess.Popen
    workers: List[subprocess.Popen] = field(default_factory=list)
    tls_args: List[str] = field(default_factory=list)
    log_dir: Optional[Path] = None
    env: Optional[Dict[str, str]] = None

    def add_worker(self, name: str, nanny: bool = True, env: Optional[Dict[str, Optional[str]]] = None) -> subprocess.Popen:
        """A `dask worker` of this cluster; env: variables to set (None: to unset) for it alone."""
        log = open(self.log_dir / f"{name}.log", "wb")
        own = {k: v for k, v in {**self.env, **(env or {})}.items() if v is not None}
        worker = subprocess.Popen(
            [DASK, "worker", self.address, "--nthreads", "1", "--host", "127.0.0.1",
             "--dashboard-address", "127.0.0.1:0", "--name", name, "--nanny" if nanny else "--no-nanny", *self.tls_args],
            stdout=log, stderr=subprocess.STDOUT, env=own, start_new_session=True,
        )
        worker.nanny = nanny
        self.workers.append(worker)
        return worker

    def kill_worker_process(self, worker: subprocess.Popen) -> None:
        """kill -9 the process that runs tasks (under a nanny: its spawned child, which the nanny restarts)."""
        if not worker.nanny:
            worker.send_signal(signal.SIGKILL)
            return
        for proc in psutil.Process(worker.pid).children():
            if "multiprocessing" in " ".join(proc.cmdline()):
                proc.send_signal(signal.SIGKILL)

    def close(self) -> None:
        for proc in [*self.workers, self.scheduler]:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def start_cluster(log_dir: Path, n_workers: int = 2, nanny: bool = True, tls: Optional["Certificates"] = None) -> DaskCluster:
    port = free_port()
    protocol = "tls" if tls else "tcp"
    tls_args = tls.server_args() if tls else []
    # LocalClusters started by other tests leave MALLOC_TRIM_THRESHOLD_ in this process's
    # environment (the nanny sets it in its parent); a user's shell does not have it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_") and k != "MALLOC_TRIM_THRESHOLD_"}
    env["DASK_CONFIG"] = str(REPO / "docker" / "dask.yaml")  # as the worker image installs it
    log = open(log_dir / "scheduler.log", "wb")
    scheduler = subprocess.Popen(
        [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", "127.0.0.1:0",
         "--protocol", protocol, *tls_args],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    wait_for_port(port)
    cluster = DaskCluster(f"{protocol}://127.0.0.1:{port}", scheduler, tls_args=tls_args, log_dir=log_dir, env=env)
    for i in range(n_workers):
        cluster.add_worker(f"worker-{i}", nanny=nanny)
    return cluster


@dataclass
class Certificates:
    """A test CA and one certificate for 127.0.0.1 signed by it, as PEM files."""

    ca_file: Path
    cert: Path
    key: Path

    def server_args(self) -> List[str]:
        return ["--tls-ca-file", str(self.ca_file), "--tls-cert", str(self.cert), "--tls-key", str(self.key)]

    def client_env(self) -> Dict[str, str]:
        """How a user hands dask its certificates: the variables distributed.Security reads."""
        return {
            "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(self.ca_file),
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": str(self.cert),
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": str(self.key),
            "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
        }


def make_certificates(folder: Path) -> Certificates:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(common: str):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("daskinfer test CA")).issuer_name(name("daskinfer test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    paths = Certificates(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    paths.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths
