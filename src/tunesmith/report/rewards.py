"""A GRPO run's rewards, from train/log.jsonl, for the card and the report: each reward's mean over
the first and the last quarter of the steps, the spread within groups (what the advantages are
made of; 0 means the group's answers all scored alike and taught nothing), the KL to the
reference, the answers' length and the rollouts' speed."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from tunesmith.artifacts import LogEntry, load_rows
from tunesmith.formatting import number
from tunesmith.rundir import RunDir


@dataclass
class RewardLog:
    steps: list[int]
    series: dict[str, list[float]]
    """Per logged step: `reward` (the weighted sum), `rewards/<name>/mean`, `reward_group_std`,
    `frac_reward_zero_std`, `kl`, `completions/mean_length`, `rollout/tokens_per_second`."""
    weights: dict[str, float]

    def quarter(self, key: str, last: bool) -> float | None:
        values = self.series.get(key) or []
        if not values:
            return None
        size = max(1, len(values) // 4)
        return statistics.fmean(values[-size:] if last else values[:size])

    def mean(self, key: str) -> float | None:
        values = self.series.get(key) or []
        return statistics.fmean(values) if values else None


def reward_log(run_dir: RunDir, recipe: Any) -> RewardLog | None:
    """None unless the run trained with GRPO and logged its rewards."""
    if recipe.train.method != "grpo" or not run_dir.train_log.is_file():
        return None
    logged = (entry.model_dump(exclude_none=True) for entry in load_rows(LogEntry, run_dir.train_log))
    entries = [e for e in logged if "reward" in e]
    if not entries:
        return None
    kept = ("frac_reward_zero_std", "kl", "completions/mean_length", "rollout/tokens_per_second")
    keys = sorted({k for e in entries for k in e if k == "reward" or k in kept
                   or k.startswith(("rewards/", "reward_"))})
    weights = {spec.fn.replace(":", "."): spec.weight for spec in recipe.train.rl.rewards} or {
        k.split("/")[1]: 1.0 for k in keys if k.startswith("rewards/") and k.endswith("/mean")}  # derived
    series = {k: [e[k] for e in entries if k in e] for k in keys}
    return RewardLog([e["step"] for e in entries], series, weights)


def reward_rows(log: RewardLog) -> list[list[str]]:
    """reward, weight, first quarter's mean, last quarter's mean: one row per reward and the sum."""
    rows = [[name, number(weight, 2), number(log.quarter(f"rewards/{name}/mean", False), 3),
             number(log.quarter(f"rewards/{name}/mean", True), 3)] for name, weight in log.weights.items()]
    rows.append(["weighted sum", "", number(log.quarter("reward", False), 3),
                 number(log.quarter("reward", True), 3)])
    return rows


def reward_text(log: RewardLog, recipe: Any) -> str:
    rl = recipe.train.rl
    parts = [f"{len(log.steps)} logged steps, {rl.num_generations} answers per prompt at temperature "
             f"{rl.temperature}, KL coefficient {rl.kl}",
             f"spread within groups {number(log.mean('reward_group_std'), 3)} (groups that all scored alike: "
             f"{100 * (log.mean('frac_reward_zero_std') or 0):.0f}%)",
             f"answers {number(log.mean('completions/mean_length'), 1)} tokens on average"]
    if log.mean("kl") is not None:
        parts.append(f"KL to the reference {number(log.quarter('kl', True), 4)} at the end")
    if log.mean("rollout/tokens_per_second") is not None:
        parts.append(f"rollouts {number(log.mean('rollout/tokens_per_second'), 0)} tokens/s "
                     f"(train.rl.rollouts: {rl.rollouts})")
    return "; ".join(parts) + "."


def reward_figure(log: RewardLog) -> str:
    from tunesmith.render import figure_png

    def draw(axis: Any) -> None:
        axis.plot(log.steps[:len(log.series["reward"])], log.series["reward"], label="weighted sum")
        for name in log.weights:
            values = log.series.get(f"rewards/{name}/mean")
            if values:
                axis.plot(log.steps[:len(values)], values, label=name)
        axis.set_xlabel("step")
        axis.set_ylabel("mean reward")
        axis.legend()
    return figure_png(draw)
