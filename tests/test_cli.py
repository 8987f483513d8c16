"""User mistakes end in one located line and exit code 2, never a traceback."""

import json
import subprocess
import sys

from conftest import write_jsonl


def tunesmith(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "tunesmith", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def assert_clean_error(result, *expected):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    message = " ".join(result.stderr.split())
    for text in expected:
        assert text in message, message


def test_broken_jsonl_line(tmp_path, tiny_model_dir):
    path = tmp_path / "train.jsonl"
    write_jsonl(path, [{"prompt": "a", "completion": "b"}])
    with open(path, "a") as handle:
        handle.write('{"prompt": "oops"\n')
    result = tunesmith("data", "prepare", "-", f"data.train={path}", f"model.name={tiny_model_dir}",
                       f"output.dir={tmp_path}/runs", cwd=tmp_path)
    # "-" is not a recipe file: that is the first error reported
    assert_clean_error(result, "-: recipe not found")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data:\n  train: {path}\noutput:\n  dir: {tmp_path}/runs\n")
    result = tunesmith("data", "prepare", str(recipe), cwd=tmp_path)
    assert_clean_error(result, f"{path}:2: not valid JSON", "data.on_invalid: skip")


def test_csv_missing_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("instruction,input\nAdd,2+2\n")
    result = tunesmith("data", "inspect", str(path), cwd=tmp_path)
    assert_clean_error(result, f"{path}: cannot detect the data format", "missing 'output'")


def test_typo_in_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  epochz: 2\n")
    result = tunesmith("train", str(recipe), cwd=tmp_path)
    assert_clean_error(result, f'{recipe}: train.epochz: unknown key (did you mean "epochs"?)')
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_model_dir(tmp_path, chat_files):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data:\n  train: {chat_files['train']}\nmodel:\n  name: ./nowhere\n"
                      f"output:\n  dir: {tmp_path}/runs\n")
    assert_clean_error(tunesmith("train", str(recipe), cwd=tmp_path), "./nowhere: directory not found")


def test_pickle_weights_refused(tmp_path, chat_files):
    model_dir = tmp_path / "pickled"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    (model_dir / "pytorch_model.bin").write_bytes(b"not loaded")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data:\n  train: {chat_files['train']}\nmodel:\n  name: {model_dir}\n"
                      f"output:\n  dir: {tmp_path}/runs\n")
    assert_clean_error(tunesmith("train", str(recipe), cwd=tmp_path), "never loads pickle")


def test_eval_before_train(tmp_path, chat_files, tiny_model_dir):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data:\n  train: {chat_files['train']}\n  test: {chat_files['test']}\n"
                      f"model:\n  name: {tiny_model_dir}\noutput:\n  dir: {tmp_path}/runs\n")
    assert tunesmith("data", "prepare", str(recipe), cwd=tmp_path).returncode == 0
    assert_clean_error(tunesmith("eval", str(recipe), cwd=tmp_path), "no trained model",
                       "tunesmith train RECIPE")


def test_usage_mistakes_are_click_messages_not_internal_errors(capsys):
    """typer vendors its own click: its usage errors must not fall through to 'internal error'."""
    import pytest

    from tunesmith.cli import main

    for argv, expected in ((["train"], "Missing argument 'recipe'"), (["bogus"], "No such command 'bogus'"),
                           (["tune", "r.yaml", "--trials", "0"], "Invalid value for '--trials'")):
        with pytest.raises(SystemExit) as done:
            main(argv)
        err = capsys.readouterr().err
        assert done.value.code == 2 and expected in err, err
        assert "internal error" not in err and "Traceback" not in err


# --- the README's error examples are what the commands print ---------------------------------

def _readme_errors() -> list[str]:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### Errors, interrupts"):]
    block = section[section.index("```\n") + 4:section.index("\n```", section.index("```\n") + 4)]
    return [line for line in block.splitlines() if line.startswith("error: ")]


def _readme_project(root, tiny_model_dir):
    """The README's project (/home/me/project): a good training file, a recipe, one of each mistake."""
    (root / "data").mkdir(parents=True)
    (root / "recipes").mkdir()
    (root / "models").mkdir()  # models/mine is then a local path, not a hub id
    good = [{"instruction": f"question {i} about the product", "output": f"answer {i}"} for i in range(16)]
    write_jsonl(root / "data" / "good.jsonl", good)
    rows = [json.dumps(r) for r in good] + ['{"instruction": "' + "a" * 22 + '" "output": "x"}']
    (root / "data" / "train.jsonl").write_text("\n".join(rows) + "\n")
    export = [json.dumps(r) for r in good[:2]] + ['{"output": "Caf\u00e9 au lait", "instruction": "what?"}']
    (root / "data" / "export.jsonl").write_bytes(("\n".join(export) + "\n").encode("cp1252"))
    chat = {"messages": [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello"}]}
    write_jsonl(root / "data" / "chats.jsonl", [chat])
    (root / "recipes" / "my.yaml").write_text("train:\n  lr: 1.0e-4\n  batch_size: 2\n  lr: 3.0e-4\nmodel:\n"
                                              f"  name: {tiny_model_dir}\n")
    (root / "r.yaml").write_text(f"model:\n  name: {tiny_model_dir}\ndata:\n  train: data/good.jsonl\n")


README_COMMANDS = {
    "data/train.jsonl:17": ["data", "prepare", "r.yaml", "data.train=data/train.jsonl"],
    "override train.lrr=1": ["train", "r.yaml", "train.lrr=1"],
    "recipes/my.yaml:4:3": ["train", "recipes/my.yaml"],
    "data/export.jsonl:3": ["data", "prepare", "r.yaml", "data.train=data/export.jsonl"],
    "model.name models/mine": ["train", "r.yaml", "model.name=models/mine"],
    "data.eval_sets.ood": ["data", "prepare", "r.yaml", "data.eval_sets.ood=data/other.jsonl"],
    "data/chats.jsonl:1": ["data", "prepare", "r.yaml", "data.train=data/chats.jsonl", "data.format=alpaca"],
    "override train.epochs=.inf": ["train", "r.yaml", "train.epochs=.inf"],
    "--train.lr": ["train", "r.yaml", "--train.lr=1"],
}
"""The command behind each README example, by how the example starts; the one about a run's
artifacts made with other recipe values needs a trained run (tests/test_rundir.py has it)."""


def test_the_readme_error_examples_are_what_users_see(tmp_path, tiny_model_dir):
    project = tmp_path / "home" / "me" / "project"
    _readme_project(project, tiny_model_dir)
    checked = 0
    for line in _readme_errors():
        key = next((k for k in README_COMMANDS if line.startswith(f"error: {k}")), None)
        if key is None:
            assert "artifacts were made with other recipe values" in line, f"no command for {line!r}"
            continue
        result = tunesmith(*README_COMMANDS[key], cwd=project)
        assert_clean_error(result)
        printed = [" ".join(out.split()) for out in result.stderr.split("\n") if out.startswith("error: ")]
        assert printed == [line.replace("/home/me/project", str(project))], (line, result.stderr)
        checked += 1
    assert checked == len(README_COMMANDS)
