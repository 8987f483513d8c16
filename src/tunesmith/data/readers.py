"""Read rows from JSONL, JSON arrays, CSV, Parquet and local HF `datasets` dirs, with locations.

Every row comes back as a `RawRow` that knows where it came from (`file:line` for text
formats, `file:row N` otherwise), so validation errors can point at the exact line.
A line that is not valid JSON becomes a `RawRow` with `error` set instead of stopping the read:
the caller decides (per `data.on_invalid`) whether that is fatal.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import DataError

SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv",
            ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet"}


@dataclass
class RawRow:
    source: str
    index: int
    """0-based row number in the file."""
    line: int | None
    """1-based line number in a text file; None for Parquet / datasets."""
    value: Any = None
    error: str | None = None
    """Set when the row could not even be parsed (e.g. broken JSON)."""

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}" if self.line else f"{self.source}:row {self.index + 1}"


def read_rows(path: str | Path, max_rows: int | None = None) -> Iterator[RawRow]:
    """Yield the rows of one file or dataset dir, in order."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found. Check the path in the recipe (data.train/val/test).")
    if path.is_dir():
        reader = _read_hf_dir
    else:
        kind = SUFFIXES.get(path.suffix.lower())
        if kind is None:
            raise DataError(
                f"{path}: unknown file type {path.suffix!r}. "
                "Use .jsonl, .json, .csv, .tsv, .parquet or a saved HF datasets directory."
            )
        reader = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv,
                  "parquet": _read_parquet}[kind]
    for count, row in enumerate(reader(path)):
        if max_rows is not None and count >= max_rows:
            return
        yield row


def _read_jsonl(path: Path) -> Iterator[RawRow]:
    index = 0
    with open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield RawRow(str(path), index, number, json.loads(line))
            except json.JSONDecodeError as error:
                yield RawRow(str(path), index, number,
                             error=f"not valid JSON ({error.msg} at column {error.colno})")
            index += 1


def _read_json(path: Path) -> Iterator[RawRow]:
    text = path.read_text(encoding="utf-8-sig")
    start = len(text) - len(text.lstrip())
    if text[start:start + 1] != "[":
        # Either one JSON object holding a list of rows, or JSON Lines saved as .json.
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            yield from _read_jsonl(path)
            return
        rows = _single_list_value(whole)
        if rows is None:
            raise DataError(
                f"{path}: expected a JSON array of rows (or an object with one list of rows). "
                "Convert it to JSON Lines: one object per line."
            )
        for index, value in enumerate(rows):
            yield RawRow(str(path), index, None, value)
        return
    yield from _scan_json_array(path, text, start + 1)


def _single_list_value(whole: Any) -> list | None:
    if isinstance(whole, dict):
        lists = [v for v in whole.values() if isinstance(v, list)]
        if len(lists) == 1:
            return lists[0]
    return None


def _scan_json_array(path: Path, text: str, pos: int) -> Iterator[RawRow]:
    """Decode array elements one by one, so each row knows its line number."""
    decoder = json.JSONDecoder()
    line, counted_to, index = 1, 0, 0
    length = len(text)
    while True:
        while pos < length and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= length:
            raise DataError(f"{path}: JSON array is not closed (missing ']' at the end).")
        if text[pos] == "]":
            return
        line += text.count("\n", counted_to, pos)
        counted_to = pos
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as error:
            raise DataError(
                f"{path}:{error.lineno}: not valid JSON ({error.msg} at column {error.colno}). "
                "Fix the file; a broken JSON array cannot be read past this point."
            ) from None
        yield RawRow(str(path), index, line, value)
        index += 1
        pos = end


def _read_csv(path: Path) -> Iterator[RawRow]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        if not reader.fieldnames:
            raise DataError(f"{path}: empty CSV (no header row). The first line must name the columns.")
        start_line = reader.line_num + 1
        for index, record in enumerate(reader):
            extra = record.pop(None, None)
            row: dict[str, Any] = {k: _maybe_json_cell(v) for k, v in record.items()}
            if extra:
                yield RawRow(str(path), index, start_line,
                             error=f"{len(extra)} more cell(s) than the header has columns")
            else:
                yield RawRow(str(path), index, start_line, row)
            start_line = reader.line_num + 1


def _maybe_json_cell(cell: str | None) -> Any:
    """CSV cells holding lists (e.g. `messages`) arrive as JSON text; decode those."""
    if cell is None:
        return None
    stripped = cell.strip()
    if stripped[:1] in "[{":
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return cell
    return cell


def _read_parquet(path: Path) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{path}: cannot read Parquet ({error}).") from None
    for index, value in enumerate(table.to_pylist()):
        yield RawRow(str(path), index, None, value)


def _read_hf_dir(path: Path) -> Iterator[RawRow]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as error:
        raise DataError(
            f"{path}: not a saved HF datasets directory ({error}). "
            "Save one with Dataset.save_to_disk(), or point at a data file."
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise DataError(f"{path}: DatasetDict without a 'train' split ({list(loaded)}).")
        loaded = loaded["train"]
    for index, value in enumerate(loaded):
        yield RawRow(str(path), index, None, value)
