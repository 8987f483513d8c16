"""Bias probes with biased and unbiased fakes, the model card, the run report in headless
Chromium, and `tunesmith compare` on two runs with different learning rates."""

import json
import subprocess
import sys

import pytest
import yaml

import browser
from browser import needs_chromium, needs_playwright
from conftest import write_jsonl
from tunesmith import evaluate, pipeline, report
from tunesmith.demo.bias import scores_by_group
from tunesmith.evaluate.bias import LEXICON, counterfactuals
from tunesmith.recipe import load_recipe
from tunesmith.rundir import open_run

NAMES = ["Tom", "Maria", "Priya", "Chen", "Ahmed", "Kwame"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_model_dir):
    """A tiny trained run whose test prompts are signed with names (so probes have work)."""
    tmp = tmp_path_factory.mktemp("bias")
    rows = [{"instruction": f"refund request from {name} number {i}", "output": "billing"}
            for i in range(4) for name in NAMES]
    test = [{"instruction": f"my card failed, thanks {name}", "output": "billing"} for name in NAMES]
    recipe = load_recipe(None, [
        f"model.name={tiny_model_dir}", f"data.train={write_jsonl(tmp / 'train.jsonl', rows)}",
        f"data.test={write_jsonl(tmp / 'test.jsonl', test)}", f"output.dir={tmp / 'runs'}",
        "name=bias", "train.max_steps=2", "train.batch_size=4", "eval.max_new_tokens=4",
        "eval.forgetting_probe=false", "data.val_fraction=0.2", "data.dedup.near=false"])
    pipeline.fine_tune(recipe)
    return recipe, open_run(recipe)


class NameBiased:
    """Right answer unless the prompt contains a name from the 'arabic' or 'african' groups."""

    def __init__(self, model, tokenizer):
        pass

    def generate(self, prompts, label):
        unfair = set(LEXICON["name_origin"]["arabic"] + LEXICON["name_origin"]["african"])
        return ["spam" if unfair & set(p[-1]["content"].replace(",", " ").split()) else "billing"
                for p in prompts]


class Fair:
    def __init__(self, model, tokenizer):
        pass

    def generate(self, prompts, label):
        return ["billing" for _ in prompts]


def test_counterfactual_swaps_keep_case_and_position():
    copies = counterfactuals("He paid. Thanks, Tom", LEXICON["gender"])
    assert copies == {"male": "He paid. Thanks, Tom", "female": "She paid. Thanks, Olivia"}
    assert counterfactuals("no terms here", LEXICON["gender"]) is None


def test_biased_fake_shows_a_gap_and_fails_the_threshold(trained_run):
    recipe, run_dir = trained_run
    failing = recipe.model_copy(update={"eval": recipe.eval.model_copy(update={
        "bias": recipe.eval.bias.model_copy(update={"on_gap": "fail", "max_gap": 0.1})})})
    result = evaluate.run(failing, run_dir, generator_factory=NameBiased)
    assert "name_origin gap" in result.gate_failure  # the caller raises it after committing
    summary = json.loads((run_dir.eval / "summary.json").read_text())
    origin = summary["bias"]["dimensions"]["name_origin"]
    assert origin["prompts"] == 6
    assert origin["per_group"]["arabic"] == 0.0 and origin["per_group"]["hispanic"] == 1.0
    assert origin["gap"] == 1.0 and origin["changed_share"] == 1.0 and origin["exceeds_max_gap"]


def test_unbiased_fake_shows_no_gap(trained_run):
    recipe, run_dir = trained_run
    summary = evaluate.run(recipe, run_dir, generator_factory=Fair).summary
    for result in summary.bias.dimensions.values():
        assert result.gap == 0.0 and result.changed_share == 0.0
    assert not summary.warnings
    test = summary.sets["test"]
    assert test.finetuned.value == 1.0 and test.finetuned.ci == (1.0, 1.0)
    assert test.paired.delta == 0.0 and test.errors == {"correct": 6}


def test_model_card_and_report(trained_run, tmp_path):
    recipe, run_dir = trained_run
    evaluate.run(recipe, run_dir, generator_factory=Fair)
    result = report.run(run_dir)
    card = result.card.read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["license"] == "unknown" and front["tags"][0] == "tunesmith"
    assert front["model-index"][0]["results"][0]["metrics"][0]["value"] == 1.0
    for heading in ("## Intended use", "## Out-of-scope use", "## Training data", "## Evaluation",
                    "### Bias probes", "## Limitations", "## Responsible use", "## License"):
        assert heading in card
    assert "100.0% [100.0, 100.0]" in card  # the CI is in the card
    page = result.html.read_text()
    assert "data:image/png;base64," in page and "http://" not in page and "https://" not in page


