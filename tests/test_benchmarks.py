"""eval.benchmarks: a local lm-evaluation-harness task (the demo tickets as multiple choice) on the
base and the fine-tuned tiny model, paired per item, checked against log-likelihoods computed by
hand; the card's model-index; and `tunesmith serve` as the harness's local-completions backend,
item for item the same log-likelihoods as the harness's own HF backend."""

import os
import shutil
from pathlib import Path

import pytest
import yaml

from tunesmith import evaluate, pipeline
from tunesmith.demo import tickets
from tunesmith.errors import ConfigError
from tunesmith.evaluate import benchmarks
from tunesmith.recipe import load_recipe
from tunesmith.rundir import open_run

TASK = Path(__file__).resolve().parents[1] / "recipes" / "tasks" / "tickets_category.yaml"
CATEGORIES = ["billing", "technical", "account", "feature_request", "security"]
LIMIT = 12


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir):
    """A project laid out as the README has it (data/demo, the shipped task file), with a tiny
    run trained on a slice of the tickets and evaluated with the task as a benchmark."""
    root = tmp_path_factory.mktemp("bench")
    tickets.write(root / "data" / "demo")
    shutil.copy(TASK, root / "tickets_category.yaml")
    train = (root / "data" / "demo" / "train.jsonl").read_text().splitlines()
    (root / "train.jsonl").write_text("\n".join(line for line in train[:60]) + "\n")
    recipe = load_recipe(None, [
        f"model.name={tiny_model_dir}", f"data.train={root / 'train.jsonl'}",
        f"data.test={root / 'data' / 'demo' / 'test.jsonl'}", "data.on_invalid=skip",
        f"output.dir={root / 'runs'}",
        "name=bench", "train.max_steps=12", "train.batch_size=4", "train.lr=5e-3", "eval.max_new_tokens=2",
        "eval.max_examples=4", "eval.bias.enabled=false", "data.val_fraction=0.1", "data.dedup.near=false",
        "eval.benchmarks.tasks=[tickets_category.yaml]", f"eval.benchmarks.limit={LIMIT}",
        "eval.benchmarks.batch_size=4"])
    cwd = Path.cwd()
    try:
        os.chdir(root)  # the task file's data path is relative to the project, as a user runs it
        pipeline.fine_tune(recipe)
        run_dir = open_run(recipe)
        evaluate.run(recipe, run_dir)
    finally:
        os.chdir(cwd)
    return root, recipe, run_dir


def _by_hand(model, tokenizer, docs) -> list[float]:
    """acc of each doc: the category whose tokens after the prompt have the highest summed
    log-probability is the answer (what a multiple-choice task scores)."""
    import torch

    right = []
    for doc in docs:
        context = f"Support ticket: {doc['messages'][0]['content']}\nCategory:"
        target = CATEGORIES.index(yaml.safe_load(doc["messages"][-1]["content"])["category"])
        start = len(tokenizer(context, add_special_tokens=False)["input_ids"])
        totals = []
        for choice in CATEGORIES:
            ids = tokenizer(context + " " + choice, add_special_tokens=False)["input_ids"]
            with torch.inference_mode():
                scores = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
            totals.append(sum(float(scores[i - 1, ids[i]]) for i in range(start, len(ids))))
        right.append(float(max(range(len(totals)), key=totals.__getitem__) == target))
    return right


def test_local_benchmark_pairs_base_and_finetuned_item_by_item(project):
    import json

    from tunesmith.artifacts import EvalSummary, load
    from tunesmith.models.loading import load_run_model

    root, recipe, run_dir = project
    summary = load(EvalSummary, run_dir.eval_summary)
    result = summary.benchmarks.tasks["tickets_category"]
    assert summary.benchmarks.harness.startswith("lm-evaluation-harness 0.4")
    assert result.metric == "acc" and result.examples == LIMIT and result.num_fewshot == 0
    assert result.items == [f"tickets_category:{i}" for i in range(LIMIT)]
    docs = [json.loads(line) for line in (root / "data" / "demo" / "test.jsonl").read_text().splitlines()
            if line.strip()][:LIMIT]
    run_model = load_run_model(recipe.model, recipe.train.method, run_dir.model)
    assert result.scores["finetuned"] == _by_hand(run_model.model, run_model.tokenizer, docs)
    with run_model.as_base() as base:
        assert result.scores["base"] == _by_hand(base, run_model.tokenizer, docs)
    tuned, base_scores = result.scores["finetuned"], result.scores["base"]
    assert result.finetuned.value == pytest.approx(sum(tuned) / LIMIT)
    assert result.finetuned.ci_low <= result.finetuned.value <= result.finetuned.ci_high
    assert result.paired.delta == pytest.approx((sum(tuned) - sum(base_scores)) / LIMIT)
    pairs = list(zip(tuned, base_scores, strict=True))
    assert result.paired.mcnemar.tuned_only_right == sum(t > b for t, b in pairs)
    assert result.paired.mcnemar.base_only_right == sum(b > t for t, b in pairs)
    # forgetting is measured on the benchmark's items, in place of the bundled probe
    assert summary.forgetting.source == "benchmarks" and summary.forgetting.tasks == ["tickets_category"]
    assert summary.forgetting.examples == LIMIT


