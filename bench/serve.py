"""Serving throughput: one `generate` per request (naive) vs `tunesmith serve` under concurrent
clients, on the demo's fine-tuned model, in one process run. Loopback only; every loop is
bounded in count and time.

    make demo                                   # makes runs/demo (the fine-tuned SmolLM2)
    .venv/bin/python bench/serve.py [--run runs/demo] [--requests 64] [--clients 16] [--tokens 32]

(a) naive: the run's model, one HF `generate` per request, one after another (greedy, fp32);
(b) `tunesmith serve` (its own process; dynamic batching) with `--clients` concurrent clients, in fp32 (the
    default on a CPU: it answers as evaluation scored) and in bf16 (`serve.precision: bf16`);
then the latency of a cache hit. Prints req/s, p50/p95/p99 latency and the ratio to naive, and
how many of the run's test and eval-set answers bf16 serving gives exactly as fp32 does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

DEADLINE_SECONDS = 900


def prompts(run: Path, count: int) -> list[list[dict]]:
    from tunesmith.recipe import load_recipe

    recipe = load_recipe(run / "recipe.yaml")
    rows = [json.loads(line) for line in Path(recipe.data.test).read_text().splitlines() if line.strip()]
    messages = [[m for m in r["messages"] if m["role"] != "assistant"] for r in rows]
    return [messages[i % len(messages)] for i in range(count)]


def naive(run: Path, chats: list[list[dict]], tokens: int) -> list[float]:
    """Latency of each request served alone, one after another."""
    import torch

    from tunesmith.models.chat import render_prompt, with_system
    from tunesmith.models.loading import load_run_model
    from tunesmith.recipe import load_recipe

    recipe = load_recipe(run / "recipe.yaml")
    loaded = load_run_model(recipe.model, recipe.train.method, run / "model")
    latencies, started = [], time.monotonic()
    for chat in chats:
        begin = time.monotonic()
        text = render_prompt(loaded.tokenizer, with_system(chat, recipe.data.system_prompt))
        ids = loaded.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            loaded.model.generate(**ids, max_new_tokens=tokens, do_sample=False,
                                  pad_token_id=loaded.tokenizer.pad_token_id)
        latencies.append(time.monotonic() - begin)
        if time.monotonic() - started > DEADLINE_SECONDS / 4:
            break
    return latencies


async def clients(url: str, chats: list[list[dict]], tokens: int, concurrency: int,
                  seed: int = 0) -> list[float]:
    gate, latencies = asyncio.Semaphore(concurrency), []
    async with httpx.AsyncClient(timeout=120) as client:
        async def one(i: int, chat: list[dict]) -> None:
            async with gate:
                begin = time.monotonic()
                # greedy; a distinct seed per request keeps repeated prompts out of the cache
                body = {"messages": chat, "max_tokens": tokens, "temperature": 0, "seed": seed + i}
                response = await client.post(f"{url}/v1/chat/completions", json=body)
                response.raise_for_status()
                latencies.append(time.monotonic() - begin)
        work = asyncio.gather(*(one(i, c) for i, c in enumerate(chats)))
        await asyncio.wait_for(work, DEADLINE_SECONDS / 4)
    return latencies


@contextlib.contextmanager
def server(run: Path, overrides: list[str]) -> Iterator[tuple[str, subprocess.Popen]]:
    """`tunesmith serve` in its own process on a free loopback port (clients stay out of its GIL)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "tunesmith", "serve", str(run), "--port", str(port),
                                *overrides], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("tunesmith serve did not start")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.5)
        yield url, process
    finally:
        process.terminate()
        process.wait(timeout=60)


