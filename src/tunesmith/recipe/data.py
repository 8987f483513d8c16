"""The data section: where the data is and how it is checked, cleaned and split."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from tunesmith.licenses import LicenseIdError, canonical
from tunesmith.recipe.base import FormatName, _Section, _terms_given


class CleanConfig(_Section):
    enabled: bool = True
    """Repair mojibake (ftfy), NFC, drop control characters, tidy whitespace and chat shape."""


class FilterConfig(_Section):
    enabled: bool = True
    """Drop low-quality training rows (each filter counted, examples in the report)."""
    min_tokens: int = Field(4, ge=0)
    """Rows with fewer tokens (recipe tokenizer, whole conversation) are too short."""
    max_tokens: int | None = Field(None, gt=0)
    """Rows with more tokens are too long; None takes train.max_length."""
    max_repeated_lines: float = Field(0.5, ge=0.0, le=1.0)
    """Drop rows where more than this share of lines repeat an earlier line."""
    max_repeated_ngrams: float = Field(0.5, ge=0.0, le=1.0)
    """Drop rows where more than this share of word 3-grams repeat an earlier one."""
    min_text_fraction: float = Field(0.8, ge=0.0, le=1.0)
    """Drop rows where less than this share of characters is text (letters, digits, punctuation)."""
    copy_threshold: float = Field(0.95, gt=0.0, le=1.0)
    """Drop rows whose answer matches its prompt at this similarity or more (1 disables)."""
    min_label_count: int = Field(2, ge=1)
    """Drop rows whose label is seen fewer times than this (classification)."""


class DedupConfig(_Section):
    exact: bool = True
    """Remove exact duplicates (after normalising case and whitespace); keep the first."""
    near: bool = True
    """Remove near duplicates (MinHash LSH, verified by exact Jaccard); keep one per cluster."""
    shingle_size: int = Field(5, gt=0)
    """Words per shingle."""
    num_perm: int = Field(128, gt=0)
    """MinHash permutations."""
    bands: int = Field(16, gt=0)
    """LSH bands (bands x rows <= num_perm); 16 x 8 finds 95% of pairs at Jaccard 0.8."""
    rows: int = Field(8, gt=0)
    """Signature rows per band."""
    threshold: float = Field(0.8, gt=0.0, le=1.0)
    """Jaccard similarity at or above which two rows are near duplicates."""

    @model_validator(mode="after")
    def _bands_fit(self) -> DedupConfig:
        if self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows ({self.bands * self.rows}) exceeds num_perm ({self.num_perm})")
        return self


class LeakageConfig(_Section):
    action: Literal["drop_from_train", "drop_from_eval", "flag"] = "drop_from_train"
    """What to do with an eval row that (nearly) duplicates a train row: remove the train copy
    (eval sets stay comparable across runs), remove the eval row, or only report it."""
    ngram: int = Field(13, gt=0)
    """Word n-gram size of the contamination overlap check."""
    benchmark_files: list[str] = Field(default_factory=list)
    """Extra files (e.g. public benchmarks) that no training row may overlap."""


class PrivacyConfig(_Section):
    mode: Literal["off", "mask", "drop"] = "off"
    """E-mails, phone numbers, card numbers and IPs: leave, replace with <EMAIL> etc., or drop the row."""


class BalanceConfig(_Section):
    by: str = "auto"
    """Stratum for splits and balancing: auto, none, label, answer, or meta.<key>."""
    strategy: Literal["none", "cap", "oversample", "class_weights"] = "none"
    """Rebalance training rows: cap per stratum, oversample small strata, or report class weights."""
    cap: int | None = Field(None, gt=0)
    """For strategy cap: the most rows kept per stratum."""

    @field_validator("by")
    @classmethod
    def _known_stratum(cls, value: str) -> str:
        if value not in ("auto", "none", "label", "answer") and not value.startswith("meta."):
            raise ValueError("expected auto, none, label, answer or meta.<key>")
        return value

    @model_validator(mode="after")
    def _cap_given(self) -> BalanceConfig:
        if self.strategy == "cap" and self.cap is None:
            raise ValueError("strategy cap needs balance.cap (rows per stratum)")
        return self


class AugmentConfig(_Section):
    methods: list[Literal["random_deletion", "random_swap", "template"]] = Field(default_factory=list)
    """Augmentations of the last user turn, added to train only; empty = off."""
    copies: int = Field(1, gt=0)
    """Augmented rows per training row and method."""
    deletion_p: float = Field(0.1, gt=0.0, lt=1.0)
    """random_deletion: chance of dropping each word."""
    swaps: int = Field(1, gt=0)
    """random_swap: word pairs swapped."""
    templates: list[str] = Field(default_factory=list)
    """template: rewrites of the prompt, each with a {text} slot, e.g. "Customer wrote: {text}"."""

    @model_validator(mode="after")
    def _templates_given(self) -> AugmentConfig:
        if "template" in self.methods and not all("{text}" in t for t in self.templates or [""]):
            raise ValueError("method template needs augment.templates, each with a {text} slot")
        return self



class DataBiasConfig(_Section):
    audit: bool = True
    """Count the lexicon's demographic groups in the training prompts per answer class and test
    their independence (data/bias.py); flagged in the data report and the model card."""
    lexicon: dict[str, dict[str, list[str]]] = Field(default_factory=dict)
    """Extra or replacement dimensions, {dimension: {group: [aligned terms]}}, added to the bundled
    lexicon and to eval.bias.lexicon's."""
    alpha: float = Field(0.01, gt=0.0, lt=1.0)
    """A group x class table is flagged when its independence test has p below this ..."""
    min_effect: float = Field(0.1, ge=0.0, le=1.0)
    """... and its Cramér's V is at least this (0.1: a small effect, by Cohen's convention)."""
    mitigate: list[Literal["counterfactual", "reweight"]] = Field(default_factory=list)
    """On the training split: counterfactual copies with the group terms swapped, and/or loss
    weights that make group and class independent (reweight: decoder SFT on train.backend
    tunesmith)."""
    dimensions: list[str] = Field(default_factory=list)
    """The dimensions to mitigate; empty = the ones the audit flags."""

    @field_validator("lexicon")
    @classmethod
    def _lexicon_terms(cls, value: dict[str, dict[str, list[str]]]) -> dict[str, dict[str, list[str]]]:
        return _terms_given(value)


