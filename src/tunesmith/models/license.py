"""License lineage of the base model: what its license allows, and whether the recipe's declared
use (`model.intended_use`) is allowed by it. The license id comes from tunesmith's catalog
(`catalog.yaml`, each with its source), else from a local model's own card (its `license:`), else
it is unknown; what the id allows comes from the one table of license terms (tunesmith/licenses.py),
which the training data's licenses (data/licenses.py) are judged by too.

    terms = license_terms("meta-llama/Llama-3.2-1B-Instruct")   # llama3.2, commercial: conditions
    warning = check_use(recipe.model)    # raises ConfigError on a conflict; a warning for conditions

A non-commercial license with `intended_use: commercial` stops the run before training, unless
the recipe names that license in `model.accept_license` (you hold a separate agreement).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import ConfigError
from tunesmith.licenses import CardError, Terms, card_license, card_metadata, card_terms
from tunesmith.models.catalog import find
from tunesmith.recipe import ModelConfig


@dataclass(frozen=True)
class LicenseTerms:
    base_model: str
    """The hub id to name as base_model (the embedded models' hub originals)."""
    license: str
    commercial: str
    """yes, no, conditions, or unknown."""
    conditions: str | None = None
    gated: bool = False
    source: str = ""
    """Where the facts come from: the catalog's source, the model's card, or nothing."""
    terms: Terms | None = None
    """The license table's entry (None: unknown)."""


def _card_license(path: Path) -> str | None:
    readme = path / "README.md"
    try:
        return card_license(card_metadata(readme), readme)
    except CardError:
        return None  # a broken card says nothing: the license is unknown, and the check says so


def license_terms(model_name: str) -> LicenseTerms:
    from tunesmith.models.loading import EMBEDDED, EMBEDDED_PREFIX

    hub_id = model_name
    if model_name.startswith(EMBEDDED_PREFIX) and model_name.removeprefix(EMBEDDED_PREFIX) in EMBEDDED:
        hub_id = EMBEDDED[model_name.removeprefix(EMBEDDED_PREFIX)].hub_id
    entry = find(model_name) or find(hub_id)
    if entry is not None:
        return LicenseTerms(hub_id, entry.license, entry.commercial, entry.conditions, entry.gated,
                            entry.source or "tunesmith's catalog", entry.terms)
    found = _card_license(Path(model_name))
    if found:
        terms = card_terms(found)
        return LicenseTerms(model_name, terms.id, terms.commercial, terms.conditions,
                            source=f"{model_name}/README.md", terms=terms)
    return LicenseTerms(model_name, "unknown", "unknown")


def check_use(model: ModelConfig) -> str | None:
    """None when the declared use is allowed; a warning to show when it has conditions or the
    license is unknown; ConfigError when the license forbids it (and it is not accepted)."""
    if model.intended_use != "commercial":
        return None
    terms = license_terms(model.name)
    if terms.commercial == "no":
        if model.accept_license and model.accept_license.lower() == terms.license.lower():
            return (f"{model.name}: license {terms.license} is non-commercial; model.accept_license says "
                    "you may use it commercially anyway (a separate agreement). The model card records it.")
        raise ConfigError(
            f"model.name {model.name}: its license {terms.license} does not allow commercial use, and "
            f"model.intended_use is commercial (source: {terms.source}). Choose another base model "
            "(`tunesmith models recommend --license commercial`), or, if you hold a separate agreement, "
            f"set model.accept_license: {terms.license}.")
    if terms.commercial == "conditions":
        return (f"{model.name}: license {terms.license} allows commercial use with conditions: "
                f"{terms.conditions}.")
    if terms.commercial == "unknown":
        return (f"{model.name}: license {terms.license}; tunesmith cannot tell whether it allows commercial "
                "use. Read the model's own card before you ship.")
    return None
