"""A --config file: a YAML mapping merged over the defaults, or a one-line reason it is not one."""

from __future__ import annotations

import contextlib
import os
from typing import Any, Dict, Iterator

import yaml
from omegaconf import DictConfig, OmegaConf

from daskinfer.config_schema import COLUMN_KEYS
from daskinfer.errors import ConfigError


def read(path: str) -> DictConfig:
    """A --config file: a YAML mapping, or a one-line reason it is not one."""
    if os.path.isdir(path):
        raise ConfigError(f"--config {path} is a folder, not a YAML file")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise ConfigError(f"--config {path} is not a text file (not valid UTF-8)") from None
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ConfigError(f"--config {path}: {exc.strerror}") from None
    with _yaml_errors(path):
        loaded = yaml.safe_load(text)
    if loaded is None:
        return OmegaConf.create()
    if not isinstance(loaded, dict):
        raise ConfigError(f"--config {path} must hold a mapping of keys (inference: ..., cluster: ...), "
                          f"not a {type(loaded).__name__}")
    with _yaml_errors(path):  # OmegaConf's loader also refuses a key given twice
        conf = OmegaConf.create(text)
    for key, written in _columns_read_as_booleans(text).items():
        OmegaConf.update(conf, key, written)
    return conf


@contextlib.contextmanager
def _yaml_errors(path: str) -> Iterator[None]:
    try:
        yield
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"--config {path} is not valid YAML{line}: {getattr(exc, 'problem', None) or exc}") from None


def _columns_read_as_booleans(text: str) -> Dict[str, str]:
    """Column keys whose value YAML reads as a boolean (a column named on, no or yes), with
    the word as written: the node keeps it where safe_load gives only True or False."""
    found: Dict[str, str] = {}
    root = yaml.compose(text)
    for section, key in (name.split(".") for name in COLUMN_KEYS):
        node = _child(_child(root, section), key)
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:bool":
            found[f"{section}.{key}"] = node.value
    return found


def _child(node: Any, key: str) -> Any:
    if not isinstance(node, yaml.MappingNode):
        return None
    return next((value for name, value in node.value if isinstance(name, yaml.ScalarNode) and name.value == key), None)
