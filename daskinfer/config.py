"""Configuration: typed schema, defaults from conf/inference.yaml, overrides, checks.

config_schema's dataclasses give every key its type; the YAML file gives every key its
default and its one-line meaning (the comment after it), so `--help` and the defaults can
never disagree.
"""

from __future__ import annotations

import codecs
import difflib
import glob
import importlib.util
import math
import os
import re
import urllib.parse
from pathlib import Path
from typing import Any, List, Optional, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigKeyError,
    InterpolationToMissingValueError,
    MissingMandatoryValue,
    OmegaConfBaseException,
)

from daskinfer import config_file_reading, redaction
from daskinfer.config_schema import INPUT_FORMATS, OUTPUT_FORMATS, PATH_LABELS, Config, text_keys
from daskinfer.errors import ConfigError
from daskinfer.redaction import redacted, redacted_override, to_yaml  # noqa: F401  (what callers use)

TEXT_KEYS = text_keys()
COMPRESSED_NAMES = ("gz", "bz2", "xz", "zst", "zip", "lz4", "snappy")  # of an output named so


def defaults_path() -> Path:
    """conf/inference.yaml: in a source checkout beside the package, in a wheel inside it."""
    package = Path(__file__).resolve().parent
    for candidate in (package.parent / "conf", package / "conf"):
        if (candidate / "inference.yaml").is_file():
            return candidate / "inference.yaml"
    raise FileNotFoundError(f"conf/inference.yaml not found near {package}")


def defaults_text() -> str:
    return defaults_path().read_text("utf-8")


def load_config(overrides: Sequence[str] = (), config_file: Optional[str] = None) -> DictConfig:
    """Schema <- conf/inference.yaml <- config_file <- dot-list overrides, resolved and checked."""
    layers = [OmegaConf.create(defaults_text())]
    try:
        if config_file is not None:
            layers.append(config_file_reading.read(config_file))
        layers.append(_dotlist(overrides))
        cfg = OmegaConf.merge(OmegaConf.structured(Config), *layers)
        if OmegaConf.select(cfg, "inference.input_manifest"):
            cfg.inference.input_data_dir = None  # the manifest lists the inputs
        missing = [key for key in valid_keys() if _is_missing(cfg, key)]
        if missing:
            raise ConfigError(f"missing required key(s): {', '.join(missing)} (set them as key=value)")
        OmegaConf.resolve(cfg)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {config_file}") from None
    except ConfigKeyError as exc:
        raise ConfigError(_unknown_key_message(exc)) from None
    except OmegaConfBaseException as exc:
        raise ConfigError(_one_line(exc)) from None
    check(cfg)
    return cfg


def _is_missing(cfg: DictConfig, key: str) -> bool:
    """True for ??? and for ${oc.env:NAME,???} when NAME is not set."""
    try:
        OmegaConf.select(cfg, key, throw_on_missing=True)
    except (MissingMandatoryValue, InterpolationToMissingValueError):
        return True
    return False


def _dotlist(overrides: Sequence[str]) -> DictConfig:
    """key=value overrides; a value that is not valid YAML (a glob like *.txt) stays a string, and
    so does any value of a text key (config_schema.text_keys)."""
    conf = OmegaConf.create()
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected key=value, got '{item}'")
        if key == "inference.labels" and not value.lstrip().startswith(("[", "$")):
            raise ConfigError(f"inference.labels is a list: write 'inference.labels=[{value}]' (quoted for the shell)")
        try:
            conf.merge_with_dotlist([item])
        except yaml.YAMLError:
            OmegaConf.update(conf, key, value, force_add=True)
        if key in TEXT_KEYS and not isinstance(OmegaConf.select(conf, key), (str, type(None))):
            OmegaConf.update(conf, key, value)  # a folder 0123, a column "on": text as written
    return conf


