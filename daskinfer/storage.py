"""Every way daskinfer touches storage goes through fsspec, through these helpers: a local
folder, s3:// and any other fsspec URL behave the same. Storage failures become Python's
own exceptions with one-line messages, in one place (storage_errors), as s3fs does for
S3's error codes."""

from __future__ import annotations

import contextlib
import os
import posixpath
from typing import Any, Iterable, Iterator, Mapping, Optional, Tuple

import fsspec
from fsspec.spec import AbstractFileSystem

from daskinfer.errors import ConfigError, first_line


def filesystem(url: str, storage_options: Optional[Mapping[str, Any]] = None) -> Tuple[AbstractFileSystem, str]:
    """The fsspec filesystem for url and the path on it (protocol stripped).

    A storage option the filesystem does not take (a typo in storage.options) is a
    configuration error, not a crash.
    """
    try:
        return fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    except TypeError as exc:
        raise ConfigError(f"storage.options do not suit {url}: {first_line(exc)}") from None
    except ValueError as exc:  # an unknown protocol
        raise ConfigError(f"cannot use {url}: {first_line(exc)}") from None


def check_endpoint(uris: Iterable[Optional[str]], storage_options: Mapping[str, Any]) -> None:
    """An S3 endpoint without its scheme (127.0.0.1:9000) is one line, before botocore's
    ValueError deep in a listing. Its value is not shown: it may hold a password."""
    if not any(protocol_of(uri or "") in ("s3", "s3a") for uri in uris):
        return
    given = [("storage.options endpoint_url", storage_options.get("endpoint_url")),
             ("storage.options client_kwargs.endpoint_url", (storage_options.get("client_kwargs") or {}).get("endpoint_url")),
             ("AWS_ENDPOINT_URL_S3", os.environ.get("AWS_ENDPOINT_URL_S3")),
             ("AWS_ENDPOINT_URL", os.environ.get("AWS_ENDPOINT_URL"))]
    for where, value in given:
        if value and not str(value).lower().startswith(("http://", "https://")):
            raise ConfigError(f"{where} is not a URL: write the S3 endpoint with its scheme, as http://HOST:PORT "
                              "or https://HOST")


def is_local(fs: AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def expand_user(uri: str) -> str:
    """A local path with its leading ~ expanded, as fsspec reads it (what the run says it
    wrote, and what a worker elsewhere loads, must be the same file); another URI as it is."""
    return os.path.expanduser(uri) if protocol_of(uri) is None else uri


def protocol_of(uri: str) -> Optional[str]:
    """The URI's protocol, or None for a plain local path."""
    protocol, sep, _ = uri.partition("://")
    return protocol if sep else None


def full_uri(fs: AbstractFileSystem, path: str) -> str:
    """What a record calls a file: an absolute local path, or the full URI elsewhere."""
    if is_local(fs):
        return os.path.abspath(path)
    return fs.unstrip_protocol(path)


def path_on(uri: str) -> str:
    """The path of uri on its filesystem (the protocol stripped), without building one."""
    return fsspec.core.strip_protocol(uri)


def parent(path: str) -> str:
    """The folder (or prefix) a path is in, on any filesystem."""
    return posixpath.dirname(path.rstrip("/"))


@contextlib.contextmanager
def storage_errors(url: str, what: str = "") -> Iterator[None]:
    """Storage failures as Python's own exceptions, with a one-line message naming url.

    s3fs already maps most S3 errors (FileNotFoundError, PermissionError); connection
    failures still arrive as botocore exceptions. `what` says which of the run's places
    it is ("the output ", ...).
    """
    try:
        yield
    except FileNotFoundError:
        raise
    except PermissionError as exc:
        raise PermissionError(f"access denied to {what}{url}: {first_line(exc)}") from None
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        # a storage option the filesystem's client does not take (a typo in storage.options)
        raise ConfigError(f"storage.options do not suit {url}: {first_line(exc)}") from None
    except Exception as exc:
        if is_connection_error(exc):
            raise ConnectionError(f"cannot reach the storage for {what}{url}: {first_line(exc)}") from None
        raise


def is_connection_error(exc: BaseException) -> bool:
    """True for failures that say the storage could not be reached, not that a file is bad:
    they pass when the storage comes back."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    try:  # fsspec's http(s):// filesystem (aiohttp): its connection errors are no ConnectionError
        from aiohttp import ClientConnectionError

        if isinstance(exc, ClientConnectionError):
            return True
    except ImportError:
        pass
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError
    except ImportError:
        return False
    return isinstance(exc, (BotoConnectionError, HTTPClientError))
