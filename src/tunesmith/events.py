"""Structured log events: one JSON object a line on stderr (the server's request and error lines,
alerts, store failures), so a log shipper can parse them without a grammar.

    setup_logging()
    event("alert", rule="drift", state="firing", value=0.75)
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

log = logging.getLogger("tunesmith.serve")


def setup_logging() -> None:
    """One JSON object a line on stderr, for `tunesmith.serve` events."""
    if log.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def event(name: str, **fields: Any) -> None:
    log.info(json.dumps({"time": round(time.time(), 3), "event": name, **fields}, ensure_ascii=False,
                        default=str))
