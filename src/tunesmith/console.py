"""Terminal output for people: one Rich console on stdout, one on stderr, never parsing markup.

User text (paths, hints, data) may contain square brackets (`tickets[bold].jsonl`,
`pip install 'tunesmith[distributed]'`); Rich would read them as markup and eat them, so both
consoles have markup off and styles are passed explicitly.
"""

from __future__ import annotations

import os
import sys
import time

from rich.console import Console
from rich.text import Text

LOG_WIDTH = 120
"""Width of tables written to a file or pipe (Rich assumes 80, which wraps the results table
with its confidence intervals into three lines a row); $COLUMNS overrides it."""


def _width(stream) -> int | None:
    return None if stream.isatty() or os.environ.get("COLUMNS") else LOG_WIDTH


out = Console(markup=False, highlight=False, soft_wrap=True, width=_width(sys.stdout))
err = Console(stderr=True, markup=False, highlight=False, soft_wrap=True, width=_width(sys.stderr))


def note(message: str) -> None:
    """An informational line on stderr (stdout stays for results)."""
    err.print(message)


def warn(message: str) -> None:
    err.print(Text("warning: ", style="yellow") + Text(message))


def problem(label: str, message: str, style: str = "bold red") -> None:
    """`error: ...` as exactly one line: newlines inside the message are folded."""
    one_line = "; ".join(part.strip() for part in message.splitlines() if part.strip())
    err.print(Text(f"{label}: ", style=style) + Text(one_line))


class PlainProgress:
    """Progress for logs that are not a terminal (CI, `| tee`): a line at most every
    `every` seconds, and one at the end, instead of a live bar nobody sees."""

    def __init__(self, label: str, total: int, every: float = 10.0) -> None:
        self.label, self.total, self.every = label, total, every
        self.done, self.started, self.last = 0, time.time(), time.time()

    def advance(self, count: int) -> None:
        self.done += count
        now = time.time()
        if self.done >= self.total or now - self.last >= self.every:
            self.last = now
            err.print(f"{self.label}: {self.done}/{self.total} ({now - self.started:.0f} s)")
