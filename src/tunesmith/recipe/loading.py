"""Reading a recipe: YAML with unique keys, `key=value` overrides, errors that name the key."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tunesmith.errors import ConfigError
from tunesmith.explain import validation_problem
from tunesmith.recipe.root import Recipe

_SCIENTIFIC = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")
YAML_HINT = "Check the indentation there, and quote values that contain ': ' or start with * & @ [ {."


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=3e-4` -> (["train", "lr"], 0.0003). Values are parsed as YAML scalars; a value
    YAML cannot read (`*x`, `@org/model`, `[1e-4`) is taken as the plain string it is."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(f"override {text!r}: expected key.sub=value, e.g. train.lr=3e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _SCIENTIFIC.match(value):
        value = float(value)  # YAML 1.1 reads 3e-4 (no dot) as a string
    return key.strip().split("."), value


def _field_at(path: list[str]) -> tuple[str, Any] | None:
    """The first key of `path` that the schema says holds a value, not a section: (its dotted
    name, its annotation); None when every key but the last is a section (or free-form)."""
    model: Any = Recipe
    for depth, part in enumerate(path[:-1]):
        field = model.model_fields.get(part)
        if field is None:
            return None  # an unknown key: validation names it, with the close ones
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
            continue
        if getattr(annotation, "__origin__", None) is dict:
            return None  # a free-form mapping (data.licenses, eval_sets, columns ...) takes any key
        return ".".join(path[:depth + 1]), annotation
    return None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        scalar = _field_at(path)
        if scalar is not None:
            raise ConfigError(f"override {text}: {scalar[0]} takes a value, not keys under it; write "
                              f"{scalar[0]}=VALUE")
        node = raw
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                key = ".".join(path[:path.index(part) + 1])
                raise ConfigError(f"override {text!r}: {part} is not a section (it holds {child!r}); "
                                  f"set the key itself, e.g. {key}=VALUE")
            node = child
        node[path[-1]] = value
    return raw


def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names valid at `loc` (for "did you mean")."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _blame(key: str, source: str, overrides: list[str]) -> str:
    """Who set `key`: the last override that set it or a section above it, else the recipe file."""
    for text in reversed(overrides):
        name = text.partition("=")[0].strip()
        if key == name or key.startswith(name + ".") or name.startswith(key + "."):
            return f"override {text}"
    return source


def _unknown_key(loc: tuple) -> str:
    """`unknown key`, with the close one, else the keys that are valid there."""
    known = _known_keys(Recipe, loc)
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    if close:
        return f'unknown key (did you mean "{close[0]}"?)'
    where = "the recipe's sections are" if len(loc) == 1 else f"{'.'.join(map(str, loc[:-1]))} has"
    return f"unknown key; {where} " + ", ".join(known) if known else "unknown key"


def format_validation_error(error: ValidationError, source: str, overrides: list[str] | None = None) -> str:
    """One line a problem: who set the key (the file or an override), the key, what is wrong."""
    lines = []
    for item in error.errors():
        loc = tuple(p for p in item["loc"] if not str(p).startswith("function-"))
        key = ".".join(str(p) for p in loc) or "(top level)"
        origin = _blame(key, source, overrides or [])
        problem = _unknown_key(loc) if item["type"] == "extra_forbidden" else validation_problem(item)
        lines.append(f"{origin}: {key}: {problem}")
    return "\n".join(lines)


def recipe_from_dict(raw: dict[str, Any], source: str = "recipe",
                     overrides: list[str] | None = None) -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, source, overrides)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (YAML lets the last one win)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice in one section (first on line {seen[key] + 1}); "
                "keep one", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def read_yaml(path: Path) -> Any:
    """A YAML file, with errors as one located line: `path:line:column: what. fix`."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text. Save the recipe as UTF-8.") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = " ".join(str(error.problem or error.context or "").split())
        if "appears twice" in problem:
            raise ConfigError(f"{where}: {problem}.") from None
        tag = re.search(r"constructor for the tag '([^']+)'", problem)
        if tag:
            shown = tag.group(1).replace("tag:yaml.org,2002:", "!!")
            raise ConfigError(f"{where}: the tag {shown} is not allowed: a recipe is plain YAML (keys, "
                              "text, numbers, lists), and tunesmith never builds objects or runs code from "
                              "one. Remove the tag.") from None
        raise ConfigError(f"{where}: not valid YAML ({problem}). {YAML_HINT}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(error).split())}). {YAML_HINT}") from None


def load_recipe(path: str | Path | None, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe (or start from defaults when `path` is None) and apply overrides."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            what = "is a directory" if path.is_dir() else "recipe not found"
            raise ConfigError(f"{path}: {what}. Pass the path of a YAML recipe, e.g. recipes/demo.yaml.")
        raw = read_yaml(path)
        if raw is None:
            raise ConfigError(f"{path}: the recipe is empty (no keys: nothing, or only comments). Start from "
                              "recipes/demo.yaml, or give at least data.train.")
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a recipe is a YAML mapping (key: value), not a "
                              f"{type(raw).__name__}. Start from recipes/demo.yaml.")
    raw = apply_overrides(raw, overrides or [])
    return recipe_from_dict(raw, source, overrides)


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML, every default filled in."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
