"""The field's benchmarks beside the task: lm-evaluation-harness tasks, base and fine-tuned.

    eval:
      benchmarks: [arc_challenge, hellaswag, recipes/tickets-mc.yaml]   # names or local task files

Each model is handed to the harness as the object evaluation already holds (`HFLM(pretrained=
model)`, not reloaded; with LoRA the base is the same weights with the adapter off), with the
same few-shot count, limit and batch size for both. Every item's metric is kept, so the two
models are paired item by item: a bootstrap CI of each score and of the delta, and McNemar's
test where the metric is right/wrong. A group (mmlu) pools its subtasks' items.

`forgetting(benchmarks)` pools every task's items into the forgetting numbers, in place of the
bundled 20-question probe when eval.benchmarks.forgetting is on.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tunesmith.artifacts import Benchmark, Benchmarks, Forgetting, Paired
from tunesmith.errors import ConfigError
from tunesmith.evaluate.scoring import interval
from tunesmith.evaluate.stats import mcnemar, paired_bootstrap

INSTALL_HINT = "Install the harness: pip install 'tunesmith[benchmarks]' (lm-eval)."


class _TaskFileLoader(yaml.SafeLoader):
    """Reads a harness task file for its name; its `!function` tags are the harness's business."""


_TaskFileLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def harness_version() -> str:
    try:
        from importlib.metadata import version

        return f"lm-evaluation-harness {version('lm_eval')}"
    except Exception:  # noqa: BLE001 - not installed: said where it is needed
        raise ConfigError(f"eval.benchmarks needs lm-evaluation-harness. {INSTALL_HINT}") from None


def resolve(tasks: list[str]) -> tuple[list[str], list[str]]:
    """(task names, folders to index): a path ending .yaml is a local task file, named by its
    `task:` key; anything else is a harness task or group name."""
    names, folders = [], []
    for entry in tasks:
        if not entry.endswith((".yaml", ".yml")):
            names.append(entry)
            continue
        path = Path(entry)
        if not path.is_file():
            raise ConfigError(f"eval.benchmarks: {entry}: no such task file. Give a harness task name "
                              "(e.g. arc_challenge) or the path of a local task YAML file.")
        try:
            spec = yaml.load(path.read_text(encoding="utf-8"), Loader=_TaskFileLoader)  # noqa: S506
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
            raise ConfigError(f"eval.benchmarks: {entry}{where}: not valid YAML. Check the indentation "
                              "there, and quote values that contain ': '.") from None
        name = spec.get("task") if isinstance(spec, dict) else None
        if not isinstance(name, str):
            raise ConfigError(f"eval.benchmarks: {entry}: a task file names its task (`task: my_task`)")
        names.append(name)
        folders.append(str(path.resolve().parent))
    return names, sorted(set(folders))


def task_manager(names: list[str], folders: list[str], local_only: bool) -> Any:
    """The harness's task index over its own tasks (unless every task is local) and `folders`;
    an unknown name is a located error with the nearest names."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=folders or None, include_defaults=not local_only)
    for name in names:
        if name not in manager.all_tasks:
            near = difflib.get_close_matches(name, manager.all_tasks, n=3)
            raise ConfigError(f"eval.benchmarks: unknown task {name!r}"
                              + (f"; did you mean {', '.join(near)}?" if near else "")
                              + " (`lm_eval ls tasks` lists the harness's tasks; a local task is a path "
                                "ending .yaml)")
    return manager


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The harness logs every setting it resolves; keep its warnings and errors only."""
    names = ("lm-eval", "lm_eval", "datasets")
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


