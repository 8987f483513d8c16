"""Headless Debian Chromium for page tests (`make test` installs it): the DOM after the page's
scripts ran, its console errors, and a screenshot. The flags keep Chromium off the network."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def _missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


needs_playwright = pytest.mark.skipif(
    not os.environ.get("CI") and (shutil.which("chromium") is None or _missing("playwright")),
    reason="make test installs Debian chromium and playwright (and CI requires both)")


@contextlib.contextmanager
def page(url: str, profile: Path) -> Iterator[Any]:
    """A Playwright page in Debian's headless Chromium (same flags as above), at `url`: for pages
    driven by keyboard and mouse."""
    from playwright.sync_api import sync_playwright

    flags = [f for f in _flags(profile) if not f.startswith(("--headless", "--user-data-dir", "--virtual"))]
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=shutil.which("chromium"), headless=True, args=flags)
        try:
            tab = browser.new_page()
            tab.goto(url)
            yield tab
        finally:
            browser.close()
