"""GRPO's rewards (`train.rl.rewards`): what an answer the model sampled is worth.

Built in, derived from the task the recipe already describes (with train.rl.rewards empty, the
default, metric and, where the task has a format, format):
    format            1 when the answer has the task's format: serve.output_check (json: a JSON
                      object; json_fields: with eval.json_fields), or a JSON object when the training
                      answers are JSON; else 0
    metric            eval.metric of the answer against the row's reference answer (exact_match,
                      json_fields, token_f1, rouge_l, json_valid): the score evaluation reports
    reasoning_format  1 when a `<think>...</think>` block comes first and an answer follows it
A `<think>` block is taken off before format and metric score the answer, as evaluation does.

A user's reward is `module:function`, imported from the working directory and called as
`function(prompts, completions, rows)`: the prompts (chat messages, system prompt included), the
answers' texts, and the data rows they came from (`messages`, `meta` with `source` and `line`,
`reference`: the row's own answer). It returns one number per completion, or None for "not
scored". One that raises, returns a non-number, or the wrong count stops training with the row it
failed on.
"""

from __future__ import annotations

import importlib
import math
import numbers
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.answer_scores import has_format, score
from tunesmith.errors import ConfigError, DataError
from tunesmith.recipe import Recipe
from tunesmith.recipe.training import RewardSpec
from tunesmith.records import THINK_CLOSE, parse_json_object, split_reasoning

Score = Callable[[list[Any], list[str], list[dict]], list[Any]]
"""(prompts, completions' texts, rows) -> one reward (a number, or None) per completion."""


class RewardError(DataError):
    """A reward function failed on a row, or returned what is not a reward."""


@dataclass
class Reward:
    name: str
    weight: float
    score: Score


def where(row: dict) -> str:
    meta = row.get("meta", {})
    return f"{meta.get('source', '?')}:{meta.get('line', '?')}"


def _answer(text: str, opened: bool) -> str:
    return split_reasoning(text, opened)[1]


def _format_fields(recipe: Recipe, references: list[str]) -> list[str]:
    """The fields the format reward asks for, from serve.output_check or the references' JSON."""
    kind = recipe.serve.output_check
    if kind == "none":
        if not references or any(parse_json_object(r) is None for r in references):
            raise ConfigError("train.rl.rewards: format rewards answers that pass serve.output_check, which "
                              "is none, and the training answers are not all JSON objects. Set "
                              "serve.output_check: json (or json_fields), or drop the format reward.")
        return []
    return list(recipe.eval.json_fields) if kind == "json_fields" else []


def built_in(name: str, recipe: Recipe, references: list[str], opened: bool) -> Score:
    """The built-in reward `name` for this recipe (`opened`: the template's generation prompt
    opens the <think> block, as DeepSeek-R1's does)."""
    if name == "format":
        fields = _format_fields(recipe, references)
        return lambda prompts, texts, rows: [float(has_format(_answer(t, opened), fields)) for t in texts]
    if name == "metric":
        metric, fields = recipe.eval.metric, list(recipe.eval.json_fields)
        return lambda prompts, texts, rows: [score(metric, _answer(t, opened), row["reference"], fields)
                                             for t, row in zip(texts, rows, strict=True)]

    def reasoning_format(prompts: list[Any], texts: list[str], rows: list[dict]) -> list[float]:
        parts = [(split_reasoning(t, opened), t) for t in texts]
        return [float(thought is not None and THINK_CLOSE in text and bool(answer.strip()))
                for (thought, answer), text in parts]
    return reasoning_format


def user_function(spec: str) -> Score:
    """`module:function`, imported with the working directory on the path."""
    module_name, _, function_name = spec.partition(":")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"train.rl.rewards: {spec}: cannot import {module_name} ({error}). Put "
                          f"{module_name.replace('.', '/')}.py in the working directory (or on "
                          "PYTHONPATH).") from None
    except Exception as error:  # noqa: BLE001 - the user's module failed to load: say so, no traceback
        raise ConfigError(f"train.rl.rewards: {spec}: importing {module_name} failed: "
                          f"{type(error).__name__}: {error}") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ConfigError(f"train.rl.rewards: {spec}: {module_name} has no function {function_name!r}. "
                          f"Define def {function_name}(prompts, completions, rows) -> list[float].")
    return function


def reward_specs(recipe: Recipe, references: list[str]) -> list[RewardSpec]:
    """train.rl.rewards, or when it is empty the task's own: metric (unless eval.metric is none) and
    format where the task has one (serve.output_check, or JSON answers)."""
    if recipe.train.rl.rewards:
        return recipe.train.rl.rewards
    has_format = recipe.serve.output_check != "none" or (
        references and all(parse_json_object(r) is not None for r in references))
    derived = [name for name, applies in (("metric", recipe.eval.metric != "none"), ("format", has_format))
               if applies]
    if not derived:
        raise ConfigError("train.rl.rewards is empty and the task gives none: eval.metric is none and the "
                          "answers have no format to check. Name the rewards, e.g. train.rl.rewards: "
                          "[mymodule:score] (a function in mymodule.py).")
    return [RewardSpec(fn=name) for name in derived]


def rewards_for(recipe: Recipe, references: list[str], opened: bool) -> list[Reward]:
    """The recipe's rewards, each checked (built-ins: that the task has what they need; user
    functions: that they import) before any weight is loaded."""
    def made(fn: str) -> Score:
        return user_function(fn) if ":" in fn else built_in(fn, recipe, references, opened)
    return [Reward(spec.fn.replace(":", "."), spec.weight, made(spec.fn))
            for spec in reward_specs(recipe, references)]


def checked(reward: Reward, prompts: list[Any], texts: list[str], rows: list[dict]) -> list[float | None]:
    """`reward`'s values for these completions; a failure, a non-number or a wrong count is a
    RewardError naming the reward and the row."""
    try:
        values = list(reward.score(prompts, texts, rows))
    except Exception as error:  # noqa: BLE001 - the user's code: report it with the rows it ran on
        first = where(rows[0]) if rows else "?"
        raise RewardError(f"reward {reward.name} raised {type(error).__name__}: {error} (on a batch starting "
                          f"at row {first}). Fix the function; a completion it cannot score may return None."
                          ) from None
    if len(values) != len(texts):
        raise RewardError(f"reward {reward.name} returned {len(values)} values for {len(texts)} completions; "
                          "return one number (or None) per completion.")
    for value, row, text in zip(values, rows, texts, strict=True):
        if value is None:
            continue
        if not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
            raise RewardError(f"reward {reward.name} returned {value!r} for row {where(row)} (completion "
                              f"{text[:60]!r}); a reward is a finite number, or None when it does not apply.")
    return [None if v is None else float(v) for v in values]


def for_trl(reward: Reward, rows: list[dict]) -> Callable[..., list[float | None]]:
    """`reward` as TRL calls a reward function: prompts, completions (chat messages) and the
    dataset's columns; `row` indexes `rows`."""
    def function(prompts: list[Any], completions: list[Any], row: list[int], **_: Any) -> list[float | None]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return checked(reward, prompts, texts, [rows[i] for i in row])
    function.__name__ = reward.name
    return function
