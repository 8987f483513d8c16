"""Other libraries' errors in tunesmith's words (src/tunesmith/explain.py), checked by hand."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from tunesmith.explain import connection_problem, json_problem, path_problem, scrub, validation_problem
from tunesmith.recipe import Recipe


def _first(raw: dict) -> dict:
    with pytest.raises(ValidationError) as error:
        Recipe.model_validate(raw)
    return error.value.errors()[0]


@pytest.mark.parametrize(("raw", "said"), [
    ({"train": {"lr": "fast"}}, "expected a number (got 'fast')"),
    ({"train": {"epochs": float("inf")}}, "must be a finite number (not .inf or .nan) (got inf)"),
    ({"train": {"batch_size": 0}}, "must be greater than 0 (got 0)"),
    ({"train": {"optimizer": "adam"}}, "expected one of 'adamw', 'sgd' or 'rmsprop' (got 'adam')"),
    ({"train": None}, "the section is empty: give it keys (indented under it), or delete the line to take "
                      "the defaults"),
    ({"train": {"seed": -1}}, "must be at least 0 (got -1)"),
    ({"data": {"columns": "a"}}, "expected a mapping of keys to values, e.g. {key: value} (got 'a')"),
])
def test_validation_errors_in_our_words(raw, said):
    text = validation_problem(_first(raw))
    assert text == said
    assert "Input should" not in text and "Config" not in text


def test_json_errors_name_the_cause():
    for text, cause in (('{"a": 1 "b": 2}', "a ',' is missing between two items"),
                        ('{"a": 1,}', "a key is not in double quotes"), ('"abc', "a string is not closed")):
        with pytest.raises(json.JSONDecodeError) as error:
            json.loads(text)
        said = json_problem(error.value)
        assert said.startswith("not valid JSON at column") and cause in said


def test_paths_that_cannot_be_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    (tmp_path / "dangling").symlink_to("gone.jsonl")
    (tmp_path / "here.jsonl").write_text("{}")
    assert path_problem("a") == ("a: a loop of symbolic links (a -> b -> a)", "Point the link at a file.")
    what, fix = path_problem("dangling")
    assert what == "dangling: a symbolic link to gone.jsonl, which does not exist"
    assert fix.startswith("Point the link at the file")
    missing = f"nope.jsonl (looked for at {tmp_path / 'nope.jsonl'}): file not found"
    assert path_problem("nope.jsonl") == (missing, None)
    assert path_problem("here.jsonl") is None


def test_connections_and_staging_paths():
    assert connection_problem(ConnectionRefusedError("[Errno 111] Connection refused")) == (
        "nothing listens at that host and port (connection refused)")
    unresolved = OSError('could not translate host name "db"')
    assert connection_problem(unresolved) == "the host name does not resolve"
    assert connection_problem(RuntimeError("???")) == "the server could not be reached"
    assert scrub("runs/demo/.staging/ab12cd/data/train.jsonl: bad") == "runs/demo/data/train.jsonl: bad"
    assert scrub(".staging/x1/eval/summary.json") == "eval/summary.json"
