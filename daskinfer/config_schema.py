"""The configuration's schema: every key with its type. Defaults and meanings live in
conf/inference.yaml (config.py reads both)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, List, Optional

from omegaconf import MISSING

PATH_LABELS = ("aclimdb", "parent_dir")  # labels_from values that read a label from a document's path
INPUT_FORMATS = ("files", "jsonl", "csv", "parquet")
# Keys that name a table column: a column may be named on, no or yes, which YAML reads as booleans.
COLUMN_KEYS = ("inference.text_column", "inference.id_column", "inference.labels_from")
OUTPUT_FORMATS = ("jsonl", "parquet")


@dataclass
class MlflowConfig:
    log: bool = MISSING
    experiment: Optional[str] = MISSING
    run_name: Optional[str] = MISSING
    log_results: bool = MISSING


@dataclass
class InferenceConfig:
    model_path: str = MISSING
    model_output: Optional[str] = MISSING
    input_data_dir: Optional[str] = MISSING
    input_format: str = MISSING
    input_glob: Optional[str] = MISSING
    input_manifest: Optional[str] = MISSING
    text_column: str = MISSING
    id_column: Optional[str] = MISSING
    recursive: bool = MISSING
    include_hidden: bool = MISSING
    encoding: str = MISSING
    output_path: Optional[str] = MISSING
    output_format: str = MISSING
    batch_size: int = MISSING
    length_batching: bool = MISSING
    max_batch_chars: Optional[int] = MISSING
    threshold: float = MISSING
    labels: List[str] = MISSING
    all_scores: bool = MISSING
    labels_from: Optional[str] = MISSING
    partition_size: Optional[int] = MISSING
    partition_bytes: int = MISSING
    max_document_bytes: int = MISSING
    model_cache_dir: Optional[str] = MISSING
    error_budget: float = MISSING
    resume: bool = MISSING
    reference: Optional[str] = MISSING
    incremental_from: Optional[str] = MISSING
    incremental_rescore: bool = MISSING
    retry_errors: bool = MISSING
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)


@dataclass
class TLSConfig:
    ca_file: Optional[str] = MISSING
    client_cert: Optional[str] = MISSING
    client_key: Optional[str] = MISSING


@dataclass
class AdaptConfig:
    minimum: Optional[int] = MISSING
    maximum: Optional[int] = MISSING


@dataclass
class ClusterConfig:
    address: Optional[str] = MISSING
    n_workers: Optional[int] = MISSING
    threads_per_worker: Optional[int] = MISSING
    dashboard_address: Optional[str] = MISSING
    start_method: str = MISSING
    wait_for_workers_s: float = MISSING
    tf_intra_op_threads: Optional[int] = MISSING
    tf_inter_op_threads: Optional[int] = MISSING
    manager: Optional[str] = MISSING
    manager_kwargs: Dict[str, Any] = field(default_factory=dict)
    performance_report: Optional[str] = MISSING
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)


@dataclass
class StorageConfig:
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Config:
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)


def text_keys() -> FrozenSet[str]:
    """Every key whose value is text (a path, a URI, a column's name): given as key=value, it is
    kept as written rather than read as YAML, which makes a folder 0123 the octal 83, "x: y" a
    mapping, and a column "on" a boolean (null still means none)."""
    found = set()

    def walk(schema: type, prefix: str) -> None:
        for each in dataclasses.fields(schema):
            if each.type in ("str", "Optional[str]"):
                found.add(prefix + each.name)
            elif dataclasses.is_dataclass(each.default_factory):
                walk(each.default_factory, f"{prefix}{each.name}.")

    walk(Config, "")
    return frozenset(found)
