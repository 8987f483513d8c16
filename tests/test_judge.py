"""eval.judge: a judge served on loopback grades the answers of a tiny run, compares base and
fine-tuned in both orders (its position bias measured and cancelled), and is measured against
three hand-made review labels in `tunesmith report`. Every number is worked out by hand below."""

import subprocess
import sys

import pytest

from conftest import write_jsonl
from serve_helpers import running
from tunesmith import evaluate, pipeline
from tunesmith.errors import ConfigError
from tunesmith.evaluate import judge
from tunesmith.recipe import load_recipe
from tunesmith.rundir import open_run

REFERENCES = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]
TUNED = ["alpha", "bravo", "charlie", "delta", "wrong", "wrong"]  # right on 0-3
BASE = ["alpha", "nope", "nope", "nope", "nope", "nope"]  # right on 0


def judge_app():
    """A rule-following judge: grade 5 for the reference, else 2; of two answers the one equal to
    the reference, and on a tie (both right or both wrong) always A: a judge biased to position."""
    from fastapi import FastAPI

    app = FastAPI()
    app.state.asked = 0

    @app.post("/v1/chat/completions")
    async def chat(body: dict):
        app.state.asked += 1
        text = body["messages"][-1]["content"]
        reference = text.split("REFERENCE:\n")[1].split("\n\n")[0]
        if "ANSWER A:" in text:
            first = text.split("ANSWER A:\n")[1].split("\n\n")[0]
            second = text.split("ANSWER B:\n")[1].split("\n\n")[0]
            reply = "B" if second == reference and first != reference else "A"
        else:
            reply = "Grade: 5" if text.split("ANSWER:\n")[1].split("\n\n")[0] == reference else "2"
        return {"id": "j", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": len(text.split()), "completion_tokens": 1,
                          "total_tokens": len(text.split()) + 1}}

    return app


class Scripted:
    """The fine-tuned model's answers (TUNED) or the base model's (BASE), by the label evaluation
    gives each generation."""

    def __init__(self, model, tokenizer):
        pass

    def generate(self, prompts, label):
        answers = TUNED if "fine-tuned" in label else BASE
        return [answers[REFERENCES.index(p[-1]["content"].split()[-1])] for p in prompts]


@pytest.fixture(scope="module")
def judged(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("judge")
    train = [{"instruction": f"say {w} {i}", "output": w} for i in range(4) for w in REFERENCES]
    test = [{"instruction": f"please say {w}", "output": w} for w in REFERENCES]
    app = judge_app()
    with running(app) as url:
        recipe = load_recipe(None, [
            f"model.name={tiny_model_dir}", f"data.train={write_jsonl(tmp / 'train.jsonl', train)}",
            f"data.test={write_jsonl(tmp / 'test.jsonl', test)}", f"output.dir={tmp / 'runs'}", "name=judged",
            "train.max_steps=2", "train.batch_size=4", "eval.max_new_tokens=4", "eval.forgetting_probe=false",
            "eval.bias.enabled=false", "data.val_fraction=0.2", "data.dedup.near=false",
            "data.leakage.action=flag", f"eval.judge.url={url}/v1", "eval.judge.min_kappa=0.5"])
        pipeline.fine_tune(recipe)
        run_dir = open_run(recipe)
        result = evaluate.run(recipe, run_dir, generator_factory=Scripted)
    return recipe, run_dir, result.summary, app.state.asked


def test_judge_grades_and_pairwise_verdicts_match_the_hand_count(judged):
    _, run_dir, summary, asked = judged
    found = summary.judge.sets["test"]
    assert found.examples == 6 and found.unparsed == 0
    assert found.finetuned.value == pytest.approx((4 * 5 + 2 * 2) / 6)  # 4.0
    assert found.base.value == pytest.approx((5 + 5 * 2) / 6)  # 2.5
    assert found.finetuned_pass.value == pytest.approx(4 / 6)
    assert found.base_pass.value == pytest.approx(1 / 6)
    assert found.paired.delta == pytest.approx(1.5)
    # pairwise: example 0 both right and 4-5 both wrong: the judge says A in both orders, a flip
    # that counts half; 1-3 the fine-tuned answer wins in both orders
    assert found.win_rate.value == pytest.approx((0.5 + 1 + 1 + 1 + 0.5 + 0.5) / 6)  # 0.75
    # verdicts to the first answer: 2 per tie (3 ties), 1 per clear win (3): 9 of 12
    assert found.position_bias == pytest.approx(9 / 12)
    assert summary.judge.requests == asked == 6 * 4  # two grades and two verdicts per example
    assert summary.judge.completion_tokens == 24 and summary.judge.prompt_tokens > 0
    grades = [line for line in run_dir.judge_grades.read_text().splitlines() if line]
    assert len(grades) == 6


def test_report_shows_the_judge_and_its_kappa_against_three_review_labels(judged):
    from tunesmith.report.review import open_store
    from tunesmith.report.sources import read_run

    _, run_dir, _, _ = judged
    store = open_store(read_run(run_dir), create=True)
    # the person: test:0 correct (judge: pass), test:1 wrong (judge: pass), test:4 wrong (judge: fail)
    for item, label in (("test:0", "correct"), ("test:1", "wrong"), ("test:4", "wrong")):
        store.add_review(item, "judged", "prompt", "answer", label)
    store.close()
    done = subprocess.run([sys.executable, "-m", "tunesmith", "report", str(run_dir.root)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    # agreement 2 of 3; kappa = (2/3 - 4/9) / (1 - 4/9) = 0.4, below min_kappa 0.5
    assert "agrees with the person on 3 answers: 67% (Cohen's kappa 0.40" in done.stdout
    assert "NOT to be trusted on this task" in done.stdout
    assert "fine-tuned preferred 75.0%" in done.stdout and "75% of verdicts went to the answer shown first" \
        in done.stdout
    card = run_dir.card.read_text()
    assert "### LLM judge" in card and "Cohen's kappa 0.40" in card and "24 requests" in card
    assert "kappa 0.40" in run_dir.report_html.read_text() and "LLM judge" in run_dir.report_html.read_text()


def test_judge_replies_are_parsed_or_counted_and_an_absent_judge_is_a_clear_error():
    assert judge.parse_grade("Grade: 4/5", 5) == 4 and judge.parse_grade("7", 5) is None
    assert judge.parse_verdict("Answer B.") == "B" and judge.parse_verdict("a") == "A"
    assert judge.parse_verdict("neither") is None
    overrides = ["eval.judge.url=http://127.0.0.1:9/v1", "eval.judge.timeout_seconds=2"]
    cfg = load_recipe(None, overrides).eval.judge
    refused = "eval.judge.url http://127.0.0.1:9/v1: nothing listens at that host and port"
    with pytest.raises(ConfigError, match=refused):
        judge.JudgeClient(cfg).ask("hello")
