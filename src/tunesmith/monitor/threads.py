"""Threads of the monitor that must not slow serving down (the store's writer, the window judge)."""

from __future__ import annotations

import threading


def background_priority() -> None:
    """Judge windows on spare CPU: the lowest scheduling priority for this thread (Linux; elsewhere
    unchanged) and one torch thread (per thread with OpenMP). Measured on the 2-core demo server
    (bench/serve.py, bf16): a window's MiniLM encoding and MMD (0.37 s for 50 prompts) competing at
    equal priority with two threads held serving at 11.1 req/s (p99 2.0 s); niced, 12.6 (p99 1.3 s)."""
    import contextlib
    import os

    with contextlib.suppress(AttributeError, OSError, PermissionError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    with contextlib.suppress(ImportError):
        import torch

        torch.set_num_threads(1)
