"""GRPO (`train.method: grpo`): TRL's GRPOTrainer, as it is, on a LoRA adapter (or QLoRA with
train.rl.qlora; continuing an SFT adapter with train.init_adapter).

For each prompt of the training split the model samples train.rl.num_generations answers
(rollouts.py), the rewards score each (rewards.py: format, metric, reasoning_format, user
functions, weighted), and the adapter moves toward the answers that beat their group's mean
reward. With train.rl.kl > 0 a KL term holds it near the reference: the base (adapter off) or,
continuing an adapter, a frozen copy of it (TRL's "ref" adapter, removed before saving).

Logged per step (train/log.jsonl, the trackers, the report's and card's GRPO section): the summed
reward and its spread (`reward_std` over the batch, `reward_group_std` within groups, which is what
the advantages are made of), each reward's mean, the KL, completion lengths, and the rollouts'
time and tokens/s.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import nanstd

from tunesmith.errors import ConfigError, DataError
from tunesmith.models.chat import opens_thinking, prompt_and_reference
from tunesmith.recipe import Recipe
from tunesmith.train.backend import Fitted, TrainJob
from tunesmith.train.rewards import Reward, for_trl, rewards_for, where
from tunesmith.train.rollouts import EngineRollouts, engine_for
from tunesmith.train.trainer import callbacks, train, trainer_args


def grpo_rows(records: list[dict], recipe: Recipe) -> list[dict[str, Any]]:
    """Each record as GRPO's prompt (system prompt included) and the row the rewards see (the record
    with its reference answer); rows a reward cannot score refused with the row and the fix."""
    needs_reference = any(r.fn == "metric" for r in recipe.train.rl.rewards)
    rows = []
    for index, record in enumerate(records):
        if "chosen" in record or "completion" in record and "label" in record:
            raise DataError(
                f"{where(record)}: a preference row, but train.method grpo learns from prompts "
                "and rewards; train preference data with train.method dpo or kto."
            )
        if "messages" not in record or not any(m.get("role") == "assistant" for m in record["messages"]):
            raise DataError(
                f"{where(record)}: train.method grpo needs chat rows (a prompt, and the answer the "
                "metric reward compares with); this row has no assistant turn."
            )
        prompt, reference = prompt_and_reference(record, recipe.data.system_prompt)
        if needs_reference and not reference.strip():
            raise DataError(
                f"{where(record)}: the metric reward compares answers with the row's reference "
                "answer, and this row's is empty. Give it one, drop the row, or drop the metric "
                "reward (train.rl.rewards: [format] or a user function)."
            )
        rows.append(
            {"prompt": prompt, "row": index, "record": json.dumps({**record, "reference": reference})}
        )
    return rows


def prompt_dataset(tokenizer: Any, records: list[dict], recipe: Recipe) -> Any:
    """A `datasets.Dataset` of GRPO's prompts; the rewards checked before any weight is loaded."""
    import datasets

    from tunesmith.models.device import resolve_device

    _whole_groups(recipe)
    engine_for(recipe, resolve_device(recipe.model))  # vllm where it cannot run: before loading
    rows = grpo_rows(records, recipe)
    rewards_for(recipe, [json.loads(r["record"])["reference"] for r in rows], opens_thinking(tokenizer))
    return datasets.Dataset.from_list(rows)


def _whole_groups(recipe: Recipe) -> None:
    cfg, rl = recipe.train, recipe.train.rl
    answers = cfg.batch_size * cfg.grad_accum
    whole = rl.num_generations * max(1, answers // rl.num_generations)
    if answers % rl.num_generations:
        raise ConfigError(
            f"train.batch_size counts answers for grpo: batch_size x grad_accum ({answers}) must "
            f"be a multiple of train.rl.num_generations ({rl.num_generations}), so that each step "
            f"holds whole groups. E.g. train.batch_size={whole}."
        )


class MeasuredGRPOTrainer(GRPOTrainer):
    """GRPOTrainer that also logs the rewards' spread within groups and the rollouts' speed."""

    def _generate(self, prompts: list) -> Any:
        started = time.perf_counter()
        generated = super()._generate(prompts)
        seconds = time.perf_counter() - started
        mode = "train" if self.model.training else "eval"
        tokens = sum(len(ids) for ids in generated[1])
        self._metrics[mode]["rollout/seconds"].append(seconds)
        self._metrics[mode]["rollout/tokens_per_second"].append(tokens / max(seconds, 1e-9))
        return generated

    def _calculate_rewards(
        self, inputs: Any, prompts: Any, completions: Any, completion_ids_list: Any
    ) -> Any:
        per_function = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        mode = "train" if self.model.training else "eval"
        groups = (per_function * self.reward_weights.to(per_function.device)).nansum(dim=1)
        groups = groups.view(-1, self.num_generations)
        self._metrics[mode]["reward_group_std"].append(nanstd(groups, dim=1).mean().item())
        return per_function


def grpo_config(job: TrainJob, rewards: list[Reward], engine: str) -> Any:
    rl = job.recipe.train.rl
    return GRPOConfig(
        **trainer_args(job),
        num_generations=rl.num_generations,
        max_completion_length=rl.max_completion_length or job.recipe.eval.max_new_tokens,
        temperature=rl.temperature,
        beta=rl.kl,
        scale_rewards=rl.scale_rewards,
        reward_weights=[r.weight for r in rewards],
        use_vllm=engine == "vllm",
        vllm_mode="colocate",
        remove_unused_columns=False,
        log_completions=False,
    )


@dataclass
class GRPOBackend:
    name: str = "trl-grpo"

    def fit(self, job: TrainJob) -> Fitted:
        import warnings

        # rollout_func is "experimental" in TRL: its use here is pinned and tested (tests/test_grpo.py)
        warnings.filterwarnings("ignore", message="You are using 'rollout_func'", category=UserWarning)
        recipe, rl = job.recipe, job.recipe.train.rl
        rows = [json.loads(text) for text in job.train_set["record"]]
        rewards = rewards_for(recipe, [r["reference"] for r in rows], opens_thinking(job.tokenizer))
        engine = engine_for(recipe, job.device)
        args = grpo_config(job, rewards, engine)
        rollout = None
        if engine == "tunesmith":
            rollout = EngineRollouts(
                job.tokenizer,
                job.family,
                args.max_completion_length,
                rl.temperature,
                bf16=job.precision == "bf16",
                merge=recipe.train.weights == "lora",
            )
        hooks, progress = callbacks(job)
        trainer = MeasuredGRPOTrainer(
            model=job.model,
            reward_funcs=[for_trl(r, rows) for r in rewards],
            args=args,
            train_dataset=job.train_set,
            processing_class=job.tokenizer,
            callbacks=hooks,
            rollout_func=rollout,
        )
        result = train(trainer, job, progress)
        if "ref" in getattr(result.model, "peft_config", {}):  # TRL's frozen copy of the starting adapter
            result.model.delete_adapter("ref")
        return result
