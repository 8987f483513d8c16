"""License terms: one table for base models and training data alike, and the verdict of a
declared use (`model.intended_use`) against them.

    terms = license_terms("CC-BY-NC-4.0")          # SPDX ids, Hub ids (cc-by-nc-4.0), model licenses
    terms.commercial, terms.share_alike           # "no", False
    both = license_terms("CC-BY-SA-4.0 AND MIT")   # every license applies: the strictest terms
    either = license_terms("MIT OR GPL-3.0")       # the licensee chooses: the most permissive
    refusal, warning = verdict(terms, "commercial", accepted=["CC-BY-NC-4.0"])

Ids are matched without regard to case (the Hub writes `cc-by-nc-4.0`, SPDX `CC-BY-NC-4.0`).
Beyond SPDX: the Hub's model licenses (llama3.2, gemma, qwen, ...), `proprietary` (data you own or
hold full rights to), `LicenseRef-<name>` (SPDX's form for a license without an id: terms unknown),
`other` and `unknown`. `strict_terms` refuses any other id, with the closest known ones; a card's
license (`card_terms`) that tunesmith does not know is judged by its name alone (`-nc-` or
`research` reads non-commercial), else unknown.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

COMMERCIAL_ORDER = ("yes", "conditions", "unknown", "no")
"""From the most permissive to the strictest."""


@dataclass(frozen=True)
class Terms:
    id: str
    name: str
    commercial: str
    """yes, no, conditions or unknown."""
    derivatives: bool = True
    """Adaptations (a fine-tuned model is one) may be shared; False for the ND licenses."""
    share_alike: bool = False
    """Adaptations must be shared under the same terms."""
    attribution: bool = False
    """Whoever uses it must credit the source."""
    conditions: str | None = None
    """The conditions on commercial use, or why it is not allowed, in words."""

    @property
    def known(self) -> bool:
        return self.commercial != "unknown"


def _cc(version: str, parts: str) -> Terms:
    """A Creative Commons license: parts among BY, SA, NC, ND."""
    words = parts.split("-")
    nc = "NC" in words
    return Terms(f"CC-{parts}-{version}", f"CC {parts} {version}", "no" if nc else "yes",
                 derivatives="ND" not in words, share_alike="SA" in words, attribution=True,
                 conditions="non-commercial use only" if nc else None)


def _table() -> dict[str, Terms]:
    cc = [_cc(v, p) for v in ("2.0", "2.5", "3.0", "4.0")
          for p in ("BY", "BY-SA", "BY-NC", "BY-NC-SA", "BY-ND", "BY-NC-ND")]
    permissive = [Terms(i, i, "yes") for i in (
        "CC0-1.0", "PDDL-1.0", "Unlicense", "MIT", "Apache-2.0", "BSD-2-Clause", "BSD-3-Clause", "ISC",
        "CDLA-Permissive-1.0", "CDLA-Permissive-2.0", "BSL-1.0", "Zlib", "Artistic-2.0", "AFL-3.0")]
    copyleft = [Terms(i, i, "yes", share_alike=True, attribution=i.startswith(("ODbL", "GFDL")))
                for i in ("ODbL-1.0", "CDLA-Sharing-1.0", "GPL-2.0", "GPL-3.0", "LGPL-2.1", "LGPL-3.0",
                          "AGPL-3.0", "MPL-2.0", "EPL-2.0", "GFDL-1.3")]
    llama = "Community License: a separate license above 700 million monthly active users; acceptable " \
            "use policy; 'Built with Llama' attribution"
    rail = "use restrictions (the license's attachment A) passed on to every user"
    models = [*(Terms(i, i, "conditions", attribution=True, conditions=f"Llama {i[5:]} {llama}")
                for i in ("llama2", "llama3", "llama3.1", "llama3.2", "llama3.3", "llama4")),
              Terms("gemma", "Gemma Terms of Use", "conditions", conditions="Gemma Terms of Use: commercial "
                    "use allowed under the prohibited use policy, passed on to users"),
              Terms("qwen", "Qwen License", "conditions",
                    conditions="a separate license is needed above 100 million monthly active users"),
              Terms("qwen-research", "Qwen Research License", "no", conditions="research use only"),
              *(Terms(i, i, "conditions", conditions=rail) for i in (
                  "openrail", "openrail++", "bigscience-openrail-m", "creativeml-openrail-m",
                  "bigcode-openrail-m", "bigscience-bloom-rail-1.0")),
              Terms("ODC-By-1.0", "ODC-By 1.0", "yes", attribution=True),
              Terms("proprietary", "proprietary (your own data)", "yes",
                    conditions="data you own or hold full rights to"),
              Terms("other", "other", "unknown", conditions="a license without an id: read its terms"),
              Terms("unknown", "unknown", "unknown", conditions="the license is not known")]
    return {t.id.lower(): t for t in [*cc, *permissive, *copyleft, *models]}


TABLE = _table()
ALIASES = {"odc-by": "ODC-By-1.0", "odbl": "ODbL-1.0", "pddl": "PDDL-1.0", "cc0": "CC0-1.0",
           "gpl": "GPL-3.0", "gfdl": "GFDL-1.3", "apache2": "Apache-2.0", "bsd": "BSD-3-Clause"}
"""The Hub's short ids (its dataset cards write `odc-by`, `odbl`, ...)."""
NON_COMMERCIAL = re.compile(r"(^|[-_ ])(nc|non-?commercial|research)([-_ ]|$)", re.IGNORECASE)
"""License names that say non-commercial (cc-by-nc-5.0, acme-research, ...)."""


