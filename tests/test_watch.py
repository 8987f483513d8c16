"""`tunesmith train --watch`: the live training report, rendered from hand-made log entries and
served on loopback by a real training run (bounded in time, stopped by the command's end)."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time

import httpx

from tunesmith.artifacts import GuardEvent
from tunesmith.train.watch import clock, eta_seconds, render


def test_the_page_shows_progress_eta_curves_and_guards():
    entries = [{"step": 2, "loss": 2.0, "learning_rate": 1e-3, "tokens_per_second": 1500.0},
               {"step": 4, "loss": 1.5, "tokens_per_second": 1600.0},
               {"step": 4, "eval_loss": 1.8},
               {"step": 6, "loss": 1.0, "tokens_per_second": 1700.0, "peak_memory_gib": 1.25}]
    guard = GuardEvent(guard="gap_alarm", step=4, message="validation loss 0.8 above train")
    eta = eta_seconds(started=100.0, now=112.0, first_step=0, step=6, max_steps=20)
    assert eta == 28.0  # 2 s a step, 14 steps left
    page = render("tickets <v2>", entries, 20, eta, [guard], "training")
    assert "<td>6 of 20</td>" in page and "<td>28s</td>" in page and "<td>1700</td>" in page
    assert "<td>1.0000</td>" in page and "<td>1.8000</td>" in page and "<td>1.25 GiB</td>" in page
    assert "tickets &lt;v2&gt;" in page and "<v2>" not in page  # escaped
    train_line = re.search(r'<polyline class="train"[^>]*points="([^"]+)"', page).group(1).split()
    assert len(train_line) == 3 and train_line[0] == "40.0,10.0"  # highest loss, first step: top left
    assert len(re.search(r'<polyline class="validation"[^>]*points="([^"]+)"', page).group(1).split()) == 1
    assert "step 4: gap_alarm: validation loss 0.8 above train" in page
    assert 'http-equiv="refresh"' in page
    assert 'http-equiv="refresh"' not in render("t", entries, 20, None, [], "finished")
    assert eta_seconds(100.0, 112.0, first_step=6, step=6, max_steps=20) is None  # no pace yet
    assert (clock(3725), clock(125), clock(7)) == ("1h02m05s", "2m05s", "7s")


def test_train_watch_serves_the_live_page_on_loopback_while_training(tmp_path, tiny_model_dir, chat_files):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: {{name: {tiny_model_dir}}}\ndata: {{train: {chat_files['train']}}}\n"
                      f"output: {{dir: {tmp_path / 'runs'}}}\nname: watched\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "tunesmith", "train", str(recipe), "--watch", "--watch-port", "0",
         "train.max_steps=150", "train.batch_size=4", "train.logging_steps=2", "train.save_steps=1000",
         "data.val_fraction=0.25", "train.eval_steps=10", "train.compile=false"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()
    url, seen, deadline = None, [], time.time() + 300
    try:
        while time.time() < deadline and process.poll() is None:
            found = next((re.search(r"live report: (http://127\.0\.0\.1:\d+/)", line) for line in list(lines)
                          if "live report:" in line), None)
            url = url or (found.group(1) if found else None)
            if url:
                try:
                    page = httpx.get(url, timeout=5).text
                except httpx.TransportError:
                    page = ""
                if "<title>watched: training</title>" in page and '<polyline class="train"' in page:
                    seen.append(page)
                    if '<polyline class="validation"' in page:
                        break
            time.sleep(0.3)
        assert process.wait(timeout=300) == 0, "".join(lines)[-2000:]
    finally:
        process.kill()
    assert url and url.startswith("http://127.0.0.1:")
    assert seen, "the live page never showed training with a loss curve"
    page = seen[-1]
    assert re.search(r"<td>\d+ of 150</td>", page) and re.search(r"<th>ETA</th><td>(\d+m)?\d+s</td>", page)
    try:  # the command ended: so did its server
        httpx.get(url, timeout=2)
        raise AssertionError("the live report server outlived the command")
    except httpx.TransportError:
        pass
