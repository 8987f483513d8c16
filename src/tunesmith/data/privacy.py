"""Find personal data in text: e-mail addresses, phone numbers, card numbers, IP addresses.

`scrub(text)` returns the text with each finding replaced by a placeholder (`<EMAIL>`, ...)
and the counts per kind. Card numbers must pass the Luhn check, and IPv4 addresses must have
octets <= 255, so order numbers and version strings are left alone. `run` is the data stage's
privacy step (`data.privacy.mode`: mask or drop).
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from typing import Any

from tunesmith.artifacts import Privacy

EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b")
CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
PHONE = re.compile(
    r"(?<![\w.])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){2,4}(?![\w.])"
)
IPV4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")
IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){2,7}[0-9A-Fa-f]{1,4}(?![\w:])")


def luhn_valid(number: str) -> bool:
    digits = [int(d) for d in number if d.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for position, digit in enumerate(reversed(digits)):
        if position % 2:
            digit = digit * 2 - 9 if digit * 2 > 9 else digit * 2
        total += digit
    return total % 10 == 0


def _valid_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def scrub(text: str) -> tuple[str, Counter]:
    """Replace personal data with placeholders; return the new text and counts per kind."""
    counts: Counter = Counter()

    def replacer(kind: str, check=None):
        def replace(match: re.Match) -> str:
            if check is not None and not check(match.group(0)):
                return match.group(0)
            counts[kind] += 1
            return f"<{kind.upper()}>"
        return replace

    # order matters: e-mails before phones; cards (Luhn) before phones; IPs before phones
    text = EMAIL.sub(replacer("email"), text)
    text = CARD.sub(replacer("card", luhn_valid), text)
    text = IPV4.sub(replacer("ip", _valid_ip), text)
    text = IPV6.sub(replacer("ip", _valid_ip), text)
    text = PHONE.sub(replacer("phone", lambda s: sum(c.isdigit() for c in s) >= 7), text)
    return text, counts


def _scrubbed(records: list[dict], mode: str, counts: Counter) -> list[dict]:
    kept = []
    for record in records:
        found: Counter = Counter()
        if "messages" in record:
            messages = []
            for message in record["messages"]:
                text, hits = scrub(message["content"])
                found += hits
                messages.append({**message, "content": text})
            scrubbed = {**record, "messages": messages}
        else:
            text, hits = scrub(record["text"])
            found += hits
            scrubbed = {**record, "text": text}
        counts.update(found)
        if found and mode == "drop":
            counts["rows_dropped"] += 1
            continue
        kept.append(scrubbed if mode == "mask" else record)
    return kept


def run(sets: dict[str, list[dict]], recipe: Any) -> tuple[dict[str, list[dict]], Privacy | None]:
    """The data stage's privacy step (`data.privacy.mode`) on every set it is given: masked or
    dropped rows, and the counts per kind of personal data (None when the step is off)."""
    mode = recipe.data.privacy.mode
    if mode == "off":
        return sets, None
    found: Counter = Counter()
    scrubbed = {name: _scrubbed(rows, mode, found) for name, rows in sets.items()}
    return scrubbed, Privacy.model_validate({"mode": mode, **found})
