"""Reference statistics of the training data, saved at train time beside the model
(`train/drift_reference.json`, embeddings in `train/drift_embeddings.safetensors`), so that the
server can tell when what it is asked stops looking like what the model learned from.

What is kept, from a sample of the training prompts (the last user turn of each row):
- prompt lengths in the served model's tokens;
- the vocabulary (lower-cased words) of 80% of the sample, and the out-of-vocabulary rate of
  the other 20% against it: the rate a live window is compared with;
- the label distribution of the answers (`eval.label_field`, or the whole answer for
  classification data), where the task has labels;
- the all-MiniLM-L6-v2 embeddings of the prompts (when the encoder is installed).
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tunesmith.artifacts import DriftReference, load_optional, save
from tunesmith.evaluate.metrics import field_value
from tunesmith.files import read_jsonl
from tunesmith.monitor.embed import load_encoder
from tunesmith.recipe import Recipe
from tunesmith.rundir import RunDir

WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
MAX_LABELS = 50
"""More distinct answers than this: the task has no labels to compare."""


def words(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(text)]


def oov_rate(texts: list[str], vocab: set[str]) -> float:
    seen = [w for t in texts for w in words(t)]
    return sum(w not in vocab for w in seen) / len(seen) if seen else 0.0


def last_turn(messages: list[dict], role: str) -> str:
    return next((m.get("content") or "" for m in reversed(messages) if m.get("role") == role), "")


def prompt_and_answer(row: dict) -> tuple[str, str]:
    """A canonical record's prompt (the last user turn; a classification text) and its answer
    (a preference row's chosen answer; a KTO row's completion, desirable or not)."""
    if row.get("messages"):
        return last_turn(row["messages"], "user"), last_turn(row["messages"], "assistant")
    if isinstance(row.get("prompt"), list):  # preference: the answer the model should give
        return last_turn(row["prompt"], "user"), str(row.get("chosen", row.get("completion")) or "")
    return str(row.get("text") or ""), str(row.get("label") or "")


def answer_label(answer: str, label_field: str | None) -> str:
    return field_value(answer, label_field)


def build(recipe: Recipe, train_file: Path,
          count_tokens: Callable[[str], int]) -> tuple[DriftReference, np.ndarray | None]:
    """The reference of the rows in `train_file` (canonical chat JSONL), and its embeddings."""
    rows = read_jsonl(train_file)
    rng = random.Random(recipe.train.seed)
    sample = rng.sample(rows, min(len(rows), recipe.monitor.reference_size))
    prompts, answers = zip(*(prompt_and_answer(r) for r in sample), strict=True) if sample else ((), ())
    prompts, answers = list(prompts), list(answers)
    cut = max(1, int(len(prompts) * 0.8))
    vocab = {w for t in prompts[:cut] for w in words(t)}
    labels = Counter(answer_label(a, recipe.eval.label_field) for a in answers)
    has_labels = 1 < len(labels) <= MAX_LABELS
    encoder = load_encoder() if recipe.monitor.embeddings else None
    reference = DriftReference(
        rows=len(sample), lengths=[count_tokens(p) for p in prompts], vocabulary=sorted(vocab),
        oov_rate=oov_rate(prompts[cut:], vocab), label_field=recipe.eval.label_field,
        labels=dict(labels) if has_labels else {},
        embedding_model=encoder.name if encoder else None)
    return reference, (encoder.encode(prompts) if encoder else None)


def save_for_run(recipe: Recipe, run: RunDir) -> None:
    """Build the reference of a run's train split, measured in its model's tokens, into the run."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(run.model))
    reference, embeddings = build(recipe, run.split("train"),
                                  lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]))
    if reference.rows:
        write(reference, embeddings, run.drift_reference, run.drift_embeddings)


def write(reference: DriftReference, embeddings: np.ndarray | None, json_path: Path,
          embeddings_path: Path) -> None:
    from safetensors.numpy import save_file

    save(reference, json_path)
    if embeddings is not None:
        save_file({"embeddings": embeddings.astype(np.float32)}, str(embeddings_path))


def read(json_path: Path, embeddings_path: Path) -> tuple[DriftReference, np.ndarray | None] | None:
    reference = load_optional(DriftReference, json_path)
    if reference is None:
        return None
    embeddings = None
    if embeddings_path.is_file():
        from safetensors.numpy import load_file

        embeddings = load_file(str(embeddings_path))["embeddings"]
    return reference, embeddings


def describe(reference: DriftReference) -> str:
    return json.dumps({"rows": reference.rows, "oov_rate": round(reference.oov_rate, 4),
                       "labels": reference.labels, "embeddings": reference.embedding_model})
