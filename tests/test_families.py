"""Model families beyond the decoder: an encoder (BERT-style) classifier through data -> train ->
eval -> card -> compare on a tiny BERT built locally, its baselines, and class weights in the loss."""

from __future__ import annotations

import json

import pytest

from conftest import write_jsonl
from tunesmith.recipe import load_recipe

WARM, COLD = ["red", "orange", "yellow"], ["blue", "green", "cyan"]


@pytest.fixture
def colour_files(tmp_path):
    """Classification rows: a colour word is warm or cold (the classes are 2:1, on purpose)."""
    train = [{"text": f"the colour {c} number {i}", "label": "warm"} for i in range(12) for c in WARM]
    train += [{"text": f"the colour {c} number {i}", "label": "cold"} for i in range(6) for c in COLD]
    test = [{"text": f"the colour {c} number {n}", "label": "warm" if c in WARM else "cold"}
            for c in WARM + COLD for n in (40, 41)]
    return write_jsonl(tmp_path / "train.jsonl", train), write_jsonl(tmp_path / "test.jsonl", test)


def _encoder_recipe(model_dir, files, tmp_path, *extra: str):
    train, test = files
    return load_recipe(None, [f"model.name={model_dir}", "model.family=encoder", f"data.train={train}",
                              f"data.test={test}", "train.method=lora", "train.lr=1e-2", "train.max_steps=40",
                              "train.batch_size=8", "train.eval_steps=10", f"output.dir={tmp_path / 'runs'}",
                              "data.dedup.near=false", "eval.bias.enabled=false", *extra])