def served(run: Path, chats: list[list[dict]], tokens: int, concurrency: int, precision: str) -> tuple:
    overrides = [f"serve.precision={precision}", f"serve.max_batch_size={concurrency}"]
    with server(run, overrides) as (url, _):
        asyncio.run(clients(url, chats[:concurrency], tokens, concurrency, seed=10_000))  # warm-up batch
        batches_before = httpx.get(f"{url}/health").json()["batches"]
        started = time.monotonic()
        latencies = asyncio.run(clients(url, chats, tokens, concurrency))
        wall = time.monotonic() - started
        batches = httpx.get(f"{url}/health").json()["batches"] - batches_before
        body = {"messages": chats[0], "max_tokens": tokens, "temperature": 0}
        hits = []
        with httpx.Client(timeout=30) as client:
            client.post(f"{url}/v1/chat/completions", json=body).raise_for_status()  # fills the cache
            for _ in range(50):
                begin = time.monotonic()
                client.post(f"{url}/v1/chat/completions", json=body).raise_for_status()
                hits.append(time.monotonic() - begin)
    return latencies, wall, statistics.median(hits), len(latencies) / batches


def agreement(run: Path, tokens: int = 64) -> dict[str, tuple[int, int]]:
    """Per set (test and each eval set): answers bf16 serving gives exactly as fp32 does, of all."""
    from tunesmith.models.chat import prompt_and_reference
    from tunesmith.models.generation import GenRequest
    from tunesmith.serve.state import load_served

    answers: dict[str, dict[str, list[str]]] = {}
    for precision in ("fp32", "bf16"):
        served = load_served(str(run), [f"serve.precision={precision}"], with_fallback=False)
        recipe, engine = served.recipe, served.engine
        for name, path in {"test": recipe.data.test, **recipe.data.eval_sets}.items():
            rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
            prompts = [engine.render(prompt_and_reference(r, recipe.data.system_prompt)[0]) for r in rows]
            texts = []
            for start in range(0, len(prompts), 16):
                batch = [GenRequest(p, tokens, temperature=0) for p in prompts[start:start + 16]]
                texts += [r.text for r in engine.generate(batch)]
            answers.setdefault(name, {})[precision] = texts
    return {name: (sum(a == b for a, b in zip(both["fp32"], both["bf16"], strict=True)), len(both["fp32"]))
            for name, both in answers.items()}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser()
    parser.add_argument("--run", default="runs/demo")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--naive-requests", type=int, default=16)
    args = parser.parse_args()
    run = Path(args.run)
    if not (run / "model").is_dir():
        sys.exit(f"{run}: no fine-tuned model. Run `make demo` first (it writes runs/demo).")
    chats = prompts(run, args.requests)
    base = naive(run, chats[: args.naive_requests], args.tokens)
    naive_rate = len(base) / sum(base)
    table = Table(title=f"serving {run} ({args.tokens} new tokens, greedy; "
                        f"{args.clients} concurrent clients)")
    columns = ("engine", "requests", "batch", "req/s", "p50 s", "p95 s", "p99 s", "vs naive", "cache hit ms")
    for column in columns:
        table.add_column(column, justify="left" if column == "engine" else "right")
    table.add_row("naive (one generate per request, fp32)", str(len(base)), "1", f"{naive_rate:.2f}",
                  f"{percentile(base, 50):.2f}", f"{percentile(base, 95):.2f}", f"{percentile(base, 99):.2f}",
                  "1.00x", "")
    for precision in ("fp32", "bf16"):
        latencies, wall, hit, batch = served(run, chats, args.tokens, args.clients, precision)
        rate = len(latencies) / wall
        table.add_row(f"tunesmith serve ({precision})", str(len(latencies)), f"{batch:.1f}", f"{rate:.2f}",
                      f"{percentile(latencies, 50):.2f}", f"{percentile(latencies, 95):.2f}",
                      f"{percentile(latencies, 99):.2f}", f"{rate / naive_rate:.2f}x", f"{1000 * hit:.1f}")
    Console(width=140).print(table)
    same = agreement(run)
    print("bf16 answers identical to fp32 (greedy, 64 new tokens): "
          + ", ".join(f"{name} {n} of {total}" for name, (n, total) in same.items()))


if __name__ == "__main__":
    main()
