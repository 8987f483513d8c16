"""The base-model catalog (`catalog.yaml` beside this file): real open models of the three
families with their size, architecture numbers, context, languages and license terms, and the
source of the facts. `tunesmith models list` prints it; the advisor ranks it.

    entries = load_catalog()
    entry = find("HuggingFaceTB/SmolLM2-135M-Instruct")      # or an embedded name
"""

from __future__ import annotations

import functools
from importlib.resources import files
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from tunesmith.licenses import Terms, license_terms

Family = Literal["causal_lm", "encoder", "seq2seq"]
TASK_FAMILIES: dict[str, tuple[str, ...]] = {
    "generation": ("causal_lm",),
    "classification": ("encoder", "causal_lm"),
    "text2text": ("seq2seq", "causal_lm"),
}
"""Families that suit a task, the best suited first (a decoder can classify and rewrite too)."""


class CatalogEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    hub_id: str
    family: Family
    arch: str
    params: float = Field(gt=0)
    layers: int = Field(gt=0)
    hidden: int = Field(gt=0)
    kv_dim: int = Field(gt=0)
    """Key/value width per layer: kv heads x head dim (grouped-query attention keeps it small)."""
    intermediate: int = Field(gt=0)
    heads: int | None = Field(None, gt=0)
    """Attention heads (None: hidden / 64, the usual head width)."""
    vocab: int = Field(gt=0)
    tied_embeddings: bool = False
    """The output head shares the input embeddings' matrix (config.json's tie_word_embeddings)."""
    context: int = Field(gt=0)
    languages: list[str]
    license: str
    """An id of tunesmith/licenses.py's table, which says what it allows."""
    gated: bool
    embedded: str | None = None
    """The `model.name` that ships offline with tunesmith, if any."""
    source: str = ""

    @property
    def name(self) -> str:
        return self.embedded or self.hub_id

    @property
    def terms(self) -> Terms:
        return license_terms(self.license, strict=False)

    @property
    def commercial(self) -> str:
        """yes, no, conditions or unknown (from the license table)."""
        return self.terms.commercial

    @property
    def conditions(self) -> str | None:
        return self.terms.conditions

    @property
    def attention_heads(self) -> int:
        return self.heads or max(1, self.hidden // 64)

    @property
    def size(self) -> str:
        return f"{self.params / 1e9:.1f}B" if self.params >= 1e9 else f"{self.params / 1e6:.0f}M"


@functools.lru_cache(maxsize=1)
def load_catalog() -> tuple[CatalogEntry, ...]:
    raw = yaml.safe_load((files("tunesmith.models") / "catalog.yaml").read_text(encoding="utf-8"))
    source = raw["defaults"]["source"]
    return tuple(CatalogEntry(**{"source": source.format(hub_id=m["hub_id"]), **m}) for m in raw["models"])


def find(name: str) -> CatalogEntry | None:
    """The catalog entry of a hub id or an embedded model name (case-insensitive), if listed."""
    wanted = name.lower()
    return next((e for e in load_catalog() if wanted in (e.hub_id.lower(), (e.embedded or "").lower())), None)


def entry_from_config(name: str, family: Family, config: dict, params: float) -> CatalogEntry:
    """An entry for a model the catalog does not list (a local directory, a new hub model), from
    its config.json numbers and its counted parameters; license terms unknown."""
    hidden = config.get("hidden_size") or config.get("d_model")
    heads = config.get("num_attention_heads") or config.get("num_heads")
    kv_heads = config.get("num_key_value_heads") or heads
    layers = config.get("num_hidden_layers") or (config.get("num_layers", 0)
                                                  + (config.get("num_decoder_layers") or 0))
    head_dim = config.get("head_dim") or config.get("d_kv") or hidden // heads
    return CatalogEntry(hub_id=name, family=family, arch=config.get("model_type", "unknown"), params=params,
                        layers=layers, hidden=hidden, kv_dim=kv_heads * head_dim,
                        intermediate=config.get("intermediate_size") or config.get("d_ff"), heads=heads,
                        vocab=config["vocab_size"],
                        tied_embeddings=bool(config.get("tie_word_embeddings", False)),
                        context=config.get("max_position_embeddings") or 512,
                        languages=["unknown"], license="unknown", gated=False)