class LicenseIdError(ValueError):
    """An id tunesmith does not know (the message names the closest known ones)."""


def _one(license_id: str, strict: bool) -> Terms:
    key = license_id.strip().lower()
    key = ALIASES.get(key, key).lower()
    if key in TABLE:
        return TABLE[key]
    if key.startswith("licenseref-") and len(key) > len("licenseref-"):
        custom = license_id.strip()
        return Terms(custom, custom, "unknown", conditions="a custom license: read its terms")
    if strict:
        close = difflib.get_close_matches(key, list(TABLE), n=3, cutoff=0.6)
        known = ", ".join(TABLE[c].id for c in close) if close else "CC-BY-4.0, Apache-2.0, MIT, proprietary"
        raise LicenseIdError(f"{license_id!r} is not a license id tunesmith knows (closest: {known}). Use an "
                             "SPDX id, LicenseRef-<name> for a license without one, or unknown")
    guessed = "no" if NON_COMMERCIAL.search(license_id) else "unknown"
    return Terms(license_id.strip(), license_id.strip(), guessed,
                 conditions="non-commercial, by its name" if guessed == "no" else "read its terms")


def license_terms(expression: str, strict: bool = True) -> Terms:
    """The terms of an id, or of `A AND B` (all apply) or `A OR B` (the licensee chooses).
    strict: LicenseIdError on an unknown id; else it is judged by its name."""
    text = " ".join(str(expression).split())
    if not text:
        raise LicenseIdError("an empty license id. Use an SPDX id, or unknown")
    if "(" in text or ")" in text:
        raise LicenseIdError(f"{text!r}: parentheses are not supported; write A AND B, or A OR B")
    words = text.split(" ")
    if len(words) == 1:
        return _one(text, strict)
    operators = {w.upper() for w in words[1::2]}
    if len(words) % 2 == 0 or len(operators) != 1 or not operators <= {"AND", "OR"}:
        raise LicenseIdError(f"{text!r}: write one id, or ids joined by one operator (A AND B, A OR B)")
    parts = [_one(w, strict) for w in words[::2]]
    return combine(parts, every=operators == {"AND"}, joined=f" {operators.pop()} ".join(p.id for p in parts))


def combine(parts: list[Terms], every: bool = True, joined: str | None = None) -> Terms:
    """Terms that all apply (every=True: the strictest of each) or of which one is chosen."""
    pick = max if every else min
    commercial = pick((p.commercial for p in parts), key=COMMERCIAL_ORDER.index)
    flags = all if not every else any
    derivatives = (all if every else any)(p.derivatives for p in parts)
    conditions = "; ".join(dict.fromkeys(p.conditions for p in parts if p.conditions)) or None
    name = (" and " if every else " or ").join(p.name for p in parts)
    return Terms(joined or " AND ".join(p.id for p in parts), name, commercial, derivatives,
                 share_alike=flags(p.share_alike for p in parts),
                 attribution=flags(p.attribution for p in parts), conditions=conditions)