def test_card_carries_the_benchmark_in_its_model_index(project):
    from tunesmith import report

    _, recipe, run_dir = project
    card = report.rebuild(run_dir.root).card.read_text()
    front = yaml.safe_load(card.split("---")[1])
    entries = {r["dataset"]["name"]: r for r in front["model-index"][0]["results"]}
    metric = entries["tickets_category"]["metrics"][0]
    assert metric["type"] == "acc" and 0.0 <= metric["value"] <= 1.0
    assert "lm-evaluation-harness" in entries["tickets_category"]["source"]["name"]
    assert "tickets_category" in card.split("---", 2)[2]  # and in the card's text
    # compare pairs a benchmark's items across runs like a set's examples
    from tunesmith.report.compare import compare

    entries = compare([run_dir.root, run_dir.root]).sets["benchmark tickets_category"]
    assert entries[1].paired is not None and entries[1].paired.delta == 0.0


def test_unknown_task_and_missing_file_are_located_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such task file"):
        benchmarks.resolve([str(tmp_path / "absent.yaml")])
    (tmp_path / "nameless.yaml").write_text("dataset_path: json\n")
    with pytest.raises(ConfigError, match="names its task"):
        benchmarks.resolve([str(tmp_path / "nameless.yaml")])
    names, folders = benchmarks.resolve([str(TASK)])
    with pytest.raises(ConfigError, match="unknown task 'tickets_categry'.*did you mean tickets_category"):
        benchmarks.task_manager(["tickets_categry"], folders, local_only=True)


def test_served_run_gives_the_harness_the_same_log_likelihoods_as_its_hf_backend(project, monkeypatch):
    """lm-evaluation-harness's local-completions client (token ids, echo, logprobs) against
    `tunesmith serve` of the run, and its HF backend on the same model: the same per-item
    log-likelihoods and greedy flags."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from tunesmith.models.loading import load_run_model
    from tunesmith.serve.app import create_app
    from tunesmith.serve.background import running
    from tunesmith.serve.state import load_served

    root, recipe, run_dir = project
    monkeypatch.chdir(root)
    names, folders = benchmarks.resolve(["tickets_category.yaml"])
    manager = benchmarks.task_manager(names, folders, local_only=True)

    def samples(lm) -> list:
        out = lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=manager, limit=6,
                                      log_samples=True, bootstrap_iters=0)
        rows = sorted(out["samples"]["tickets_category"], key=lambda s: s["doc_id"])
        return [s["filtered_resps"] for s in rows]

    run_model = load_run_model(recipe.model, recipe.train.method, run_dir.model)
    local = samples(HFLM(pretrained=run_model.model, tokenizer=run_model.tokenizer, batch_size=4))
    served = load_served(str(run_dir.root), with_fallback=False)
    with running(create_app(lambda: served)) as url:
        client = LocalCompletionsAPI(base_url=f"{url}/v1/completions", model=served.name,
                                     tokenizer=str(run_dir.model), tokenizer_backend="huggingface",
                                     tokenized_requests=True, max_retries=1, batch_size=3)
        remote = samples(client)
    assert len(local) == len(remote) == 6
    for mine, theirs in zip(remote, local, strict=True):
        assert [g for _, g in mine] == [g for _, g in theirs]
        assert [ll for ll, _ in mine] == pytest.approx([ll for ll, _ in theirs], abs=1e-4)


GENERATE_TASK = """task: tickets_reply
dataset_path: json
dataset_kwargs:
  data_files:
    test: data/demo/test.jsonl
test_split: test
output_type: generate_until
doc_to_text: "{{messages[0].content}}"
doc_to_target: "{{messages[-1].content}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
"""


def test_served_run_answers_the_harness_chat_client(project, monkeypatch):
    """lm-evaluation-harness's local-chat-completions client (generation tasks) against `tunesmith
    serve`: each answer it records is the served model's own greedy answer to the same message."""
    import lm_eval
    from lm_eval.models.openai_completions import LocalChatCompletion

    from tunesmith.models.generation import GenRequest
    from tunesmith.serve.app import create_app
    from tunesmith.serve.background import running
    from tunesmith.serve.state import load_served

    root, _, run_dir = project
    monkeypatch.chdir(root)
    (root / "chat_tasks").mkdir(exist_ok=True)
    (root / "chat_tasks" / "tickets_reply.yaml").write_text(GENERATE_TASK)
    manager = benchmarks.task_manager(["tickets_reply"], [str(root / "chat_tasks")], local_only=True)
    served = load_served(str(run_dir.root), with_fallback=False)
    with running(create_app(lambda: served)) as url:
        client = LocalChatCompletion(base_url=f"{url}/v1/chat/completions", model=served.name,
                                     tokenizer_backend=None, max_retries=1)
        out = lm_eval.simple_evaluate(model=client, tasks=["tickets_reply"], task_manager=manager, limit=3,
                                      log_samples=True, bootstrap_iters=0, apply_chat_template=True)
    samples = sorted(out["samples"]["tickets_reply"], key=lambda s: s["doc_id"])
    assert len(samples) == 3 and any(s["resps"][0][0] for s in samples)  # answers, not empty strings
    for sample in samples:
        messages = [{"role": "user", "content": sample["doc"]["messages"][0]["content"]}]
        own = served.engine.generate([GenRequest(served.engine.render(messages), 6, temperature=0.0,
                                                 stop=["\n"])])[0].text
        assert sample["resps"][0][0] == own.strip()