class DataLicense(_Section):
    license: str
    """An SPDX id (CC-BY-NC-4.0, Apache-2.0, CC0-1.0, ...), `A AND B`, `proprietary` (yours),
    `LicenseRef-<name>`, or `unknown`."""
    source: str | None = None
    """Where the data comes from: a URL, a Hub dataset id, or words."""
    attribution: str | None = None
    """The credit its license asks for (CC BY and the like), as it should be given."""

    @field_validator("license")
    @classmethod
    def _known(cls, value: str) -> str:
        try:
            return canonical(value)
        except LicenseIdError as error:
            raise ValueError(str(error)) from None


class DataConfig(_Section):
    train: list[str] = Field(default_factory=list)
    """Training file(s) or local HF `datasets` dirs: JSONL, JSON array, CSV, Parquet."""
    val: str | None = None
    """Validation file; when absent, `val_fraction` of train is held out."""
    test: str | None = None
    """In-domain test file; when absent, `test_fraction` of train is held out."""
    eval_sets: dict[str, str] = Field(default_factory=dict)
    """Extra named evaluation files, e.g. `{ood: data/other_product.jsonl}` (out-of-domain)."""
    format: FormatName = "auto"
    """Input format; `auto` detects it from the rows' keys."""
    columns: dict[str, str] = Field(default_factory=dict)
    """Rename your columns to the format's names: `{instruction: question, output: answer}`."""
    on_invalid: Literal["error", "skip"] = "error"
    """What to do with a row that fails validation: stop with its location, or skip and count it."""
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    """Share of train held out for validation when `val` is not given."""
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    """Share of train held out for testing when `test` is not given."""
    train_fraction: float = Field(1.0, gt=0.0, le=1.0)
    """Train on this share of the training split (after val / test are held out): the first rows
    of one shuffle seeded by `seed`, so a smaller share is inside every larger one. `tunesmith
    curve` sets it; the validation and test sets stay the same."""
    system_prompt: str | None = None
    """System message added to conversations that have none (training and evaluation alike)."""
    max_rows: int | None = Field(None, gt=0)
    """Read at most this many rows per file (quick experiments)."""
    encoding: str = "auto"
    """Text encoding of the files; `auto` reads UTF-8 and UTF-16/32 (with a BOM) and names the
    likely encoding of anything else. Set e.g. `cp1252` for Windows exports."""
    max_row_chars: int = Field(1_000_000, gt=0)
    """A row longer than this (characters of JSON / CSV) is invalid: one runaway row would take
    gigabytes in cleaning and tokenizing."""
    max_depth: int = Field(50, gt=1)
    """A row nested deeper than this (lists in objects in lists ...) is invalid."""
    text_separator: str | None = None
    """Raw text files (.txt, .md): None reads each file as one document; a separator splits it into
    documents (`"\\n"`: one a line, as LLaMA-Factory's wiki_demo.txt; `"\\n\\n"`: paragraphs). The
    escapes \\n, \\t and \\r mean what they say also where YAML keeps them as written (single quotes,
    or `data.text_separator='\\n'` on the command line)."""
    licenses: dict[str, DataLicense] = Field(default_factory=dict)
    """The license of each data file, by path or glob (`data/*.jsonl`; a pattern without a `/`
    matches the file's name): `{path: CC-BY-NC-4.0}` or `{path: {license, source, attribution}}`.
    A file without one takes the license of the dataset card beside it (README.md's front matter)
    or of a saved HF datasets directory; else it is unknown."""
    accept_license: list[str] = Field(default_factory=list)
    """License ids to train on despite model.intended_use (you hold a separate agreement); the
    model card records it."""
    seed: int = Field(42, ge=0, le=2**32 - 1)
    """Seed of the train/val/test split: the same recipe and seed give the same split."""
    clean: CleanConfig = Field(default_factory=CleanConfig, description="Text and chat-shape normalisation.")
    filters: FilterConfig = Field(default_factory=FilterConfig,
                                  description="Quality filters on training rows.")
    dedup: DedupConfig = Field(default_factory=DedupConfig,
                               description="Exact and near-duplicate removal in train.")
    leakage: LeakageConfig = Field(default_factory=LeakageConfig,
                                   description="Train/eval leakage and benchmark contamination checks.")
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig, description="Personal-data scrubbing.")
    balance: BalanceConfig = Field(default_factory=BalanceConfig,
                                   description="Strata for the split, and rebalancing of train.")
    augment: AugmentConfig = Field(default_factory=AugmentConfig,
                                   description="Opt-in augmentation of the training split.")
    bias: DataBiasConfig = Field(default_factory=DataBiasConfig,
                                 description="Audit of demographic groups per answer class, and mitigation.")

    @field_validator("train", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("licenses", mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: {"license": v} if isinstance(v, str) else v for k, v in value.items()}
        return value

    @field_validator("accept_license", mode="before")
    @classmethod
    def _one_or_many_ids(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("accept_license")
    @classmethod
    def _accepted_known(cls, value: list[str]) -> list[str]:
        try:
            return [canonical(v) for v in value]
        except LicenseIdError as error:
            raise ValueError(str(error)) from None

    @field_validator("text_separator")
    @classmethod
    def _escapes(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.replace("\\n", "\n").replace("\\t", "\t").replace("\\r", "\r")
        if not value:
            raise ValueError("an empty separator splits nothing; leave it unset to read one document a file")
        return value

    @field_validator("eval_sets")
    @classmethod
    def _names_free(cls, sets: dict[str, str]) -> dict[str, str]:
        taken = sorted(set(sets) & {"train", "val", "test"})
        if taken:
            raise ValueError(f"{taken[0]} is taken by a split; give the eval set another name")
        return sets

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> DataConfig:
        held_out = (0 if self.val else self.val_fraction) + (0 if self.test else self.test_fraction)
        if held_out >= 0.9:
            raise ValueError("val_fraction + test_fraction must leave at least 10% for training")
        return self


