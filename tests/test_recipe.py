"""The recipe: defaults, overrides, located errors, and every bundled recipe loads."""

from pathlib import Path

import pytest

from tunesmith.errors import ConfigError
from tunesmith.recipe import Recipe, dump_recipe, load_recipe, parse_override

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def test_defaults_are_complete_and_documented():
    recipe = Recipe()
    assert recipe.model.name == "embedded:smollm2-135m-instruct"
    assert recipe.model.trust_remote_code is False
    assert recipe.train.method == "lora"
    from pydantic import BaseModel

    sections = [Recipe]
    while sections:  # every field of every (nested) section has a docstring
        section = sections.pop()
        for name, field in section.model_fields.items():
            assert field.description, f"{section.__name__}.{name}"
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                sections.append(field.annotation)


def test_overrides_parse_yaml_scalars():
    assert parse_override("train.lr=3e-4") == (["train", "lr"], 3e-4)
    assert parse_override("train.lora.targets=[q_proj,v_proj]") == (
        ["train", "lora", "targets"], ["q_proj", "v_proj"])
    recipe = load_recipe(None, ["train.lr=0.001", "train.lora.r=4", "data.train=a.jsonl"])
    assert recipe.train.lr == 0.001 and recipe.train.lora.r == 4 and recipe.data.train == ["a.jsonl"]


def test_typo_names_the_key_and_suggests_the_fix(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as error:
        load_recipe(path)
    assert str(error.value) == f'{path}: train.lrr: unknown key (did you mean "lr"?)'


def test_all_errors_reported_at_once(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  lr: -1\n  batch_size: zero\neval:\n  metric: bleu\n")
    with pytest.raises(ConfigError) as error:
        load_recipe(path)
    lines = str(error.value).splitlines()
    assert len(lines) == 3
    assert any("train.lr" in line for line in lines)
    assert any("train.batch_size" in line for line in lines)
    assert any("eval.metric" in line for line in lines)


def test_cross_field_check():
    with pytest.raises(ConfigError, match="json_fields"):
        load_recipe(None, ["eval.metric=json_fields"])


def test_resolved_recipe_round_trips(tmp_path):
    recipe = load_recipe(None, ["train.lr=0.005", "name=x"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_recipe(recipe))
    assert load_recipe(path) == recipe


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_recipe_loads_and_says_how_to_run_it(path):
    assert path.read_text().startswith("# tunesmith "), "a recipe starts with the command that runs it"
    load_recipe(path)


def _project_for_recipes(root: Path) -> Path:
    """What the bundled recipes read, laid out as a user has it: the demo's data (as `tunesmith
    demo` and `demo --bias` write it) and ../shared/fixtures/real beside the project."""
    from conftest import REAL
    from tunesmith.demo import tickets

    project = root / "tunesmith"
    (root / "shared" / "fixtures").mkdir(parents=True)
    (root / "shared" / "fixtures" / "real").symlink_to(REAL)
    tickets.write(project / "data" / "demo")
    tickets.write(project / "data" / "demo-biased", variant="biased")
    return project


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_bundled_recipe_trains_one_step(path, tmp_path, monkeypatch, tiny_model_dir, tiny_encoder_dir):
    """Each recipe as it is, run from the project root, with the tiny model of its family and one
    step: its data paths, keys and family work together."""
    from tunesmith import pipeline

    monkeypatch.chdir(_project_for_recipes(tmp_path))
    as_written = load_recipe(str(path))
    tiny = tiny_encoder_dir if as_written.model.family == "encoder" else tiny_model_dir
    length = max(as_written.train.max_length, 1024)  # the tiny tokenizer has a token per character
    recipe = load_recipe(str(path), [f"model.name={tiny}", "train.max_steps=1", "train.batch_size=2",
                                     f"train.max_length={length}", "train.compile=false",
                                     "data.filters.max_tokens=100000", f"output.dir={tmp_path / 'runs'}"])
    result = pipeline.fine_tune(recipe)
    assert result.steps == 1
