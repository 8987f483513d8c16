"""The canary: every `monitor.canary_every_seconds`, the run's held-out test examples (the first
`monitor.canary_size`) are replayed through the live model, greedy, as evaluation asked them,
and scored with the recipe's metric. The canary-drop alert fires when the score falls below the
lower end of the fine-tuned model's 95% CI on the test set in `eval/summary.json`: the served
model no longer answers as it was evaluated (a changed engine, precision or model file).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from tunesmith.artifacts import EvalSummary, load_optional
from tunesmith.errors import ModelError
from tunesmith.evaluate.metrics import score
from tunesmith.events import event
from tunesmith.files import read_jsonl
from tunesmith.models.chat import prompt_and_reference
from tunesmith.models.generation import GenRequest
from tunesmith.rundir import RunDir
from tunesmith.serve.state import Served


@dataclass
class Canary:
    prompts: list[list[dict]]
    references: list[str]
    floor: float
    """The evaluation's CI lower bound of the fine-tuned model on the test set."""


def prepare(served: Served) -> Canary | None:
    """The canary of a served run, or None (no run directory, no test set or no evaluation)."""
    cfg = served.recipe
    if served.run_dir is None or served.monitor is None or cfg.monitor.canary_every_seconds <= 0:
        return None
    run = RunDir(served.run_dir)
    summary = load_optional(EvalSummary, run.eval_summary)
    test = summary.sets.get("test") if summary else None
    if test is None or test.finetuned.ci is None or not run.split("test").is_file():
        return None
    rows = read_jsonl(run.split("test"))[: cfg.monitor.canary_size]
    try:
        pairs = [prompt_and_reference(r, cfg.data.system_prompt) for r in rows]
    except ModelError:  # plain-text records: nothing to score answers against
        return None
    return Canary([p for p, _ in pairs], [ref for _, ref in pairs], test.finetuned.ci[0])


async def replay(served: Served, canary: Canary) -> float:
    """The live model's mean score on the canary examples."""
    max_tokens = served.recipe.eval.max_new_tokens
    rows = [GenRequest(served.engine.render(p), max_tokens, temperature=0) for p in canary.prompts]
    results = await asyncio.gather(*(served.batcher.submit(r) for r in rows))
    cfg = served.recipe.eval
    scores = [score(cfg.metric, r.text.strip(), ref, cfg.json_fields) for r, ref in
              zip(results, canary.references, strict=True)]
    kept = [s for s in scores if s is not None]
    return sum(kept) / len(kept) if kept else 0.0


async def run_forever(served: Served) -> None:
    """Replay on schedule until cancelled; each result goes to the monitor's canary-drop rule."""
    canary = prepare(served)
    if canary is None:
        return
    while True:
        await asyncio.sleep(served.recipe.monitor.canary_every_seconds)
        try:
            value = await replay(served, canary)
        except Exception as error:  # a failing canary is reported, never fatal
            event("canary_error", error=f"{type(error).__name__}: {error}")
            continue
        event("canary", score=value, floor=canary.floor)
        served.monitor.canary(canary.floor - value)
