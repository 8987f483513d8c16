"""GRPO (`train.method: grpo`): the rewards, the advantages TRL computes from them, and a tiny
model trained through the CLI with a built-in and a user reward."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import colour_codes
from tunesmith.errors import ConfigError
from tunesmith.recipe import load_recipe
from tunesmith.train.rewards import Reward, RewardError, checked, rewards_for

USER_REWARD = '''
def fewer_letters(prompts, completions, rows):
    """The shorter the answer, the better (a signal a random model's answers vary in)."""
    assert all(isinstance(p, list) and p[-1]["role"] == "user" for p in prompts)
    assert all("reference" in r and r["meta"]["source"].endswith("train.jsonl") for r in rows)
    return [1.0 / (1 + len(c)) for c in completions]
'''


def _recipe(*overrides: str):
    return load_recipe(None, ["train.method=grpo", *overrides])


def test_built_in_rewards_score_hand_made_answers():
    recipe = _recipe(
        "eval.metric=json_fields", "eval.json_fields=[category]", "serve.output_check=json_fields"
    )
    rewards = {r.name: r for r in rewards_for(recipe, ['{"category": "billing"}'], opened=False)}
    rows = [{"reference": '{"category": "billing", "priority": "low"}'}] * 4
    texts = [
        '{"category": "billing"}',
        '{"category": "account"}',
        "billing",
        '<think>bills</think>{"category": "billing"}',
    ]
    assert checked(rewards["metric"], [], texts, rows) == [
        1.0,
        0.0,
        0.0,
        1.0,
    ]  # the <think> block is taken off
    assert checked(rewards["format"], [], texts, rows) == [1.0, 1.0, 0.0, 1.0]
    thinking = rewards_for(_recipe("train.rl.rewards=[reasoning_format]"), [], opened=False)[0]
    assert checked(
        thinking, [], ["<think>a</think> B", "<think>a</think>", "B", "<think>unclosed"], rows
    ) == [1.0, 0.0, 0.0, 0.0]
    opened = rewards_for(_recipe("train.rl.rewards=[reasoning_format]"), [], opened=True)[0]
    assert checked(opened, [], ["a</think> B", "B"], rows[:2]) == [1.0, 0.0]  # the template opened <think>


def test_format_reward_needs_a_format_to_check():
    recipe = _recipe("train.rl.rewards=[format]")
    assert checked(rewards_for(recipe, ['{"a": 1}'], False)[0], [], ['{"a": 2}', "no"], [{}, {}]) == [
        1.0,
        0.0,
    ]
    with pytest.raises(ConfigError, match="serve.output_check: json"):
        rewards_for(recipe, ["RE", '{"a": 1}'], False)  # answers that are not JSON: no format to reward


def test_user_reward_errors_name_the_row():
    rows = [{"meta": {"source": "t.jsonl", "line": 3}, "reference": "x"}]
    raising = Reward("mine.score", 1.0, lambda p, c, r: [1 / 0])
    with pytest.raises(RewardError, match=r"reward mine.score raised ZeroDivisionError.*row t.jsonl:3"):
        checked(raising, [], ["a"], rows)
    with pytest.raises(RewardError, match=r"returned 'good' for row t.jsonl:3 \(completion 'a'\)"):
        checked(Reward("mine.score", 1.0, lambda p, c, r: ["good"]), [], ["a"], rows)
    with pytest.raises(RewardError, match="returned nan"):
        checked(Reward("mine.score", 1.0, lambda p, c, r: [float("nan")]), [], ["a"], rows)
    with pytest.raises(RewardError, match="returned 2 values for 1 completions"):
        checked(Reward("mine.score", 1.0, lambda p, c, r: [1, 2]), [], ["a"], rows)
    assert checked(Reward("mine.score", 1.0, lambda p, c, r: [None]), [], ["a"], rows) == [None]


def test_recipe_refuses_rewards_it_cannot_compute():
    with pytest.raises(ConfigError, match="metric scores answers with eval.metric, which is none"):
        _recipe("train.rl.rewards=[metric]", "eval.metric=none")
    with pytest.raises(
        ConfigError, match="reasoning_format rewards a <think> block, but train.reasoning is drop"
    ):
        _recipe("train.rl.rewards=[reasoning_format]", "train.reasoning=drop")
    with pytest.raises(ConfigError, match="not one of format, metric, reasoning_format"):
        _recipe("train.rl.rewards=[style]")
    with pytest.raises(ConfigError, match="built for decoders"):
        _recipe("model.family=encoder")
    assert _recipe("train.rl.rewards=[metric, {fn: 'mod:fn', weight: 0.5}]").train.rl.rewards[1].weight == 0.5


def test_advantages_of_a_hand_made_group(tiny_model_dir, tmp_path):
    """One group of four answers to `code for red` (reference RE), through TRL's scoring as the GRPO
    backend sets it up: metric (exact match, weight 1) + a user reward (answers of at most two
    characters, weight 0.5). Summed: 1.5, 0.5, 0, 1.5; mean 0.875, std 0.75 (n - 1), so the
    advantages are (reward - 0.875) / 0.75: 0.833, -0.5, -1.167, 0.833."""
    import torch

    from tunesmith.models.families import family_for
    from tunesmith.models.loading import load_model, load_tokenizer
    from tunesmith.train import _wrap_lora
    from tunesmith.train.backend import TrainJob
    from tunesmith.train.grpo import MeasuredGRPOTrainer, grpo_config, prompt_dataset
    from tunesmith.train.guards import OverfittingGuards
    from tunesmith.train.rewards import for_trl

    (tmp_path / "two_chars.py").write_text(
        "def score(prompts, completions, rows):\n    return [float(len(c) <= 2) for c in completions]\n"
    )
    sys.path.insert(0, str(tmp_path))
    recipe = load_recipe(
        None,
        [
            f"model.name={tiny_model_dir}",
            "train.method=grpo",
            "train.batch_size=4",
            "train.rl.rewards=[metric, {fn: 'two_chars:score', weight: 0.5}]",
            "train.max_steps=1",
        ],
    )
    tokenizer = load_tokenizer(recipe.model, str(tiny_model_dir))
    record = {
        "messages": [{"role": "user", "content": "code for red"}, {"role": "assistant", "content": "RE"}],
        "meta": {"source": "t.jsonl", "line": 1},
    }
    dataset = prompt_dataset(tokenizer, [record], recipe)
    model = _wrap_lora(load_model(recipe.model, str(tiny_model_dir), "cpu"), recipe, family_for(recipe.model))
    job = TrainJob(
        recipe,
        model,
        tokenizer,
        family_for(recipe.model),
        dataset,
        None,
        "cpu",
        "no",
        tmp_path / "checkpoints",
        None,
        tmp_path / "log.jsonl",
        OverfittingGuards(recipe.train),
    )
    rewards = rewards_for(recipe, ["RE"], opened=False)
    answers = ["RE", "BL", "RED", "RE"]

    def rollout(prompts, trainer):
        ids = [
            tokenizer(a, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for a in answers
        ]
        prompt = tokenizer.apply_chat_template(prompts[0], add_generation_prompt=True, tokenize=False)
        return {
            "prompt_ids": [tokenizer(prompt, add_special_tokens=False)["input_ids"]] * len(prompts),
            "completion_ids": ids,
            "logprobs": None,
        }

    trainer = MeasuredGRPOTrainer(
        model=model,
        reward_funcs=[for_trl(r, [{**record, "reference": "RE"}]) for r in rewards],
        args=grpo_config(job, rewards, "tunesmith"),
        train_dataset=dataset,
        processing_class=tokenizer,
        rollout_func=rollout,
    )
    trainer.model.train()
    scored = trainer._generate_and_score_completions([dataset[0]] * 4)
    expected = torch.tensor([0.625, -0.375, -0.875, 0.625]) / (0.75 + 1e-4)
    assert torch.allclose(scored["advantages"].flatten(), expected, atol=1e-4)
    metrics = trainer._metrics["train"]
    assert metrics["rewards/metric/mean"] == [0.5] and metrics["rewards/two_chars.score/mean"] == [0.75]
    assert metrics["reward"] == [0.875] and metrics["reward_group_std"] == [pytest.approx(0.75)]


def test_grpo_trains_the_tiny_model_from_the_cli(tiny_model_dir, tmp_path):
    """`tunesmith train` with train.method grpo: the metric reward and a user's, in the working
    directory; rewards, their spread, lengths and the rollouts' speed in the log, the report and the card."""
    files = colour_codes(tmp_path)
    (tmp_path / "brevity.py").write_text(USER_REWARD)
    recipe = tmp_path / "grpo.yaml"
    recipe.write_text(
        json.dumps(
            {
                "name": "grpo",
                "model": {"name": str(tiny_model_dir)},
                "data": {"train": str(files["train"]), "test": str(files["test"]), "val_fraction": 0},
                "train": {
                    "method": "grpo",
                    "max_steps": 3,
                    "batch_size": 8,
                    "logging_steps": 1,
                    "lr": 0.01,
                    "rl": {
                        "num_generations": 4,
                        "max_completion_length": 6,
                        "rewards": ["metric", {"fn": "brevity:fewer_letters", "weight": 0.5}],
                    },
                },
                "eval": {
                    "max_new_tokens": 6,
                    "baseline": False,
                    "forgetting_probe": False,
                    "bias": {"enabled": False},
                },
                "output": {"dir": str(tmp_path / "runs")},
            }
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "tunesmith", "run", str(recipe)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "runs" / "grpo"
    summary = json.loads((run / "train" / "summary.json").read_text())
    assert summary["method"] == "grpo" and summary["steps"] == 3
    steps = [json.loads(line) for line in (run / "train" / "log.jsonl").read_text().splitlines()]
    steps = [s for s in steps if "reward" in s]
    assert [s["step"] for s in steps] == [1, 2, 3]
    for key in (
        "rewards/metric/mean",
        "rewards/brevity.fewer_letters/mean",
        "reward_std",
        "reward_group_std",
        "completions/mean_length",
        "rollout/tokens_per_second",
    ):
        assert all(key in s for s in steps), key
    assert all(0 < s["rewards/brevity.fewer_letters/mean"] <= 1 for s in steps)
    assert any(s["reward_group_std"] > 0 for s in steps)  # the groups' answers differed: a gradient
    from safetensors.numpy import load_file

    adapter = load_file(str(run / "model" / "adapter_model.safetensors"))
    assert any(abs(v).sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # B starts at 0: it moved
    card, report = (run / "README.md").read_text(), (run / "report.html").read_text()
    assert "GRPO" in card and "brevity.fewer_letters" in card
    assert "reward" in report and "brevity.fewer_letters" in report


def test_grpo_on_a_4bit_base(tiny_model_dir, tmp_path, monkeypatch):
    """train.rl.qlora: the base loads in NF4 (as train.method qlora) and the adapter trains on it; the
    rollouts leave the 4-bit weights unmerged."""
    import bitsandbytes as bnb

    import tunesmith.train as train_stage
    from tunesmith import pipeline

    loaded = []

    def spy(*args, **kwargs):
        model = load_model(*args, **kwargs)
        loaded.append(any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()))
        return model

    load_model = train_stage.load_model
    monkeypatch.setattr(train_stage, "load_model", spy)
    files = colour_codes(tmp_path)
    recipe = load_recipe(
        None,
        [
            f"model.name={tiny_model_dir}",
            f"data.train={files['train']}",
            "data.val_fraction=0",
            "train.method=grpo",
            "train.rl.qlora=true",
            "train.max_steps=2",
            "train.batch_size=4",
            "train.rl.max_completion_length=4",
            f"output.dir={tmp_path / 'runs'}",
            "name=q",
        ],
    )
    assert recipe.train.weights == "qlora"
    result = pipeline.fine_tune(recipe)
    assert result.steps == 2 and loaded == [True]
    assert (recipe.run_dir / "model" / "adapter_model.safetensors").is_file()


def test_default_rewards_come_from_the_task():
    from tunesmith.train.rewards import reward_specs

    def names(recipe, references):
        return [spec.fn for spec in reward_specs(recipe, references)]

    assert names(_recipe(), ['{"category": "billing"}']) == ["metric", "format"]  # JSON answers: a format
    assert names(_recipe(), ["RE", "BL"]) == ["metric"]
    assert names(_recipe("serve.output_check=json"), ["RE"]) == ["metric", "format"]
    assert names(_recipe("eval.metric=none"), ['{"a": 1}']) == ["format"]
    with pytest.raises(ConfigError, match="train.rl.rewards is empty and the task gives none"):
        reward_specs(_recipe("eval.metric=none"), ["RE"])


def test_rows_without_what_the_rewards_need_are_refused():
    from tunesmith.errors import DataError
    from tunesmith.train.grpo import grpo_rows

    meta = {"source": "t.jsonl", "line": 7}
    empty = {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}],
        "meta": meta,
    }
    with pytest.raises(DataError, match=r"t.jsonl:7: the metric reward compares .* reference answer"):
        grpo_rows([empty], _recipe("train.rl.rewards=[metric]"))
    assert grpo_rows([empty], _recipe("train.rl.rewards=[mod:fn]"))[0]["prompt"][-1]["content"] == "hi"
    with pytest.raises(DataError, match=r"t.jsonl:7: a preference row, .* dpo or kto"):
        grpo_rows([{"prompt": [], "chosen": "a", "rejected": "b", "meta": meta}], _recipe())
    with pytest.raises(DataError, match=r"t.jsonl:7: train.method grpo needs chat rows"):
        grpo_rows([{"text": "plain", "meta": meta}], _recipe())


def test_demo_rl_compares_grpo_with_more_sft(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """`tunesmith demo --rl`'s machinery on the tiny model: two continuations of the demo's run per
    seed, compared paired on test and ood, the table printed and runs/demo-rl.json written."""
    from importlib.resources import files

    from tunesmith import pipeline
    from tunesmith.demo import rl, tickets

    monkeypatch.chdir(tmp_path)
    tickets.write("data/demo")
    quick = [
        "train.max_steps=2",
        "train.batch_size=2",
        "train.max_length=1024",
        "train.compile=false",
        "eval.max_new_tokens=4",
        "eval.forgetting_probe=false",
        "eval.bias.enabled=false",
    ]
    pipeline.run(
        load_recipe(str(files("tunesmith.demo") / "recipe.yaml"), [f"model.name={tiny_model_dir}", *quick])
    )
    monkeypatch.setattr(rl, "STEPS", 2)
    summary = rl.run_rl(Path("."), (3,))
    (seed,) = summary["seeds"]
    assert set(seed["runs"]) == {"grpo", "sft_more"} and Path(seed["runs"]["grpo"]).name == "demo-rl-s3"
    grpo = json.loads((Path(seed["runs"]["grpo"]) / "train" / "summary.json").read_text())
    more = json.loads((Path(seed["runs"]["sft_more"]) / "train" / "summary.json").read_text())
    assert (grpo["method"], grpo["steps"], more["method"], more["steps"]) == ("grpo", 2, "lora", 2)
    for key in ("grpo_vs_sft", "grpo_vs_sft_more", "sft_more_vs_sft"):
        assert set(seed[key]) == {"test", "ood"} and seed[key]["ood"]["paired"] is not None
    assert (
        seed["grpo_vs_sft"]["ood"]["after"] == seed["grpo_vs_sft_more"]["ood"]["after"]
    )  # the same GRPO run
    assert json.loads(Path("runs/demo-rl.json").read_text())["seeds"][0]["seed"] == 3
    printed = capsys.readouterr().out
    assert "GRPO - (SFT + steps)" in printed and "seed 3" in printed and "wall time" in printed
