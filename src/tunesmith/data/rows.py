"""What every data step shares about rows: the text duplicate and leakage checks compare, a row's
location, the near-duplicate parameters and how the recipe reads one file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.data.clean import normalise_record
from tunesmith.data.dedup import NearDupParams
from tunesmith.data.load import LoadedFile, load_file
from tunesmith.data.readers import ReadOptions
from tunesmith.errors import DataError
from tunesmith.explain import path_problem
from tunesmith.recipe import Recipe
from tunesmith.records import preference_texts, turn_text


def match_text(record: dict[str, Any]) -> str:
    """What duplicate and leakage checks compare: every turn but the (shared) system prompt."""
    if "messages" in record:
        return "\n".join(turn_text(m) for m in record["messages"] if m["role"] != "system")
    if "prompt" in record:
        return "\n".join(preference_texts(record, with_system=False))
    return record["text"]


def where(record: dict[str, Any]) -> str:
    return f"{record['meta'].get('source')}:{record['meta'].get('line')}"


def near_params(recipe: Recipe) -> NearDupParams:
    d = recipe.data.dedup
    return NearDupParams(d.shingle_size, d.num_perm, d.bands, d.rows, d.threshold)


def read_options(recipe: Recipe) -> ReadOptions:
    cfg = recipe.data
    return ReadOptions(cfg.encoding, cfg.max_row_chars, cfg.max_depth, cfg.text_separator)


def check_readable(path: str, given_as: str) -> None:
    """DataError when `path` cannot be read, saying why and where the path was given: a recipe
    key (`data.eval_sets.ood`), or a command's argument."""
    problem = path_problem(path)
    if problem is None:
        return
    what, fix = problem
    key = given_as.startswith("data.")
    if fix is None:
        fix = (f"Check {given_as} in the recipe (a relative path is read from the working directory, "
               f"{Path.cwd()})." if key else f"Check the path given to {given_as}.")
    raise DataError(f"{given_as + ': ' if key else ''}{what}. {fix}")


def load(recipe: Recipe, path: str, fmt: str | None = None, on_invalid: str | None = None,
         given_as: str = "data.train") -> LoadedFile:
    """One file as the recipe reads it: format, columns, limits, cleaning, validation."""
    check_readable(path, given_as)
    cfg = recipe.data
    return load_file(path, fmt or cfg.format, cfg.columns, on_invalid or cfg.on_invalid, cfg.max_rows,
                     read_options(recipe), normalise_record if cfg.clean.enabled else None)