def harness_items(model: Any, tokenizer: Any, names: list[str], manager: Any, cfg: Any, batch_size: int,
                  backend: str) -> dict[str, Any]:
    """One harness run of `model` on the tasks: {"items": {leaf task: {doc_id: value}}, "metric":
    {leaf task: metric}, "n-shot": {...}, "groups": {group: [leaf tasks]}}."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    with _quiet():
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, backend=backend)
        try:
            out = lm_eval.simple_evaluate(
                model=lm, tasks=names, task_manager=manager, num_fewshot=cfg.num_fewshot, limit=cfg.limit,
                log_samples=True, bootstrap_iters=0, apply_chat_template=cfg.apply_chat_template,
                random_seed=0, numpy_random_seed=1234, torch_random_seed=1234, fewshot_random_seed=1234,
)
        except (OSError, ConnectionError, ValueError) as error:
            raise ConfigError(f"eval.benchmarks: the harness could not load {', '.join(names)}: {error}. "
                              "Offline, a hub task's dataset must already be in the datasets cache "
                              "(HF_DATASETS_CACHE); a local task reads local files.") from None
    items: dict[str, dict[int, float]] = {}
    metrics: dict[str, str] = {}
    for task, samples in out["samples"].items():
        metric = out["configs"][task]["metric_list"][0]["metric"]
        metrics[task] = metric
        chosen: dict[int, float] = {}
        for sample in samples:
            value = sample.get(metric)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"eval.benchmarks: {task}'s metric {metric} is not a number per item "
                                  f"({type(value).__name__}); tunesmith pairs models item by item, so "
                                  "choose tasks whose metric is a per-item mean (acc, exact_match)")
            chosen.setdefault(sample["doc_id"], float(value))  # the first filter's value
        items[task] = chosen
    return {"items": items, "metric": metrics, "n-shot": out.get("n-shot", {}),
            "groups": out.get("group_subtasks", {})}


def _leaves(name: str, groups: dict[str, list[str]]) -> list[str]:
    if name not in groups:
        return [name]
    return [leaf for child in groups[name] for leaf in _leaves(child, groups)]


def _paired(base: list[float], tuned: list[float]) -> Paired:
    """Paired bootstrap of the delta, and McNemar's test where every item is right or wrong."""
    result = Paired.model_validate(paired_bootstrap(base, tuned))
    if all(v in (0.0, 1.0) for v in base + tuned):
        result.mcnemar = mcnemar(base, tuned)
    return result


def benchmark(name: str, runs: dict[str, dict[str, Any]]) -> Benchmark:
    """One requested task (or group) from the models' harness runs, paired item by item."""
    tuned = runs["finetuned"]
    leaves = _leaves(name, tuned["groups"])
    ids = [f"{leaf}:{doc}" for leaf in leaves for doc in sorted(tuned["items"][leaf])]
    scores = {model: [run["items"][leaf][doc] for leaf in leaves for doc in sorted(tuned["items"][leaf])]
              for model, run in runs.items()}
    metrics = sorted({tuned["metric"][leaf] for leaf in leaves})
    shots = {tuned["n-shot"].get(leaf) for leaf in leaves}
    result = Benchmark(task=name, metric="/".join(metrics), examples=len(ids),
                       num_fewshot=shots.pop() if len(shots) == 1 else None,
                       subtasks=leaves if leaves != [name] else [], items=ids, scores=scores,
                       finetuned=interval(scores["finetuned"]))
    if "base" in scores:
        result.base = interval(scores["base"])
        result.paired = _paired(scores["base"], scores["finetuned"])
    return result


def run(ev: Any) -> Benchmarks:
    """eval.benchmarks on the fine-tuned model and (eval.baseline) its base."""
    cfg = ev.recipe.eval.benchmarks
    version = harness_version()
    names, folders = resolve(cfg.tasks)
    manager = task_manager(names, folders, local_only=len(folders) == len(cfg.tasks))
    batch = cfg.batch_size or ev.recipe.eval.batch_size
    backend = "seq2seq" if ev.family.name == "seq2seq" else "causal"
    tokenizer = ev.run_model.tokenizer
    runs = {"finetuned": harness_items(ev.run_model.model, tokenizer, names, manager, cfg, batch, backend)}
    if ev.recipe.eval.baseline:
        with ev.run_model.as_base() as base:
            runs["base"] = harness_items(base, tokenizer, names, manager, cfg, batch, backend)
    return Benchmarks(harness=version, limit=cfg.limit, apply_chat_template=cfg.apply_chat_template,
                      tasks={name: benchmark(name, runs) for name in names})


def forgetting(benchmarks: Benchmarks) -> Forgetting:
    """What fine-tuning cost outside the task, every benchmark item pooled."""
    tasks = list(benchmarks.tasks.values())
    tuned = [v for b in tasks for v in b.scores["finetuned"]]
    result = Forgetting(examples=len(tuned), finetuned=sum(tuned) / len(tuned), source="benchmarks",
                        tasks=[b.task for b in tasks])
    if all("base" in b.scores for b in tasks):
        base = [v for b in tasks for v in b.scores["base"]]
        result.base = sum(base) / len(base)
        result.paired = _paired(base, tuned)
    return result
