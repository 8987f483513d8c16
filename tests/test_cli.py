"""User mistakes end in one located line and exit code 2, never a traceback."""

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
