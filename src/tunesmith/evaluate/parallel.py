"""`tunesmith eval RECIPE --processes N` (and `run --processes N`): evaluation's generation in N
worker processes on this machine, each with its own copy of the run's model on its own device
(every visible GPU, round robin; or the CPU), the prompts of every call shared out among them.

Each worker loads the run's model once and answers greedy generation requests (the fine-tuned
model, or its base) with the same batched engine as one process; the shares are made from the
prompts sorted by length, so every worker gets short and long ones alike. The losses, metrics and
statistics stay in the launching process. Decoders only (seq2seq and encoders evaluate in one).

    python -m tunesmith.evaluate.parallel PAYLOAD.json    (what each worker runs: JSON lines in/out)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import TunesmithError
from tunesmith.models.device import pinned, visible_devices
from tunesmith.recipe import Recipe


@dataclass
class GenerationPool:
    """N worker processes holding the run's model; `generator(base)` is an evaluate Generator."""
    recipe: Recipe
    model_dir: Path
    processes: int
    workers: list[Any] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)

    def start(self) -> GenerationPool:
        from tunesmith.interrupts import die_with_parent

        places = visible_devices()
        self._tmp = tempfile.TemporaryDirectory(prefix="tunesmith-eval-")
        payload = Path(self._tmp.name) / "payload.json"
        payload.write_text(json.dumps({"recipe": self.recipe.model_dump(mode="json"),
                                       "model_dir": str(self.model_dir)}))
        for index in range(self.processes):
            device = places[index % len(places)]
            self.devices.append(device)
            self.workers.append(subprocess.Popen(
                [sys.executable, "-m", "tunesmith.evaluate.parallel", str(payload)],
                env={**os.environ, **pinned(device)}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True, bufsize=1, preexec_fn=die_with_parent))
        return self

    def generator(self, base: bool) -> ParallelGenerator:
        return ParallelGenerator(self, base)

    def ask(self, shares: list[list[list[dict]]], base: bool, label: str) -> list[list[str]]:
        """Each worker answers its share; all at once."""
        def one(index: int) -> list[str]:
            worker = self.workers[index]
            worker.stdin.write(json.dumps({"prompts": shares[index], "base": base, "label": label}) + "\n")
            worker.stdin.flush()
            line = worker.stdout.readline()
            if not line:
                tail = worker.stderr.read().strip().splitlines()[-5:]
                raise TunesmithError(f"evaluation worker on {self.devices[index]} exited with "
                                     f"{worker.wait()}: " + " | ".join(tail))
            return json.loads(line)["answers"]

        with ThreadPoolExecutor(len(self.workers)) as pool:
            return list(pool.map(one, range(len(self.workers))))

    def close(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.stdin.close()
                try:
                    worker.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    worker.kill()
        if hasattr(self, "_tmp"):
            self._tmp.cleanup()


@dataclass
class ParallelGenerator:
    pool: GenerationPool
    base: bool
    examples_per_second: float = 0.0

    def generate(self, prompts: list[list[dict]], label: str) -> list[str]:
        """The prompts sorted by length and dealt round robin, so each worker gets its share of the
        long ones; the answers put back in order."""
        started = time.time()
        order = sorted(range(len(prompts)), key=lambda i: len(json.dumps(prompts[i])))
        count = len(self.pool.workers)
        dealt = [order[k::count] for k in range(count)]
        answered = self.pool.ask([[prompts[i] for i in share] for share in dealt], self.base, label)
        answers = [""] * len(prompts)
        for share, texts in zip(dealt, answered, strict=True):
            for i, text in zip(share, texts, strict=True):
                answers[i] = text
        self.examples_per_second = len(prompts) / max(time.time() - started, 1e-9)
        return answers


def worker(payload_path: str) -> None:
    """Load the run's model once, then answer one JSON line per request until stdin closes."""
    import contextlib

    from transformers.utils import logging as hf_logging

    from tunesmith.evaluate.generation import HFGenerator
    from tunesmith.models.device import generation_bf16, resolve_device
    from tunesmith.models.families import family_for
    from tunesmith.models.loading import load_run_model

    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr  # whatever a library prints must not mix with the replies
    hf_logging.set_verbosity_error()
    payload = json.loads(Path(payload_path).read_text())
    recipe = Recipe.model_validate(payload["recipe"])
    run_model = load_run_model(recipe.model, recipe.train.weights, Path(payload["model_dir"]))
    bf16 = generation_bf16(recipe, resolve_device(recipe.model))
    cfg = recipe.eval
    for line in sys.stdin:
        request = json.loads(line)
        context = run_model.as_base() if request["base"] else contextlib.nullcontext(run_model.model)
        with context as model:
            generator = HFGenerator(model, run_model.tokenizer, cfg.max_new_tokens, cfg.batch_size, bf16,
                                    family_for(recipe.model))
            answers = generator.generate(request["prompts"], request["label"]) if request["prompts"] else []
        replies.write(json.dumps({"answers": answers}) + "\n")


if __name__ == "__main__":
    from tunesmith.interrupts import die_with_parent

    die_with_parent()
    worker(sys.argv[1])
