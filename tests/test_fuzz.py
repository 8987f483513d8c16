"""The error contract, fuzzed: every case of fuzz_cases.py against a copy of a complete run.

Each case must end with its exit code (2, or 130 for a signal), exactly one `error:` (or
`interrupted:`) line that holds every expected piece (where and the fix), no traceback, and
the run directory byte for byte as it was (every file's sha256; `.work/`, the resumable
checkpoints an interrupted training keeps, and the `.lock` file are not part of a run).
Cases run in-process through `tunesmith.cli.main`, signals in a subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_jsonl
from fuzz_cases import Case, Workspace, cases

NOT_THE_RUN = (".work", ".lock")


@pytest.fixture(scope="session")
def base_template(tmp_path_factory, tiny_model_dir) -> tuple[Path, dict]:
    """A trained and evaluated tiny run (runs/base) and its recipe, built once."""
    from tunesmith.cli import main

    root = tmp_path_factory.mktemp("fuzz-base")
    colours = ["red", "blue", "green", "black", "white", "pink"]
    train = write_jsonl(root / "train.jsonl", [{"instruction": f"code for {c} #{i}", "output": c[:2].upper()}
                                              for i in range(8) for c in colours])
    test = write_jsonl(root / "test.jsonl", [{"instruction": f"code for {c} now", "output": c[:2].upper()}
                                             for c in colours])
    recipe = {"name": "base", "data": {"train": str(train), "test": str(test), "val_fraction": 0.25},
              "model": {"name": str(tiny_model_dir)},
              "train": {"lr": 0.01, "batch_size": 4, "max_steps": 2, "save_steps": 1000},
              "eval": {"max_new_tokens": 2, "forgetting_probe": False, "bias": {"enabled": False}},
              "output": {"dir": str(root / "runs")}}
    (root / "r.yaml").write_text(json.dumps(recipe))
    for command in (["train"], ["eval"]):
        with pytest.raises(SystemExit) as done:
            main([*command, str(root / "r.yaml")])
        assert done.value.code == 0
    return root, recipe


def snapshot(runs: Path) -> dict[str, str]:
    """sha256 of every file of every run under runs/ (what a failed command must not touch)."""
    if not runs.exists():
        return {}
    return {str(p.relative_to(runs)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(runs.rglob("*")) if p.is_file()
            and not any(part in NOT_THE_RUN for part in p.relative_to(runs).parts)}


def _workspace(tmp_path: Path, template: tuple[Path, dict], tiny_model_dir: Path) -> Workspace:
    root, recipe = template
    shutil.copytree(root / "runs", tmp_path / "runs", symlinks=True)
    return Workspace(tmp_path, tiny_model_dir, {**recipe, "output": {"dir": str(tmp_path / "runs")}})


NOT_OURS = ("Input should be", "Value error,", ".staging/", "pydantic", "Traceback")
"""Library text and internal paths: never in an error line."""
LIBRARY_NAMES = re.compile(r"\b[A-Z]\w*(Config|Spec|Error|Exception)\b")
"""A pydantic model's or an exception's class name (TrainConfig, JSONDecodeError ...)."""


def _one_line(stderr: str, label: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith(f"{label}:")]
    assert len(lines) == 1, f"expected one '{label}:' line, got:\n{stderr[-3000:]}"
    return lines[0]


ALL = cases()


def test_the_suite_is_large_enough():
    assert len(ALL) >= 60 and len({c.family for c in ALL}) == 8


@pytest.mark.parametrize("case", [c for c in ALL if c.signal is None], ids=lambda c: f"{c.family}:{c.id}")
def test_bad_input_gets_one_located_line_and_changes_nothing(case: Case, tmp_path, base_template,
                                                              tiny_model_dir, capsys, monkeypatch):
    from tunesmith.cli import main

    workspace = _workspace(tmp_path, base_template, tiny_model_dir)
    monkeypatch.chdir(tmp_path)
    for name, value in case.env.items():
        if value:
            monkeypatch.setenv(name, value)
        else:
            monkeypatch.delenv(name, raising=False)
    argv = case.argv(workspace)
    before = snapshot(workspace.dir / "runs")
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(argv)
    out, err = capsys.readouterr()
    assert done.value.code == case.code, f"{argv}\n{err[-3000:]}"
    assert "Traceback" not in out + err
    line = _one_line(err, "error")
    for piece in case.expect(workspace):
        assert piece in line, f"{piece!r} not in {line!r}"
    for piece in (*case.absent, *NOT_OURS):
        assert piece not in line, f"{piece!r} in {line!r}"
    assert case.user_exception or not LIBRARY_NAMES.search(line), f"a library's class name in {line!r}"
    assert "s3cret" not in out + err, "a password in a URL is never printed"
    assert snapshot(workspace.dir / "runs") == before, "the failed command changed a run"
    assert not list((workspace.dir / "runs").glob("*/.staging")), "staging left behind"


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in ALL if c.signal], ids=lambda c: c.id)
def test_a_signal_leaves_the_run_as_it_was(case: Case, tmp_path, base_template, tiny_model_dir):
    workspace = _workspace(tmp_path, base_template, tiny_model_dir)
    argv = case.argv(workspace)
    before = snapshot(workspace.dir / "runs")
    # as from a terminal: a shell's background job (CI) would start with SIGINT ignored
    process = subprocess.Popen([sys.executable, "-m", "tunesmith", *argv], cwd=tmp_path, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    started = workspace.run / case.begun
    deadline = time.time() + 120
    while not started.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    time.sleep(1.0)  # well inside the work: training steps, or preparing 20,000 rows
    assert process.poll() is None, process.communicate()[1][-3000:]
    process.send_signal(getattr(signal, case.signal))
    out, err = process.communicate(timeout=120)
    assert process.returncode == case.code, (out[-2000:], err[-3000:])
    assert "Traceback" not in out + err
    line = _one_line(err, "interrupted")
    for piece in case.expect(workspace):
        assert piece in line
    assert snapshot(workspace.dir / "runs") == before
    assert not list((workspace.dir / "runs").glob("*/.staging"))


def test_debug_shows_the_traceback_of_an_internal_error(monkeypatch, capsys, tmp_path):
    """A bug is one line naming a bug report (exit 3); --debug adds the traceback."""
    from tunesmith import cli

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("tunesmith.pipeline.prepare", broken)
    monkeypatch.delenv("TUNESMITH_DEBUG", raising=False)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\n")
    for argv, traceback_shown in ((["data", "prepare", str(recipe)], False),
                                  (["--debug", "data", "prepare", str(recipe)], True)):
        with pytest.raises(SystemExit) as done:
            cli.main(argv)
        err = capsys.readouterr().err
        assert done.value.code == 3
        line = _one_line(err, "internal error")
        assert "RuntimeError: boom" in line and "--debug" in line
        assert ("Traceback" in err) is traceback_shown
    os.environ.pop("TUNESMITH_DEBUG", None)
