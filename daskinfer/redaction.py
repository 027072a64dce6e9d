"""Secrets never echoed: a configuration, a mapping or a key=value override as it may be
written to config.yaml, a log line or a resume command, with secret-looking values as ***."""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

# In a key's name: its value is a secret (an Authorization header, a credentials file's text...)
SECRET_WORDS = ("key", "secret", "token", "password", "passwd", "credential", "auth", "cookie", "signature",
                "private")
URL_PASSWORD = re.compile(r"(\b[a-zA-Z][\w+.-]*://[^/\s:@]*):[^/\s@]+@")  # scheme://user:PASSWORD@host
ENVIRONMENT = re.compile(r"\$\{oc\.env:\w+\}")  # an override naming a variable (no default): ${oc.env:NAME}


def has_password(uri: str) -> bool:
    """Whether uri carries a password (scheme://user:password@host/...). Such a URI would be
    echoed by every log line, error entry, record and ledger naming it, so it is refused."""
    try:
        return "://" in uri and urllib.parse.urlsplit(uri).password is not None
    except ValueError:  # not a URL after all
        return False


PASSWORD_REFUSED = ("a URI with a password in it is refused (and not shown, as it would be written wherever "
                    "the URI is): give credentials as storage.options, the AWS_* variables or a .netrc")


def redacted(value: Any) -> Any:
    """A plain copy of a config (or any mapping) with secret-looking values replaced."""
    if isinstance(value, DictConfig):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        return {
            k: "***" if any(w in str(k).lower() for w in SECRET_WORDS) and v is not None else redacted(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redacted(v) for v in value]
    return URL_PASSWORD.sub(r"\1:***@", value) if isinstance(value, str) else value


def redacted_override(item: str) -> str:
    """A key=value override as it may be echoed (a resume command): secrets as ***."""
    key, sep, value = item.partition("=")
    if not sep or ENVIRONMENT.fullmatch(value):  # where the secret is, not the secret
        return item
    if URL_PASSWORD.search(value):
        return f"{key}={redacted(value)}"
    if any(word in key.rsplit(".", 1)[-1].lower() for word in SECRET_WORDS):
        return f"{key}=***"
    if key in ("storage.options", "storage", "cluster.manager_kwargs", "cluster") or "{" in value:
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return f"{key}=***" if any(w in value.lower() for w in SECRET_WORDS) else item
        if isinstance(parsed, (dict, list)):
            return f"{key}={yaml.safe_dump(redacted(parsed), default_flow_style=True, width=10**6).strip()}"
    return item


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(redacted(cfg)))
