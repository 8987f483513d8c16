"""`tunesmith curve`: nested shares of the training split, the saturating power law fitted and
forecast on points whose law is known, and the command end to end on the tiny model."""

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from conftest import write_jsonl
from tunesmith.artifacts import CurvePoint, CurveSummary, load
from tunesmith.data.split import nested_share
from tunesmith.evaluate.curve import forecast, law

TEST_EXAMPLES = 400


def _points(values: dict[int, float]) -> list[CurvePoint]:
    """Points whose test scores (0/1 per example) have exactly the given means."""
    out = []
    for size, value in values.items():
        right = round(value * TEST_EXAMPLES)
        scores = [1.0] * right + [0.0] * (TEST_EXAMPLES - right)
        out.append(CurvePoint(fraction=size / max(values), seed=0, train_examples=size,
                              value=right / TEST_EXAMPLES, ci_low=0, ci_high=1, run=f"r{size}",
                              scores=scores))
    return out


def test_nested_shares_are_inside_each_other_and_keep_the_order():
    rows = [{"i": i} for i in range(40)]
    quarter, half = nested_share(rows, 0.25, 42), nested_share(rows, 0.5, 42)
    assert len(quarter) == 10 and len(half) == 20 and nested_share(rows, 1.0, 42) == rows
    assert all(r in half for r in quarter)
    assert [r["i"] for r in half] == sorted(r["i"] for r in half)
    assert nested_share(rows, 0.25, 42) == quarter  # seeded: the same share every time


def test_a_known_law_is_recovered_and_forecast():
    # 0.9 - 0.3 * x^-0.5 at x = 1/8, 1/4, 1/2, 1: 0.051, 0.300, 0.476, 0.600; at 2x 0.688, 10x 0.805
    sizes = [50, 100, 200, 400]
    points = _points({n: float(law(np.asarray(n / 400), 0.9, 0.3, 0.5)) for n in sizes})
    summary = forecast(points, "exact_match")
    assert summary.fit.ceiling == pytest.approx(0.9, abs=0.02)
    assert summary.fit.exponent == pytest.approx(0.5, abs=0.05)
    two, ten = summary.forecasts
    assert (two.train_examples, ten.train_examples) == (800, 4000)
    assert two.value == pytest.approx(0.9 - 0.3 / 2 ** 0.5, abs=0.01)
    assert ten.value == pytest.approx(0.9 - 0.3 / 10 ** 0.5, abs=0.01)
    assert two.ci_low <= two.value <= two.ci_high and ten.ci_high - ten.ci_low > 0
    assert ten.gain == pytest.approx(ten.value - 0.6, abs=0.005)
    assert summary.flattened is False and "10x (4000)" in summary.verdict


def test_a_flat_curve_is_called_flattened():
    summary = forecast(_points({50: 0.70, 100: 0.70, 200: 0.70, 400: 0.70}), "exact_match")
    assert summary.flattened is True and "flattened" in summary.verdict
    assert abs(summary.forecasts[-1].gain) < 0.01


def test_curve_refuses_what_it_cannot_score_before_training():
    from tunesmith.curve import check
    from tunesmith.errors import ConfigError
    from tunesmith.recipe import load_recipe

    with pytest.raises(ConfigError, match="give data.test"):
        check(load_recipe(None, ["data.train=x.jsonl"]), [0.5, 1.0], 1)
    with pytest.raises(ConfigError, match="set one"):
        check(load_recipe(None, ["data.test=t.jsonl", "eval.metric=none"]), [1.0], 1)
    with pytest.raises(ConfigError, match="--seeds"):
        check(load_recipe(None, ["data.test=t.jsonl"]), [1.0], 0)


def test_two_sizes_are_no_curve():
    summary = forecast(_points({100: 0.5, 200: 0.6}), "exact_match")
    assert summary.fit is None and not summary.forecasts and "Fewer than 3" in summary.verdict


def test_curve_command_end_to_end(tmp_path, tiny_model_dir):
    colours = ["red", "blue", "green", "black", "white", "pink"]
    train = [{"instruction": f"code for {c} #{i}", "output": c[:2].upper()}
             for i in range(8) for c in colours]
    test = [{"instruction": f"code for {c} now", "output": c[:2].upper()} for c in colours]
    recipe = {"name": "colours", "model": {"name": str(tiny_model_dir)},
              "data": {"train": str(write_jsonl(tmp_path / "train.jsonl", train)),
                       "test": str(write_jsonl(tmp_path / "test.jsonl", test)), "val_fraction": 0.1,
                       "dedup": {"near": False}},
              "train": {"max_steps": 2, "batch_size": 4}, "eval": {"max_new_tokens": 3},
              "output": {"dir": str(tmp_path / "runs")}}
    (tmp_path / "colours.yaml").write_text(yaml.safe_dump(recipe))
    args = [str(tmp_path / "colours.yaml")]
    done = subprocess.run([sys.executable, "-m", "tunesmith", "curve", "--fractions", "0.25,0.5,1", *args],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "learning curve: fine-tuned exact_match on test (6 examples" in done.stdout
    full = tmp_path / "runs" / "colours-curve-1-s42"
    summary = load(CurveSummary, full / "eval" / "curve.json")
    sizes = [p.train_examples for p in summary.points]
    assert sizes == sorted(sizes) and sizes[-1] == json.loads((full / "data" / "report.json").read_text())[
        "splits"]["train"]
    assert sizes[0] == round(0.25 * sizes[-1]) or abs(sizes[0] - 0.25 * sizes[-1]) <= 1
    assert summary.verdict and summary.verdict in done.stdout.replace("\n", " ")
    assert "Learning curve (tunesmith curve)" in (full / "report.html").read_text()
    bad = subprocess.run([sys.executable, "-m", "tunesmith", "curve", "--fractions", "0,2", *args],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "give shares of the training split in (0, 1]" in bad.stderr
