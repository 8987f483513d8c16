"""Headless Debian Chromium for page tests (`make test` installs it): the DOM after the page's
scripts ran, its console errors, and a screenshot. The flags keep Chromium off the network."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

needs_chromium = pytest.mark.skipif(shutil.which("chromium") is None and not os.environ.get("CI"),
                                    reason="make test installs Debian chromium (and CI requires it)")


@dataclass
class Rendered:
    dom: str
    console_errors: list[str]


def _flags(profile: Path) -> list[str]:
    return ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000"]


def render(url: str, profile: Path) -> Rendered:
    """The page's DOM once its scripts (and the fetches they wait on) have run."""
    done = subprocess.run(["chromium", *_flags(profile), "--dump-dom", url], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines()
              if "CONSOLE" in line and ("Uncaught" in line or "ERROR" in line)]
    return Rendered(done.stdout, errors)


def screenshot(url: str, profile: Path, out: Path, size: str = "1100,2000") -> Path:
    subprocess.run(["chromium", *_flags(profile), f"--screenshot={out}", f"--window-size={size}", url],
                   capture_output=True, timeout=120)
    return out
