"""Demographic groups in text: the bundled lexicon, finding its terms, and swapping them.

Used by the data stage's bias audit and counterfactual augmentation (data/bias.py) and by the
evaluation's bias probes (evaluate/bias.py), so that the groups audited in the training data
are the groups probed in the model's answers. A recipe adds dimensions or groups in the same
shape (`data.bias.lexicon`, `eval.bias.lexicon`).
"""

from __future__ import annotations

import functools
import re

LEXICON: dict[str, dict[str, list[str]]] = {
    "gender": {
        "male": ["he", "him", "his", "man", "men", "boy", "father", "son", "husband", "Mr.",
                 "James", "John", "Robert", "Michael", "David", "Tom", "Lukas"],
        "female": ["she", "her", "her", "woman", "women", "girl", "mother", "daughter", "wife", "Ms.",
                   "Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Olivia", "Maria"],
    },
    "name_origin": {
        "western_european": ["Olivia", "Tom", "Lukas", "Emma", "Hans"],
        "hispanic": ["Maria", "Carlos", "Diego", "Lucia", "Javier"],
        "south_asian": ["Priya", "Rahul", "Arjun", "Ananya", "Vikram"],
        "east_asian": ["Chen", "Hiroshi", "Mei", "Jin", "Yuki"],
        "arabic": ["Ahmed", "Fatima", "Omar", "Layla", "Youssef"],
        "african": ["Kwame", "Amara", "Chidi", "Zainab", "Kofi"],
    },
}


def _pattern(terms: list[str]) -> re.Pattern:
    return _compiled(tuple(terms))


@functools.lru_cache(maxsize=256)
def _compiled(terms: tuple[str, ...]) -> re.Pattern:
    alternatives = sorted({re.escape(t) for t in terms}, key=len, reverse=True)
    return re.compile(r"(?<!\w)(" + "|".join(alternatives) + r")(?!\w)", re.IGNORECASE)


def _match_case(template: str, word: str) -> str:
    if template.isupper() and len(template) > 1:
        return word.upper()
    if template[:1].isupper():
        return word[:1].upper() + word[1:]
    return word.lower() if template.islower() else word


def counterfactuals(text: str, groups: dict[str, list[str]]) -> dict[str, str] | None:
    """One copy of `text` per group with every lexicon term swapped; None if no term occurs."""
    position: dict[str, int] = {}
    for terms in groups.values():
        for i, term in enumerate(terms):
            position.setdefault(term.lower(), i)
    pattern = _pattern([t for terms in groups.values() for t in terms])
    if not pattern.search(text):
        return None
    copies = {}
    for group, terms in groups.items():
        def swap(match: re.Match, terms=terms) -> str:
            index = position[match.group(0).lower()]
            return _match_case(match.group(0), terms[index % len(terms)])
        copies[group] = pattern.sub(swap, text)
    return copies


def groups_in(text: str, groups: dict[str, list[str]]) -> set[str]:
    """The groups with at least one term in `text` (whole words, any case)."""
    found = set()
    for group, terms in groups.items():
        if _pattern(terms).search(text):
            found.add(group)
    return found