def test_an_encoder_trains_evaluates_and_is_compared(tiny_encoder_dir, colour_files, tmp_path):
    from tunesmith import pipeline
    from tunesmith.report.compare import compare

    # LoRA + the head; 60 steps: without LoRA dropout (the default since issue 14) 40 reached 10/12
    recipe = _encoder_recipe(tiny_encoder_dir, colour_files, tmp_path, "name=enc", "train.max_steps=60")
    pipeline.run(recipe)
    run = recipe.run_dir
    labels = json.loads((run / "model" / "labels.json").read_text())
    assert labels["labels"] == ["cold", "warm"] and labels["class_weights"] is None
    summary = json.loads((run / "eval" / "summary.json").read_text())
    test = summary["sets"]["test"]
    assert summary["baseline"].startswith("k-NN") and test["examples"] == 12
    assert test["majority"] == 0.5  # "warm" (the training majority) is right for half the test rows
    assert test["finetuned"]["labels"]["confusion"]["labels"] == ["cold", "warm"]
    assert test["base"] is not None and test["paired"] is not None  # the k-NN baseline, same examples
    assert test["finetuned"]["value"] == 1.0  # the colour word decides; LoRA and the head learn it
    assert summary["forgetting"] is None  # no general-knowledge probe for a classifier
    predictions = [json.loads(line) for line in (run / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert {p["finetuned_prediction"] for p in predictions} <= {"cold", "warm"}
    assert {p["reference"] for p in predictions} == {"cold", "warm"}
    card = (run / "README.md").read_text()
    assert "pipeline_tag: text-classification" in card and "The baseline is a k-NN" in card
    assert "### License lineage" in card and "| declared use | not declared" in card
    assert "| peak memory |" in card
    assert json.loads((run / "train" / "summary.json").read_text())["peak_memory_bytes"] > 2**20
    assert (run / "model" / "adapter_config.json").is_file()
    # full fine-tuning: every weight, saved whole (this tiny char-level BERT learns slowly that way)
    again = _encoder_recipe(tiny_encoder_dir, colour_files, tmp_path, "name=enc-full", "train.method=full",
                            "train.max_steps=10")
    pipeline.run(again)
    assert (again.run_dir / "model" / "model.safetensors").is_file()
    comparison = compare([run, again.run_dir])
    assert set(comparison.sets) == {"test"} and len(comparison.sets["test"]) == 2


def test_knn_baseline_votes_the_nearest_training_labels(tiny_encoder_dir):
    """On hand-checkable texts: each query's nearest training text is its exact copy."""
    from transformers import AutoModel, AutoTokenizer

    from tunesmith.models.classifier import KNNPredictor

    model = AutoModel.from_pretrained(tiny_encoder_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    texts = ["aaaa aaaa", "zzzz zzzz qqqq", "0123456789"]
    knn = KNNPredictor(model, tokenizer, texts, ["A", "Z", "D"], k=1)
    assert knn.generate([[{"role": "user", "content": t}] for t in reversed(texts)], "t") == ["D", "Z", "A"]
    # k=3 over three training rows of which two say "x": the vote is "x" for any query
    knn = KNNPredictor(model, tokenizer, texts, ["x", "y", "x"], k=3)
    assert knn.generate([[{"role": "user", "content": "zzzz"}]], "t") == ["x"]


def test_class_weights_are_in_the_loss(colour_files):
    """weight_c = n / (classes x n_c): 54 rows, 36 warm, 18 cold -> warm 0.75, cold 1.5; the
    Trainer's loss is then the weighted cross-entropy, computed by hand here."""
    import torch

    from tunesmith.data.load import load_file
    from tunesmith.train.classifier import class_weights
    from tunesmith.train.hf_backend import WeightedTrainer

    records = load_file(colour_files[0]).records
    recipe = load_recipe(None, ["data.balance.strategy=class_weights", "model.family=encoder"])
    weights = class_weights(records, recipe, ["cold", "warm"])
    assert weights == pytest.approx([1.5, 0.75])
    assert class_weights(records, load_recipe(None, []), ["cold", "warm"]) is None

    class Head(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Linear(1, 2)

        def forward(self, x, labels=None):
            return type("Out", (), {"logits": self.w(x)})()

    model = Head()
    trainer = object.__new__(WeightedTrainer)  # only compute_loss is exercised: no Trainer set-up
    trainer.weights, trainer.l1 = weights, 0.0
    x, labels = torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([0, 1, 1])
    logits = model.w(x)
    nll = -torch.log_softmax(logits, -1)[torch.arange(3), labels]
    w = torch.tensor(weights)[labels]
    loss = trainer.compute_loss(model, {"x": x, "labels": labels})
    assert float(loss) == pytest.approx(float((w * nll).sum() / w.sum()), rel=1e-5)


def test_encoder_recipe_refuses_preference_training():
    from tunesmith.errors import ConfigError

    with pytest.raises(ConfigError, match="built for decoders"):
        load_recipe(None, ["model.family=encoder", "train.method=dpo"])


def test_a_seq2seq_model_trains_evaluates_and_is_compared(tiny_t5_dir, chat_files, tmp_path):
    """A tiny T5 learns the colour-code task (answer the first two letters, upper-cased) and goes
    through data -> train -> eval -> card -> compare like a decoder; LoRA and full."""
    from tunesmith import pipeline
    from tunesmith.report.compare import compare

    def recipe(*extra: str):
        return load_recipe(None, [f"model.name={tiny_t5_dir}", "model.family=seq2seq",
                                  f"data.train={chat_files['train']}", f"data.test={chat_files['test']}",
                                  "train.max_steps=60", "train.batch_size=8", "train.lr=1e-2",
                                  "train.eval_steps=20", "eval.max_new_tokens=4", "eval.bias.enabled=false",
                                  "eval.forgetting_probe=false", "data.dedup.near=false",
                                  f"output.dir={tmp_path / 'runs'}", *extra])

    lora = recipe("name=t5-lora")
    pipeline.run(lora)
    summary = json.loads((lora.run_dir / "eval" / "summary.json").read_text())
    test = summary["sets"]["test"]
    assert summary["baseline"] == "base model" and test["base"]["value"] == 0.0  # an untrained T5
    assert summary["validation"]["finetuned"]["loss"] < summary["validation"]["base"]["loss"]
    rows = (lora.run_dir / "eval" / "predictions.jsonl").read_text().splitlines()
    predictions = [json.loads(line) for line in rows]
    assert all(len(p["finetuned_prediction"]) <= 4 for p in predictions)  # answers only, no prompt echo
    assert "pipeline_tag: text2text-generation" in (lora.run_dir / "README.md").read_text()
    full = recipe("name=t5-full", "train.method=full", "train.max_steps=10")
    pipeline.run(full)
    assert (full.run_dir / "model" / "model.safetensors").is_file()
    assert len(compare([lora.run_dir, full.run_dir]).sets["test"]) == 2


def test_seq2seq_rows_put_the_prompt_in_the_encoder_and_the_answer_in_the_labels():
    import torch

    from conftest import build_char_tokenizer
    from tunesmith.models.families.seq2seq import Seq2Seq, tokenize_pair

    tokenizer = build_char_tokenizer()
    row = tokenize_pair(tokenizer, [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}],
                        "OK", max_length=64)
    assert tokenizer.decode(row["input_ids"]) == "S\nhi" and row["attention_mask"] == [1, 1, 1, 1]
    assert row["labels"] == tokenizer("OK")["input_ids"] + [tokenizer.eos_token_id]
    cut = tokenize_pair(tokenizer, [{"role": "user", "content": "x" * 100}], "y" * 100, max_length=10)
    assert len(cut["input_ids"]) == 10 and len(cut["labels"]) == 10
    assert cut["labels"][-1] == tokenizer.eos_token_id
    assert Seq2Seq().generated_tokens(torch.tensor([[0, 5, 6]]), prompt_length=99).tolist() == [[5, 6]]
