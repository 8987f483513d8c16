"""`tunesmith models list` and `tunesmith models recommend`: the catalog and the advisor's ranking
as tables, with the reasons for each rank (advisor.py holds the logic; this only reads the
command's options and prints)."""

from __future__ import annotations

import re

from tunesmith.errors import ConfigError
from tunesmith.models.advisor import GB, Hardware, Need, rank
from tunesmith.models.catalog import TASK_FAMILIES, load_catalog

_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(g|gb|gib)?\s*$", re.IGNORECASE)


def print_catalog(family: str | None) -> None:
    from rich.table import Table

    from tunesmith.console import out

    if family is not None and family not in ("causal_lm", "encoder", "seq2seq"):
        raise ConfigError(f"--family {family}: choose causal_lm, encoder or seq2seq.")
    table = Table(title="base models (tunesmith models recommend --task ... ranks them)")
    for column in ("model", "family", "size", "context", "languages", "license", "commercial", "gated"):
        table.add_column(column)
    for e in load_catalog():
        if family is None or e.family == family:
            table.add_row(e.name, e.family, e.size, f"{e.context:,}", ", ".join(e.languages), e.license,
                          e.commercial, "yes" if e.gated else "")
    out.print(table)


def recommendation_need(task: str, memory: str | None, license: str, data: str | None) -> Need:
    """The options of `models recommend`, checked."""
    if task not in TASK_FAMILIES:
        raise ConfigError(f"--task {task}: choose generation, classification or text2text.")
    if license not in ("commercial", "any"):
        raise ConfigError(f"--license {license}: choose commercial or any.")
    memory_gb = None
    if memory is not None:
        found = _MEMORY.match(memory)
        if not found or float(found.group(1)) <= 0:
            raise ConfigError(f"--memory {memory}: expected an amount like 16GB or 24.")
        memory_gb = float(found.group(1))
    tokens = _data_tokens(data) if data else 1e6
    return Need(task=task, memory_gb=memory_gb, commercial=license == "commercial", tokens=tokens)


def _data_tokens(recipe_path: str) -> float:
    """Training tokens of a recipe's data, counted as whitespace words x 1.3 (no tokenizer needed)."""
    from tunesmith.data import load
    from tunesmith.recipe import load_recipe

    recipe = load_recipe(recipe_path)
    words = 0
    for path in recipe.data.train:
        for record in load(recipe, path).records:
            words += len(" ".join(str(v) for v in record.values() if isinstance(v, str | list)).split())
    return max(words * 1.3, 1.0)


def print_recommendation(need: Need, top: int) -> None:
    from rich.table import Table

    from tunesmith.console import out

    hardware = Hardware.detect()
    budget = need.memory_gb or hardware.memory_gb
    table = Table(title=f"{need.task} on {hardware.device} with {budget:.0f} GB"
                        f"{', commercial use' if need.commercial else ''}: best first")
    for column in ("#", "model", "size", "why"):
        table.add_column(column)
    for number, choice in enumerate(rank(need, hardware)[:top], start=1):
        table.add_row(str(number), choice.entry.name, choice.entry.size, "; ".join(choice.reasons))
    out.print(table)
    out.print(f"memory in GB ({GB / 1024 ** 3:.0f} GB = 2^30 bytes) and time are estimates from each model's "
              "architecture; train with `model.name: <model>` in the recipe.")