def canonical(expression: str) -> str:
    """The id as the table spells it (`cc-by-nc-4.0` -> `CC-BY-NC-4.0`); LicenseIdError if unknown."""
    return license_terms(expression).id


def same(a: str, b: str) -> bool:
    return a.strip().lower() == b.strip().lower()


def verdict(terms: Terms, use: str, accepted: list[str] | tuple[str, ...] = ()
            ) -> tuple[str | None, str | None]:
    """(why the use is refused, or None; what to warn about, or None) for a declared use:
    commercial refuses non-commercial, research-only and no-derivatives terms unless accepted;
    share-alike, attribution, conditions and unknown terms warn. An undeclared use is not judged."""
    if use == "unspecified":
        return None, None
    if any(same(terms.id, a) for a in accepted):
        return None, f"{terms.id} accepted (a separate agreement)"
    if use == "commercial" and terms.commercial == "no":
        return f"{terms.name} does not allow commercial use ({terms.conditions or 'non-commercial'})", None
    if not terms.derivatives:
        if use == "commercial":
            return f"{terms.name} allows no derivatives, and a fine-tuned model is one", None
        return None, f"{terms.name} allows no derivatives: the fine-tuned model may not be shared"
    notes = []
    if terms.commercial == "unknown" and use == "commercial":
        notes.append(f"{terms.name}: tunesmith cannot tell whether it allows commercial use; read its terms")
    elif terms.commercial == "unknown":
        notes.append(f"{terms.name}: its terms are unknown; read them before you share the model")
    if use == "commercial" and terms.commercial == "conditions":
        notes.append(f"{terms.name} allows commercial use with conditions: {terms.conditions}")
    if terms.share_alike:
        notes.append(f"{terms.name} is share-alike: the model may have to be shared under the same terms")
    if terms.attribution and terms.commercial != "conditions":
        notes.append(f"{terms.name} asks for attribution: credit the source wherever the model is shared")
    return None, "; ".join(notes) or None


# -- cards: a model's or a dataset's README.md with YAML front matter, as the Hub writes them --

class CardError(ValueError):
    """A card whose front matter or license field cannot be read (the message says where)."""


def card_metadata(readme: Path) -> dict[str, Any] | None:
    """The YAML front matter of a README.md, or None when there is none; CardError when broken."""
    if not readme.is_file():
        return None
    text = readme.read_text(encoding="utf-8", errors="replace")
    match = re.match(r"---\r?\n(.*?)\r?\n---", text, re.DOTALL)
    if not match:
        return None
    try:
        meta = yaml.safe_load(match.group(1))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f":{mark.line + 2}" if mark else ""
        raise CardError(f"{readme}{where}: its YAML front matter is not valid YAML") from None
    return meta if isinstance(meta, dict) else None


def card_text(meta: dict[str, Any], body: str) -> str:
    """A README.md with YAML front matter, as the Hub writes cards (what card_metadata reads)."""
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n" + body


def card_license(meta: dict[str, Any] | None, where: Path) -> str | None:
    """The license expression a card's front matter gives: `license` (one id or a list: all
    apply), or `license_name` when license is `other`; None when it gives none."""
    if not meta or meta.get("license") in (None, ""):
        return None
    value = meta["license"]
    if isinstance(value, str) and value.strip():
        ids = [value.strip()]
    elif isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value):
        ids = [v.strip() for v in value]
    else:
        raise CardError(f"{where}: license: {value!r} is not a license id or a list of ids")
    name = meta.get("license_name")
    if ids == ["other"] and isinstance(name, str) and name.strip():
        return name.strip()
    return " AND ".join(ids)


def card_terms(expression: str) -> Terms:
    """A card's license: known ids from the table, others judged by their name."""
    try:
        return license_terms(expression, strict=False)
    except LicenseIdError:
        return replace(TABLE["unknown"], id=expression, name=expression)
