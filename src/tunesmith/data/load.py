"""Load one file into canonical records, validating every row and locating every problem.

`load_file(path, fmt="auto", columns={}, on_invalid="error")` returns a `LoadedFile` with the
detected format, the records (each with `meta.source`/`meta.line`), and the invalid rows
(`where`, `error`). A row is judged as it will be trained: converted, cleaned (`clean`, when
the recipe cleans) and then checked (`records.check_record`). With `on_invalid="error"` the
first invalid row raises a `DataError` that says where it is and how to fix it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.data.formats import FORMAT, convert_row, detect_format, map_columns
from tunesmith.data.readers import RawRow, ReadOptions, read_rows
from tunesmith.errors import DataError
from tunesmith.records import RowError, check_record

SKIP_HINT = "Fix the row, or set data.on_invalid: skip to drop invalid rows."


@dataclass
class InvalidRow:
    where: str
    error: str


@dataclass
class LoadedFile:
    path: str
    format: str
    records: list[dict[str, Any]]
    invalid: list[InvalidRow] = field(default_factory=list)
    clean_counts: Counter = field(default_factory=Counter)
    """What cleaning changed in the valid rows (e.g. mojibake_repaired)."""
    non_text_parts: Counter = field(default_factory=Counter)
    """Image / audio / ... parts dropped from mixed content (tunesmith trains on text)."""

    @property
    def kind(self) -> str:
        """Canonical record kind: chat, classification, text or preference."""
        return FORMAT[self.format].kind


def load_file(
    path: str | Path,
    fmt: str = "auto",
    columns: dict[str, str] | None = None,
    on_invalid: str = "error",
    max_rows: int | None = None,
    options: ReadOptions | None = None,
    clean: Callable[[dict[str, Any], Counter], dict[str, Any]] | None = None,
) -> LoadedFile:
    raw_rows: list[RawRow] = list(read_rows(path, max_rows=max_rows, options=options))
    if not raw_rows:
        raise DataError(f"{path}: no rows. Point the recipe at a file with data in it.")
    values = [map_columns(r.value, columns or {}) for r in raw_rows]
    if all(r.error for r in raw_rows):  # nothing to detect a format from: say what is wrong
        first = raw_rows[0]
        if on_invalid == "error":
            raise DataError(f"{first.where}: {first.error}. {SKIP_HINT}")
        raise DataError(f"{path}: every row is invalid (first: {first.where}: {first.error}). Fix the file.")
    readable = [v for r, v in zip(raw_rows, values, strict=True) if r.error is None]
    hint = _format_hint(readable, fmt, str(path))
    if fmt == "auto":
        fmt = detect_format(readable, str(path))
    loaded = LoadedFile(str(path), fmt, [])
    for raw, value in zip(raw_rows, values, strict=True):
        error = raw.error
        if error is None:
            try:
                record = _judged(value, fmt, clean, loaded)
            except RowError as problem:
                error = str(problem)
            else:
                record["meta"].update(source=raw.source, line=raw.line or raw.index + 1)
                loaded.records.append(record)
                continue
        if on_invalid == "error":
            raise DataError(f"{raw.where}: {error}. {hint or SKIP_HINT}")
        loaded.invalid.append(InvalidRow(raw.where, error))
    if not loaded.records:
        fix = hint or ("Check data.columns, which renamed the columns before they were read." if columns
                       else "Fix the rows (each error names the field and what it needs).")
        raise DataError(f"{path}: every row is invalid (first: {loaded.invalid[0].where}: "
                        f"{loaded.invalid[0].error}). {fix}")
    return loaded


def _format_hint(rows: list[Any], fmt: str, source: str) -> str | None:
    """When the recipe names a format (data.format) that the rows are not in, but they are in
    another: the fix is data.format, not the rows."""
    if fmt == "auto" or not rows:
        return None
    try:
        found = detect_format(rows, source)
    except DataError:
        return None
    if found == fmt:
        return None
    columns = ", ".join(FORMAT[found].required)
    return (f"The rows are {found} ({columns}), not {fmt}: set data.format: {found}, or leave it auto "
            "to detect it.")


def check_unicode(record: dict[str, Any]) -> None:
    """Raise RowError when a text holds a lone surrogate (a JSON escape such as \\ud800 that is half
    of a character): no tokenizer can encode it, and cleaning (ftfy) does not remove it."""
    for key, text in _strings(record):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as bad:
            raise RowError(f"{key} holds a lone surrogate (\\u{ord(text[bad.start]):04x} at character "
                           f"{bad.start}), half of a character that is not text. Fix the program that wrote "
                           "the file (it split a UTF-16 pair), or drop the row") from None


def _strings(value: Any, key: str = "row") -> Any:
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, dict):
        for name, item in value.items():
            if name != "meta":
                yield from _strings(item, name if key == "row" else f"{key}.{name}")
    elif isinstance(value, list):
        for number, item in enumerate(value):
            yield from _strings(item, f"{key}[{number}]")


ROLES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant"}
"""ShareGPT's speakers under their chat roles."""


def _raw_turns(value: Any) -> tuple[str, list[tuple[str, Any]]] | None:
    """A chat row's turns as written (role, content), before cleaning drops the empty ones."""
    for key, role_key, text_key in (("messages", "role", "content"), ("conversations", "from", "value")):
        turns = value.get(key) if isinstance(value, dict) else None
        if isinstance(turns, list):
            roles = [str(t.get(role_key)).lower() for t in turns if isinstance(t, dict)]
            texts = [t.get(text_key) for t in turns if isinstance(t, dict)]
            return key, [(ROLES.get(r, r), text) for r, text in zip(roles, texts, strict=True)]
    return None


def chat_cause(value: Any) -> str | None:
    """What cleaning hides when it leaves a chat row with nothing to learn: a user turn with no
    content before the answer, or no answer at all."""
    found = _raw_turns(value)
    if found is None:
        return None
    key, turns = found
    spoken = [(i, role, text) for i, (role, text) in enumerate(turns) if role != "system"]
    for i, role, text in spoken:
        if role == "assistant":
            break
        if role == "user" and not (isinstance(text, str) and text.strip()):
            what = "null" if text is None else "empty" if isinstance(text, str) else type(text).__name__
            return (f"{key}[{i}] is a user turn whose content is {what}: nothing prompts the answer after "
                    "it. Give it the user's text, or drop the row")
    if spoken and not any(role == "assistant" for _, role, _ in spoken):
        return (f"{key} has no answer: {len(spoken)} user turn(s) and no assistant turn after them. Add the "
                "assistant's answer, or drop the row")
    return None


def _judged(value: Any, fmt: str, clean: Callable | None, loaded: LoadedFile) -> dict[str, Any]:
    """Convert, clean, then check the row as it will be trained (counts only for valid rows)."""
    record = convert_row(value, fmt)
    counts: Counter = Counter()
    if clean is not None and FORMAT[fmt].kind != "preference":
        record = clean(record, counts)
    try:
        check_record(record)
    except RowError as problem:
        raise RowError(chat_cause(value) or str(problem)) from None
    check_unicode(record)
    loaded.clean_counts.update(counts)
    loaded.non_text_parts.update(record["meta"].get("non_text_parts", {}))
    return record
