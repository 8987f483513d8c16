"""The run report as a live page while training runs, for users who run no experiment tracker.

Every logging step and evaluation the first process rewrites one self-contained HTML page
beside the checkpoints (`.work/checkpoints/live.html`: it goes with them when the run commits,
and stays when training fails, showing where): the train and validation loss curves, tokens/s,
peak memory, the learning rate, the overfitting guards that fired and the ETA. The page reloads
itself every few seconds. `tunesmith train --watch` (or `run --watch`) serves it on loopback
(`serve_live`) for as long as the command runs.

    LivePage       the Trainer callback that writes the page
    render(...)    the page, from the log entries (pure: tested on hand-made entries)
    serve_live     a loopback HTTP server for the page, on a thread
"""

from __future__ import annotations

import functools
import html
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from tunesmith.files import write_text
from tunesmith.models.device import peak_memory

PAGE = "live.html"
REFRESH_SECONDS = 3


def clock(seconds: float) -> str:
    """3725 -> '1h02m05s', 125 -> '2m05s', 7 -> '7s'."""
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def eta_seconds(started: float, now: float, first_step: int, step: int, max_steps: int) -> float | None:
    """Time left at the pace of the steps done since `started` (None before the first one)."""
    done = step - first_step
    if done <= 0 or max_steps <= 0:
        return None
    return (now - started) / done * max(max_steps - step, 0)


def _chart(series: dict[str, list[tuple[int, float]]], width: int = 640, height: int = 240) -> str:
    """An inline SVG line chart of `series` (name -> [(step, value)]), shared axes."""
    points = [p for values in series.values() for p in values]
    if not points:
        return "<p>No losses logged yet.</p>"
    x_low, x_high = min(p[0] for p in points), max(p[0] for p in points)
    y_low, y_high = min(p[1] for p in points), max(p[1] for p in points)
    x_span, y_span = (x_high - x_low) or 1, (y_high - y_low) or 1.0

    def xy(step: int, value: float) -> str:
        x = 40 + (step - x_low) / x_span * (width - 60)
        return f"{x:.1f},{10 + (y_high - value) / y_span * (height - 40):.1f}"

    colours = {"train loss": "#1f77b4", "validation loss": "#d62728"}
    lines = [f'<polyline class="{name.split()[0]}" fill="none" stroke="{colours.get(name, "#555")}" '
             f'stroke-width="2" points="{" ".join(xy(s, v) for s, v in values)}"/>'
             for name, values in series.items() if values]
    labels = (f'<text x="2" y="16">{y_high:.3g}</text><text x="2" y="{height - 28}">{y_low:.3g}</text>'
              f'<text x="40" y="{height - 8}">step {x_low}</text>'
              f'<text x="{width - 90}" y="{height - 8}">step {x_high}</text>')
    legend = " ".join(f'<span style="color:{colours.get(n, "#555")}">&#9632; {n}</span>' for n in series)
    return (f'<svg width="{width}" height="{height}" role="img" aria-label="loss curves">{labels}'
            f'{"".join(lines)}</svg><div>{legend}</div>')


def render(name: str, entries: list[dict[str, Any]], max_steps: int, eta: float | None,
           guards: list[Any], status: str) -> str:
    """The live page: status, progress and ETA, the loss curves, throughput, memory and guards."""
    train = [(e["step"], e["loss"]) for e in entries if "loss" in e]
    val = [(e["step"], e["eval_loss"]) for e in entries if "eval_loss" in e]
    last = entries[-1] if entries else {}
    step = last.get("step", 0)
    facts = [("status", status), ("step", f"{step} of {max_steps}"),
             ("ETA", clock(eta) if eta is not None else "-"),
             ("train loss", f"{train[-1][1]:.4f}" if train else "-"),
             ("validation loss", f"{val[-1][1]:.4f}" if val else "-"),
             ("tokens/s", f"{last['tokens_per_second']:.0f}" if "tokens_per_second" in last else "-"),
             ("learning rate", f"{last['learning_rate']:.3g}" if "learning_rate" in last else "-"),
             ("peak memory", f"{last['peak_memory_gib']:.2f} GiB" if "peak_memory_gib" in last else "-")]
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in facts)
    fired = "".join(f"<li>step {g.step}: {html.escape(g.guard)}: {html.escape(g.message)}</li>"
                    for g in guards)
    refresh = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if status == "training" else ""
    return (f"<!doctype html><html><head><meta charset='utf-8'>{refresh}<title>{html.escape(name)}: "
            f"{html.escape(status)}</title><style>body{{font-family:sans-serif;margin:2em}}th{{text-align:left;"
            f"padding-right:1em}}</style></head><body><h1>{html.escape(name)}</h1><table>{rows}</table>"
            f"<h2>Loss</h2>{_chart({'train loss': train, 'validation loss': val})}"
            f"<h2>Guards</h2>{f'<ul>{fired}</ul>' if fired else '<p>None fired.</p>'}</body></html>")


class LivePage(TrainerCallback):
    """Rewrites the live page at every log and at the end (first process only)."""

    def __init__(self, path: Path, name: str, guards: Any, progress: Any, device: str) -> None:
        self.path, self.name, self.guards, self.device = path, name, guards, device
        self.progress = progress  # callbacks.ProgressLog: its tokens/s
        self.entries: list[dict[str, Any]] = []
        self.started, self.first_step = time.time(), 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started, self.first_step = time.time(), state.global_step
        self._write(state, "training")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero:
            return
        entry = {"step": state.global_step, **{k: v for k, v in (logs or {}).items()
                                                 if isinstance(v, int | float)}}
        entry["tokens_per_second"] = self.progress.tokens_per_second(state)
        memory = peak_memory(self.device)
        if memory is not None:
            entry["peak_memory_gib"] = memory / 2**30
        self.entries.append(entry)
        self._write(state, "training")

    def on_train_end(self, args, state, control, **kwargs):
        self._write(state, "finished")

    def _write(self, state: Any, status: str) -> None:
        if not state.is_world_process_zero:
            return
        eta = eta_seconds(self.started, time.time(), self.first_step, state.global_step, state.max_steps)
        page = render(self.name, self.entries, state.max_steps, eta, self.guards.events, status)
        write_text(self.path, page)


class _PageHandler(BaseHTTPRequestHandler):
    """GET / answers the live page (a waiting page until training writes it)."""

    def __init__(self, *args: Any, page: Path, **kwargs: Any) -> None:
        self.page = page
        super().__init__(*args, **kwargs)

    def log_message(self, *args: Any) -> None:  # no access log on the training terminal
        pass

    def do_GET(self) -> None:
        if self.path not in ("/", f"/{PAGE}"):
            self.send_error(404)
            return
        waiting = b"<!doctype html><meta http-equiv='refresh' content='2'><p>Preparing data and model</p>"
        body = self.page.read_bytes() if self.page.is_file() else waiting
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve_live(page: Path, port: int) -> tuple[ThreadingHTTPServer, str]:
    """Serve `page` at http://127.0.0.1:PORT/ on a daemon thread (port 0: any free one)."""
    server = ThreadingHTTPServer(("127.0.0.1", port), functools.partial(_PageHandler, page=page))
    threading.Thread(target=server.serve_forever, daemon=True, name="tunesmith-watch").start()
    return server, f"http://127.0.0.1:{server.server_port}/"
