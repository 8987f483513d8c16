"""Encoders as classifiers: (text, label) examples from canonical records, the label set, and
the predictors evaluation uses in place of a generator (the `evaluate.generation.Generator`
protocol: prompts in, one answer string each out).

    text, label = example(record, label_field="category")
    ClassifierPredictor(model, tokenizer, labels).generate(prompts, "test")   # the head's argmax
    KNNPredictor(base, tokenizer, train_texts, train_labels).generate(...)    # the honest baseline

An encoder's classification head starts random, so "the base model before fine-tuning" is no
baseline at all. The baselines an encoder is judged against are the majority class and a k-NN
vote over the frozen encoder's sentence embeddings (mean-pooled last hidden states, cosine),
both on the same examples.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from tunesmith.errors import DataError
from tunesmith.records import answer_field, as_chat

LABELS_FILE = "labels.json"
"""In a run's model directory: the classifier's label names, index order."""


def prompt_text(messages: list[dict]) -> str:
    """What an encoder reads: the user turns (system prompts and earlier answers are left out)."""
    return "\n".join(m["content"] for m in messages if m["role"] == "user")


def input_text(record: dict[str, Any]) -> str:
    """What an encoder reads of any record: its text, or a conversation's user turns."""
    if "text" in record:
        return record["text"]
    messages = as_chat(record) or []
    answered = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    return prompt_text(messages[: answered[-1]] if answered else messages)


def example(record: dict[str, Any], label_field: str | None) -> tuple[str, str]:
    """(text, label) of a classification or chat record; the answer's `label_field` when set."""
    if "label" in record and "text" in record:
        return record["text"], record["label"]
    messages = as_chat(record)
    if not messages or not any(m["role"] == "assistant" for m in messages):
        raise DataError("model.family encoder needs classification records (text, label) or chat records "
                        "whose answer is the label (or a JSON answer with eval.label_field set).")
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    answer = messages[last]["content"]
    label = (answer_field(answer, label_field) or "<invalid>") if label_field else answer.strip()
    return prompt_text(messages[:last]), label


def label_names(records: list[dict], label_field: str | None) -> list[str]:
    """The labels of the training records, sorted (the head's index order)."""
    labels = sorted({example(r, label_field)[1] for r in records})
    if "<invalid>" in labels:
        raise DataError(f"a training answer has no {label_field!r} field: every answer must be a JSON "
                        f"object with it (eval.label_field: {label_field}).")
    if len(labels) < 2:
        raise DataError(f"the training data has {len(labels)} label(s); a classifier needs at least two.")
    return labels


def majority_accuracy(train_labels: list[str], references: list[str]) -> float:
    """Accuracy of always answering the training data's most common label."""
    if not references:
        return 0.0
    top = Counter(train_labels).most_common(1)[0][0]
    return sum(r == top for r in references) / len(references)


def _batches(texts: list[str], size: int) -> list[list[int]]:
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    return [order[i:i + size] for i in range(0, len(order), size)]


def _encode(tokenizer: Any, texts: list[str], max_length: int, device: Any) -> dict[str, Any]:
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {k: v.to(device) for k, v in batch.items()}


@dataclass
class ClassifierPredictor:
    """The fine-tuned head's answer: the label with the highest logit."""
    model: Any
    tokenizer: Any
    labels: list[str]
    batch_size: int = 32
    max_length: int = 256
    examples_per_second: float = 0.0

    def generate(self, prompts: list[list[dict]], label: str) -> list[str]:
        import torch

        texts = [prompt_text(p) for p in prompts]
        answers = [""] * len(texts)
        device = next(self.model.parameters()).device
        started = time.time()
        self.model.eval()
        with torch.inference_mode():
            for batch in _batches(texts, self.batch_size):
                logits = self.model(**_encode(self.tokenizer, [texts[i] for i in batch], self.max_length,
                                              device)).logits
                for i, index in zip(batch, logits.argmax(-1).tolist(), strict=True):
                    answers[i] = self.labels[index]
        self.examples_per_second = len(texts) / max(time.time() - started, 1e-9)
        return answers


def embed(model: Any, tokenizer: Any, texts: list[str], batch_size: int = 32, max_length: int = 256) -> Any:
    """Sentence embeddings from an encoder (a bare one or a classifier's body): mean-pooled last
    hidden states over real tokens, L2-normalised, as sentence-transformers computes them for
    MiniLM (the drift monitor's embeddings too). numpy (n, hidden)."""
    import numpy as np
    import torch

    device = next(model.parameters()).device
    vectors = np.zeros((0, model.config.hidden_size), dtype=np.float32)
    rows: dict[int, Any] = {}
    model.eval()
    with torch.inference_mode():
        for batch in _batches(texts, batch_size):
            inputs = _encode(tokenizer, [texts[i] for i in batch], max_length, device)
            hidden = model(**inputs, output_hidden_states=True).hidden_states[-1].float()
            mask = inputs["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            for i, vector in zip(batch, pooled.cpu().numpy(), strict=True):
                rows[i] = vector
    if rows:
        vectors = np.stack([rows[i] for i in range(len(texts))])
    return vectors


@dataclass
class KNNPredictor:
    """The frozen encoder's answer: a vote of the k most similar training examples (cosine over
    `embed`), ties to the nearest. Built once per model; the training embeddings are cached."""
    model: Any
    tokenizer: Any
    train_texts: list[str]
    train_labels: list[str]
    k: int = 5
    """eval.knn_neighbours in a run."""
    batch_size: int = 32
    max_length: int = 256
    _train: Any = None

    def generate(self, prompts: list[list[dict]], label: str) -> list[str]:
        import numpy as np

        if self._train is None:
            self._train = embed(self.model, self.tokenizer, self.train_texts, self.batch_size,
                                self.max_length)
        queries = embed(self.model, self.tokenizer, [prompt_text(p) for p in prompts], self.batch_size,
                        self.max_length)
        similarity = queries @ self._train.T
        k = min(self.k, len(self.train_labels))
        answers = []
        for row in similarity:
            nearest = np.argsort(-row, kind="stable")[:k]
            votes = Counter(self.train_labels[i] for i in nearest)
            best = max(votes.values())
            answers.append(next(self.train_labels[i] for i in nearest if votes[self.train_labels[i]] == best))
        return answers
