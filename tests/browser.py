"""A real headless browser for the pages daskinfer makes: Debian's chromium, as .ci/run
installs it. Started with no network but 127.0.0.1 (an unreachable proxy), so a page that
needed anything from outside would show it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=127.0.0.1;localhost", "--virtual-time-budget=8000"]


def chromium(url: str, *args: str, profile: Path, timeout: float = 90) -> str:
    """What chromium prints for url with args (--dump-dom, --screenshot=...)."""
    program = shutil.which("chromium") or shutil.which("chromium-browser")
    if program is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does)")
    done = subprocess.run([program, *FLAGS, f"--user-data-dir={profile}", *args, url],
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def coloured_share(png: Path) -> float:
    """The share of a screenshot's pixels that are neither white nor grey: drawn plots."""
    from PIL import Image

    image = Image.open(png).convert("RGB")
    pixels = list(image.getdata())
    coloured = sum(1 for r, g, b in pixels if max(r, g, b) - min(r, g, b) > 40)
    return coloured / len(pixels)