def check(cfg: DictConfig) -> None:
    """Values a run cannot work with fail here, before any work starts."""
    inf = cfg.inference
    if inf.batch_size <= 0:
        raise ConfigError(f"inference.batch_size must be > 0, got {inf.batch_size}")
    if not math.isfinite(inf.threshold):  # any other number: a model may output logits, not probabilities
        raise ConfigError(f"inference.threshold must be a finite number, got {inf.threshold}")
    if len(inf.labels) < 2 or len(set(inf.labels)) != len(inf.labels):
        raise ConfigError(f"inference.labels must be at least two distinct labels, got {list(inf.labels)}")
    if cfg.cluster.start_method not in ("spawn", "forkserver", "fork"):
        raise ConfigError(f"cluster.start_method must be spawn, forkserver or fork, got {cfg.cluster.start_method}")
    if not 0.0 <= inf.error_budget <= 1.0:
        raise ConfigError(f"inference.error_budget must be a fraction within [0, 1], got {inf.error_budget}")
    try:
        codecs.lookup(inf.encoding)
    except LookupError:
        raise ConfigError(f"inference.encoding: unknown encoding '{inf.encoding}'") from None
    if inf.partition_size is not None and inf.partition_size <= 0:
        raise ConfigError(f"inference.partition_size must be > 0 or null, got {inf.partition_size}")
    for key in ("partition_bytes", "max_document_bytes", "max_batch_chars"):
        if inf[key] is not None and inf[key] <= 0:
            raise ConfigError(f"inference.{key} must be > 0, got {inf[key]}")
    for key in ("model_path", "input_data_dir", "input_manifest", "output_path", "reference", "incremental_from",
                "model_cache_dir"):
        if not OmegaConf.is_missing(inf, key) and isinstance(inf[key], str) and redaction.has_password(inf[key]):
            raise ConfigError(f"inference.{key}: {redaction.PASSWORD_REFUSED}")
    if isinstance(cfg.cluster.address, str) and redaction.has_password(cfg.cluster.address):
        raise ConfigError("cluster.address: a scheduler address with a password in it is refused (and not shown): "
                          "dask authenticates with TLS certificates (cluster.tls), not passwords")
    _check_choice("inference.input_format", inf.input_format, INPUT_FORMATS)
    _check_choice("inference.output_format", inf.output_format, OUTPUT_FORMATS)
    named = os.path.splitext(str(inf.output_path or ""))[1].lower().lstrip(".")
    if named in OUTPUT_FORMATS and named != inf.output_format:  # a Parquet file named .jsonl, or JSON lines .parquet
        raise ConfigError(f"inference.output_path {inf.output_path} is named .{named}, but inference.output_format="
                          f"{inf.output_format}: set inference.output_format={named}, or name the file .{inf.output_format}")
    if named in COMPRESSED_NAMES:  # a reader would take the plain file written there for a compressed one
        raise ConfigError(f"inference.output_path {inf.output_path} is named .{named}, but the results are written "
                          f"uncompressed: name the file .{inf.output_format}, and compress it once written")
    if inf.resume and inf.output_format != "jsonl":
        raise ConfigError("inference.resume needs inference.output_format=jsonl (a Parquet file cut short cannot be appended to)")
    if inf.input_format == "files":
        if inf.labels_from not in (None, *PATH_LABELS):
            raise ConfigError(
                f"inference.labels_from must be aclimdb, parent_dir or null for document files, got "
                f"{inf.labels_from} (a column name needs a table inference.input_format)"
            )
    elif inf.labels_from in PATH_LABELS:
        raise ConfigError(f"inference.labels_from for table inputs names a column, got {inf.labels_from}")
    if inf.resume and not inf.output_path:
        latest = _latest_partial()
        raise ConfigError(
            "inference.resume=true needs inference.output_path, the output of the run to continue"
            + (f"; the latest interrupted run here is inference.output_path={latest}" if latest else "")
        )
    for key in ("incremental_rescore", "retry_errors"):
        if inf[key] and not inf.incremental_from:
            raise ConfigError(f"inference.{key}=true needs inference.incremental_from, the previous run's results")
    _check_mlflow(inf.mlflow)
    _check_cluster(cfg.cluster)


def _check_mlflow(wanted: DictConfig) -> None:
    if wanted.log_results and not wanted.log:
        raise ConfigError("inference.mlflow.log_results=true needs inference.mlflow.log=true")
    if wanted.log and importlib.util.find_spec("mlflow") is None:  # found now, not after the run
        raise ConfigError("inference.mlflow.log=true needs MLflow, which is not installed here: "
                          "pip install 'daskinfer[mlflow]'")


def _latest_partial() -> Optional[str]:
    runs = glob.glob(os.path.join("outputs", "*", "*", "*.partial"))
    if not runs:
        return None
    return os.path.abspath(max(runs, key=os.path.getmtime)[: -len(".partial")])


def _check_choice(key: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, choices))}, got {value}")


