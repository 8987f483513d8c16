"""Ctrl-C (SIGINT) and SIGTERM end a command the same way, and are never lost.

Python raises KeyboardInterrupt wherever the main thread happens to be when the signal lands. If
that is inside a weakref callback or a finalizer (garbage collection runs them at any moment:
loading a model frees thousands of tensors), Python prints "Exception ignored" and the interrupt
is gone: a tiny run kept training for minutes after `kill -INT`. So the handler also records the
signal, and long work calls `check()` at safe points (the Trainer callback below, between steps),
which raises it again.

    install()      in the CLI's main: SIGINT and SIGTERM raise KeyboardInterrupt and are recorded
    check()        raise KeyboardInterrupt if a signal came and its first one was lost
    die_with_parent()  a child process (workers, vLLM) killed when tunesmith is
"""

from __future__ import annotations

import signal
import sys

received: list[int] = []
"""Signals this command has received (SIGINT, SIGTERM)."""


def _handler(number: int, _frame: object) -> None:
    received.append(number)
    raise KeyboardInterrupt


def install() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt (recorded), unless something chose otherwise
    before (a shell's background job starts with SIGINT ignored; a parent may set its own)."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _handler)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _handler)
    if getattr(sys.unraisablehook, "__name__", "") != "_quiet_lost_interrupt":
        previous = sys.unraisablehook

        def _quiet_lost_interrupt(unraisable: object) -> None:
            """The interrupt Python could not raise where it landed: not a traceback for the user
            (check() raises it at the next safe point)."""
            if isinstance(getattr(unraisable, "exc_value", None), KeyboardInterrupt) and received:
                return
            previous(unraisable)

        sys.unraisablehook = _quiet_lost_interrupt


def check() -> None:
    """Raise the interrupt again if one came (it may have been swallowed where it landed)."""
    if received:
        raise KeyboardInterrupt


def die_with_parent() -> None:
    """Linux: this process is killed when its parent dies. torchrun starts the workers in sessions
    of their own, so a `kill -9` of tunesmith would leave them training (and writing checkpoints
    into a run that is being resumed); with this, the launcher and the workers go with it."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