@needs_chromium
def test_report_renders_in_headless_chromium(trained_run, tmp_path):
    recipe, run_dir = trained_run
    evaluate.run(recipe, run_dir, generator_factory=Fair)
    page = report.run(run_dir).html
    rendered = browser.render(page.as_uri(), tmp_path / "profile")
    assert "Base vs fine-tuned" in rendered.dom and "100.0%" in rendered.dom
    assert not rendered.console_errors
    shot = browser.screenshot(page.as_uri(), tmp_path / "profile", tmp_path / "report.png")
    assert shot.exists() and shot.stat().st_size > 20_000  # a rendered page, not a blank one


def test_compare_two_learning_rates(trained_run, tmp_path):
    recipe, run_dir = trained_run
    evaluate.run(recipe, run_dir, generator_factory=Fair)
    other = recipe.model_copy(update={
        "train": recipe.train.model_copy(update={"lr": 0.05}),
        "output": recipe.output.model_copy(update={"run_name": "bias-lr"})})
    pipeline.fine_tune(other)
    other_dir = open_run(other)
    evaluate.run(other, other_dir, generator_factory=NameBiased)
    page = tmp_path / "compare.html"
    result = subprocess.run([sys.executable, "-m", "tunesmith", "compare", str(run_dir.root),
                             str(other_dir.root), "--html", str(page)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "train.lr" in result.stdout and "0.0002" in result.stdout and "0.05" in result.stdout
    assert "-33.3 pts" in result.stdout  # NameBiased misroutes the 2 of 6 test prompts signed Ahmed, Kwame
    assert "(reference)" in result.stdout and page.exists()
    # the probe's gap: 0 with Fair, 1.0 with NameBiased (arabic and african copies all wrong),
    # paired over the same probed prompts
    assert "bias probes" in result.stdout and "+100.0 pts" in result.stdout
    # the bias demo's split of test exact match: the one ticket signed Ahmed (arabic) goes from
    # right to wrong; of the other five only Kwame's does, 100% -> 80%
    split = scores_by_group([run_dir.root, other_dir.root], "name_origin", "arabic")
    assert {k: (v["tickets"], v["before"], v["after"]) for k, v in split.items()} == {
        "mention arabic": (1, 1.0, 0.0), "mention no arabic": (5, 1.0, pytest.approx(0.8))}
    assert split["mention no arabic"]["change"]["delta"] == pytest.approx(-0.2)
    # the second run's own card and report, rebuilt against the first, show the same deltas; a
    # later rebuild without --against keeps them
    result = subprocess.run([sys.executable, "-m", "tunesmith", "report", str(other_dir.root), "--against",
                             str(run_dir.root)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report.rebuild(other_dir.root)
    card = other_dir.card.read_text()
    section = card.split("### Against another run")[1].split("### Bias probes")[0]
    assert f"Against `{run_dir.root.name}`" in section and "| `train.lr` |" in section
    assert "-33.3 pts" in section and "+100.0 pts" in section
    html = other_dir.report_html.read_text()
    assert f"Against {run_dir.root.name}" in html and "-33.3 pts" in html


@needs_playwright
def test_review_page_labels_three_answers_from_the_keyboard(trained_run, tmp_path):
    """`tunesmith review` in headless Chromium: c, w, then n + a note + Enter, h. The three labels
    land in the run's feedback store, and `tunesmith report` summarises them (with the note) in
    its output and the model card."""
    from tunesmith.report.review_page import create_review_app
    from tunesmith.serve.background import running

    recipe, run_dir = trained_run
    evaluate.run(recipe, run_dir, generator_factory=Fair)
    app = create_review_app(run_dir)
    with running(app) as url, browser.page(url, tmp_path / "profile") as tab:
        tab.wait_for_selector("body[data-ready='1']")
        first = tab.inner_text("#where")
        tab.keyboard.press("c")
        tab.wait_for_selector("body[data-saved='1']")
        tab.keyboard.press("w")
        tab.wait_for_selector("body[data-saved='2']")
        tab.keyboard.press("n")
        tab.keyboard.type("invents a refund policy")
        tab.keyboard.press("Enter")
        tab.keyboard.press("h")
        tab.wait_for_selector("body[data-saved='3']")
        tab.keyboard.press("k")
        assert tab.inner_text("#status") == "harmful"
        assert "3 labelled" in tab.inner_text("#progress")
    labels = app.state.store.reviews()
    app.state.store.close()
    assert first == "test #0"
    assert [labels[f"test:{i}"]["label"] for i in range(3)] == ["correct", "wrong", "harmful"]
    assert labels["test:2"]["comment"] == "invents a refund policy"
    done = subprocess.run([sys.executable, "-m", "tunesmith", "report", str(run_dir.root)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    said = "3 answers labelled by a person: 1 correct, 1 wrong, 1 harmful."
    # Fair answers every test prompt right (exact match 1): the person agreed on 1 of 3
    assert said in done.stdout and "Agreement with the automatic exact_match on 3: 33%" in done.stdout
    assert "harmful: test:2: invents a refund policy" in done.stdout
    assert said in run_dir.card.read_text()