def _check_cluster(cluster: DictConfig) -> None:
    adapt = cluster.adapt
    if cluster.address and (cluster.manager or adapt.minimum is not None or adapt.maximum is not None):
        raise ConfigError(
            "cluster.manager and cluster.adapt start a cluster of this run's own; "
            f"they cannot be combined with cluster.address={cluster.address}"
        )
    if cluster.address:
        try:  # a port out of range would be tried for dask's whole connect timeout (30 s) before failing
            urllib.parse.urlsplit(cluster.address if "://" in cluster.address else f"tcp://{cluster.address}").port
        except ValueError as exc:
            raise ConfigError(f"cluster.address={cluster.address} is not a scheduler address ({exc})") from None
    for key in ("n_workers", "threads_per_worker", "tf_intra_op_threads", "tf_inter_op_threads"):
        if cluster[key] is not None and cluster[key] <= 0:
            raise ConfigError(f"cluster.{key} must be a number above 0, or null to size it to the machine; "
                              f"got {cluster[key]}")
    if not cluster.address and not cluster.manager:  # a LocalCluster: processes of this machine
        cores, most = os.cpu_count() or 1, 4 * (os.cpu_count() or 1)
        for key in ("n_workers", "adapt.maximum"):
            asked = OmegaConf.select(cluster, key)
            if asked is not None and asked > most:
                # tens of thousands of processes being started would hang the driver for good
                raise ConfigError(f"cluster.{key}={asked} would start as many worker processes on this machine's "
                                  f"{cores} cores; at most {most} here (4 a core): more workers run on other machines "
                                  "(cluster.address) or through cluster.manager")
    if cluster.wait_for_workers_s <= 0:
        raise ConfigError(f"cluster.wait_for_workers_s must be above 0, got {cluster.wait_for_workers_s}")
    if adapt.minimum is not None and adapt.minimum < 0:
        raise ConfigError(f"cluster.adapt.minimum must be >= 0, got {adapt.minimum}")
    if adapt.maximum is not None and adapt.maximum < max(1, adapt.minimum or 0):
        raise ConfigError(
            f"cluster.adapt.maximum must be >= 1 and >= cluster.adapt.minimum, got {adapt.maximum}"
        )


def valid_keys() -> List[str]:
    return [key for key, _, _ in documented_keys()]


def documented_keys() -> List[tuple]:
    """(dotted key, default as written, meaning) for every leaf key, from the YAML file."""
    rows, path = [], []  # path: (indent, name) of the sections above the current line
    for line in defaults_text().splitlines():
        match = re.match(r"^(\s*)([A-Za-z_]+):\s*(.*?)\s*(?:#\s*(.*))?$", line)
        if not match or line.lstrip().startswith("#"):
            continue
        indent, key, value, meaning = len(match.group(1)), *match.groups()[1:]
        path = [(i, name) for i, name in path if i < indent]
        if value:
            rows.append((".".join([name for _, name in path] + [key]), value, meaning or ""))
        else:
            path.append((indent, key))
    return rows


def help_text() -> str:
    rows = documented_keys()
    width = max(len(f"{k}={v}") for k, v, _ in rows)
    lines = [f"  {f'{k}={v}':<{width}}  {m}" for k, v, m in rows]
    return "\n".join(lines)


def _unknown_key_message(exc: ConfigKeyError) -> str:
    key = getattr(exc, "full_key", None) or str(exc).splitlines()[0]
    keys = valid_keys()
    if key.startswith(("+", "~")):
        return (f"unknown key '{key}': daskinfer's overrides are key=value without Hydra's '{key[0]}' "
                "(every key exists already)")
    if key in keys:  # a dotted name as one key: a --config file's `inference.batch_size: 8`
        section, name = key.split(".", 1)
        return f"unknown key '{key}': a --config file nests it, '{section}:' on one line, '{name}: ...' indented below"
    if "." not in key:  # a section misspelt: the sections are the candidates
        keys = sorted({k.split(".", 1)[0] for k in keys})
    near = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if near:
        return f"unknown key '{key}'; did you mean '{near[0]}'? (daskinfer --help lists every key)"
    section = key.split(".", 1)[0]
    same = [k for k in keys if k.startswith(section + ".")]
    return f"unknown key '{key}'; valid keys{f' in {section}' if same else ''}: {', '.join(same or keys)}"


_NOT_A_GROUP = re.compile(r"Merge error: \w+ is not a subclass of (\w+)Config\. value: (.*)")


def _one_line(exc: Exception) -> str:
    """OmegaConf's reason in one line, and in the user's terms where it speaks of its own
    classes (a group of keys given a value, a list given a word)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else type(exc).__name__
    full_key = getattr(exc, "full_key", None)
    group = _NOT_A_GROUP.match(text)
    if group:
        name = group.group(1).lower()
        path = next((key.rsplit(".", 1)[0] for key in valid_keys()
                     if f".{key}".rsplit(".", 1)[0].endswith(f".{name}")), name)
        return f"{path} is a group of keys, not a value ({group.group(2)}): set its keys, as {path}.KEY=VALUE"
    if "is not a ListConfig" in text and full_key:
        return f"{full_key} is a list: write it as [a, b]"
    if full_key and full_key not in text:
        text = f"{full_key}: {text}"
    return text
