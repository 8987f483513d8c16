"""Read rows from JSONL, JSON arrays, CSV, Parquet, raw text (.txt / .md) and local HF `datasets`
dirs, with locations.

Every row comes back as a `RawRow` that knows where it came from (`file:line` for text
formats, `file:row N` otherwise), so validation errors can point at the exact line.
A line that is not valid JSON becomes a `RawRow` with `error` set instead of stopping the read:
the caller decides (per `data.on_invalid`) whether that is fatal.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import DataError
from tunesmith.explain import json_problem, path_problem
from tunesmith.recipe import DataConfig

SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv",
            ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet", ".txt": "text", ".md": "text",
            ".markdown": "text"}


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


@dataclass(frozen=True)
class ReadOptions:
    """How files are read; the defaults are the recipe's (`data.encoding`, `data.max_row_chars`,
    `data.max_depth`), whose docstrings say what each does."""

    encoding: str = DataConfig.model_fields["encoding"].default
    max_row_chars: int = DataConfig.model_fields["max_row_chars"].default
    max_depth: int = DataConfig.model_fields["max_depth"].default
    text_separator: str | None = DataConfig.model_fields["text_separator"].default


def read_rows(path: str | Path, max_rows: int | None = None,
              options: ReadOptions | None = None) -> Iterator[RawRow]:
    """Yield the rows of one file or dataset dir, in order."""
    options = options or ReadOptions()
    path = Path(path)
    problem = path_problem(path)
    if problem:
        what, fix = problem
        raise DataError(f"{what}. {fix or 'Check the path.'}")
    if path.is_dir():
        reader = _read_hf_dir
    else:
        kind = SUFFIXES.get(path.suffix.lower())
        if kind is None:
            raise DataError(
                f"{path}: unknown file type {path.suffix!r}. "
                "Use .jsonl, .json, .csv, .tsv, .parquet, .txt, .md or a saved HF datasets directory."
            )
        reader = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv,
                  "parquet": _read_parquet, "text": _read_raw_text}[kind]
    try:
        for count, row in enumerate(reader(path, options)):
            if max_rows is not None and count >= max_rows:
                return
            yield row
    except OSError as error:
        raise DataError(f"{path}: cannot read it ({error.strerror or error}). Check that it is a "
                        "readable file.") from None


MAGIC = {b"\x1f\x8b": "gzip-compressed (gunzip it first)", b"PK\x03\x04": "a zip archive (unzip it first)",
         b"PAR1": "Parquet (name it .parquet)", b"\x28\xb5\x2f\xfd": "zstd-compressed (unzstd it first)"}


def _encoding(path: Path, options: ReadOptions) -> str:
    """The encoding to decode `path` with: the recipe's, or found from a BOM or NUL pattern."""
    if options.encoding != "auto":
        try:
            return codecs.lookup(options.encoding).name
        except LookupError:
            raise DataError(f"data.encoding {options.encoding!r}: unknown encoding. Use a Python codec "
                            "name such as utf-8, cp1252, latin-1 or utf-16.") from None
    with open(path, "rb") as handle:
        head = handle.read(8192)
    for bom, name in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                      (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
                      (codecs.BOM_UTF16_BE, "utf-16")):
        if head.startswith(bom):
            return name
    for magic, what in MAGIC.items():
        if head.startswith(magic):
            raise DataError(f"{path}: this is {what}, not text.")
    if b"\x00" in head:
        even, odd = head[0::2].count(0), head[1::2].count(0)
        guess = ("utf-16-le" if odd > len(head) // 4 and even == 0 else
                 "utf-16-be" if even > len(head) // 4 and odd == 0 else None)
        if guess and _mostly_latin(head[: len(head) // 2 * 2], guess):
            return guess  # text in UTF-16 without a BOM
        raise DataError(f"{path}: a binary file, not text (NUL bytes in it). Point the recipe at a "
                        "JSONL, JSON, CSV or Parquet file.")
    return "utf-8"


def _mostly_latin(raw: bytes, encoding: str) -> bool:
    """Whether bytes decode to text that is mostly Latin script (how data files begin)."""
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError:
        return False
    return sum(ch < "\u0250" for ch in text) >= 0.8 * max(len(text), 1)


def _decode_error(path: Path, raw: bytes, error: UnicodeDecodeError, encoding: str,
                  line_offset: int = 0) -> DataError:
    line = raw[:error.start].count(b"\n") + 1 + line_offset
    column = error.start - (raw.rfind(b"\n", 0, error.start) + 1) + 1
    if encoding.startswith(("utf-16", "utf-32")):
        return DataError(f"{path}: not valid {encoding} text (byte {error.start}: {error.reason}). "
                         "Re-save the file as UTF-8, or set data.encoding to its real encoding.")
    guess = _guess_encoding(raw)
    return DataError(
        f"{path}:{line}: not {encoding} (byte 0x{raw[error.start]:02x} at column {column}); the file "
        f"looks like {guess}. Convert it (iconv -f {guess} -t utf-8 {path.name} > fixed{path.suffix}), "
        f"or set data.encoding: {guess}.")


def _guess_encoding(raw: bytes) -> str:
    """The likely encoding of bytes that are not UTF-8: Windows' cp1252 (the usual culprit: Excel
    and Notepad exports) when they decode as such, else charset_normalizer's guess."""
    try:
        raw.decode("cp1252")
        return "cp1252"
    except UnicodeDecodeError:
        pass
    try:
        from charset_normalizer import from_bytes  # ships with requests; optional here

        best = from_bytes(raw[:65536]).best()
        if best is not None:
            return best.encoding.replace("_", "-")
    except ImportError:
        pass
    return "latin-1"


def _read_text(path: Path, options: ReadOptions) -> str:
    """The whole file decoded, with a located error when it is not in its encoding."""
    encoding = _encoding(path, options)
    raw = path.read_bytes()
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as error:
        raise _decode_error(path, raw, error, encoding) from None


class UniqueKeys:
    """json's object_pairs_hook that notes a key given twice in one object (JSON lets the last one
    win without a word; recipes refuse it, and so do rows)."""

    def __init__(self) -> None:
        self.repeated: list[str] = []

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                self.repeated.append(key)
            seen.add(key)
        return dict(pairs)

    def problem(self) -> str | None:
        """The first repeated key of the row just parsed, as a row error; then forgets it."""
        if not self.repeated:
            return None
        key, self.repeated = self.repeated[0], []
        return f"key {key!r} appears twice in one object (JSON would keep the last silently); keep one"


def _row_value(text: str, options: ReadOptions) -> tuple[Any, str | None]:
    """Parse one JSON row within the size and depth limits: (value, None) or (None, error)."""
    if len(text) > options.max_row_chars:
        return None, (f"row is {len(text):,} characters, over data.max_row_chars "
                      f"({options.max_row_chars:,}); split it, or raise the limit")
    unique = UniqueKeys()
    try:
        value = json.loads(text, object_pairs_hook=unique)
    except json.JSONDecodeError as error:
        return None, json_problem(error)
    except RecursionError:
        return None, f"nested too deeply to parse (data.max_depth is {options.max_depth})"
    repeated = unique.problem()
    if repeated:
        return None, repeated
    depth = nesting_depth(value, options.max_depth)
    if depth > options.max_depth:
        return None, f"nested more than data.max_depth ({options.max_depth}) levels deep"
    return value, None


def nesting_depth(value: Any, limit: int) -> int:
    """Depth of nested lists/dicts, counted without recursion and only up to limit + 1."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth)
            if depth > limit:
                return depth
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def _read_raw_text(path: Path, options: ReadOptions) -> Iterator[RawRow]:
    """Raw text for continued pre-training: the whole file is one document, or it is split on
    `data.text_separator` (e.g. "\\n" for one document a line, "\\n\\n" for paragraphs). Each
    document is a `{"text"}` row located at the line it starts on; empty pieces are skipped."""
    text = _read_text(path, options)  # a BOM is gone with its codec (utf-8-sig, utf-16, utf-32)
    pieces = text.split(options.text_separator) if options.text_separator else [text]
    line, index = 1, 0
    for piece in pieces:
        if piece.strip():
            starts = line + piece[:len(piece) - len(piece.lstrip())].count("\n")
            if len(piece) > options.max_row_chars:
                yield RawRow(str(path), index, starts, error=(
                    f"document is {len(piece):,} characters, over data.max_row_chars "
                    f"({options.max_row_chars:,}); split it with data.text_separator, or raise the limit"))
            else:
                yield RawRow(str(path), index, starts, {"text": piece.strip()})
            index += 1
        line += piece.count("\n") + (options.text_separator or "").count("\n")


def _read_jsonl(path: Path, options: ReadOptions) -> Iterator[RawRow]:
    encoding = _encoding(path, options)
    if encoding not in ("utf-8", "utf-8-sig"):
        lines: Iterator[tuple[int, str]] = enumerate(_read_text(path, options).splitlines(), start=1)
    else:
        lines = _utf8_lines(path, options)
    index = 0
    for number, line in lines:
        if not line.strip():
            continue
        value, error = _row_value(line, options)
        yield RawRow(str(path), index, number, value, error)
        index += 1


def _utf8_lines(path: Path, options: ReadOptions) -> Iterator[tuple[int, str]]:
    """Stream a UTF-8 file line by line (files larger than memory), each decode error located."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise _decode_error(path, raw, error, "UTF-8", number - 1) from None


def _read_json(path: Path, options: ReadOptions) -> Iterator[RawRow]:
    text = _read_text(path, options)  # a BOM is gone with its codec (utf-8-sig, utf-16, utf-32)
    start = len(text) - len(text.lstrip())
    if text[start:start + 1] != "[":
        # Either one JSON object holding a list of rows, or JSON Lines saved as .json.
        unique = UniqueKeys()
        try:
            whole = json.loads(text, object_pairs_hook=unique)
        except (json.JSONDecodeError, RecursionError):
            yield from _read_jsonl(path, options)
            return
        repeated = unique.problem()
        if repeated:
            raise DataError(f"{path}: {repeated}. Fix the file.")
        rows = _single_list_value(whole)
        if rows is None:
            raise DataError(
                f"{path}: expected a JSON array of rows (or an object with one list of rows). "
                "Convert it to JSON Lines: one object per line."
            )
        for index, value in enumerate(rows):
            yield _checked(RawRow(str(path), index, None, value), options)
        return
    yield from _scan_json_array(path, text, start + 1, options)


def _checked(row: RawRow, options: ReadOptions) -> RawRow:
    if nesting_depth(row.value, options.max_depth) > options.max_depth:
        return RawRow(row.source, row.index, row.line,
                      error=f"nested more than data.max_depth ({options.max_depth}) levels deep")
    return row


def _single_list_value(whole: Any) -> list | None:
    if isinstance(whole, dict):
        lists = [v for v in whole.values() if isinstance(v, list)]
        if len(lists) == 1:
            return lists[0]
    return None


def _scan_json_array(path: Path, text: str, pos: int, options: ReadOptions) -> Iterator[RawRow]:
    """Decode array elements one by one, so each row knows its line number."""
    unique = UniqueKeys()
    decoder = json.JSONDecoder(object_pairs_hook=unique)
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
                f"{path}:{error.lineno}: {json_problem(error)}. "
                "Fix the file; a broken JSON array cannot be read past this point."
            ) from None
        except RecursionError:
            raise DataError(f"{path}:{line}: a row nested too deeply to parse (data.max_depth is "
                            f"{options.max_depth}). Fix or remove that row.") from None
        repeated = unique.problem()
        if end - pos > options.max_row_chars:
            yield RawRow(str(path), index, line, error=(
                f"row is {end - pos:,} characters, over data.max_row_chars ({options.max_row_chars:,}); "
                "split it, or raise the limit"))
        elif repeated:
            yield RawRow(str(path), index, line, error=repeated)
        else:
            yield _checked(RawRow(str(path), index, line, value), options)
        index += 1
        pos = end


def _read_csv(path: Path, options: ReadOptions) -> Iterator[RawRow]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    csv.field_size_limit(options.max_row_chars)
    reader = csv.DictReader(io.StringIO(_read_text(path, options).lstrip("\ufeff"), newline=""),
                            delimiter=delimiter)
    try:
        if not reader.fieldnames:
            raise DataError(f"{path}: empty CSV (no header row). The first line must name the columns.")
        _separator_matches(path, reader.fieldnames, delimiter)
        start_line = reader.line_num + 1
        for index, record in enumerate(reader):
            extra = record.pop(None, None)
            row: dict[str, Any] = {k: _maybe_json_cell(v) for k, v in record.items()}
            if extra:
                yield RawRow(str(path), index, start_line,
                             error=f"{len(extra)} more cell(s) than the header has columns")
            else:
                yield _checked(RawRow(str(path), index, start_line, row), options)
            start_line = reader.line_num + 1
    except csv.Error as error:
        raise DataError(f"{path}:{reader.line_num}: not valid CSV ({error}). Fix that line (a field over "
                        "data.max_row_chars, or an unclosed quote).") from None


def _separator_matches(path: Path, header: list[str], delimiter: str) -> None:
    """A header read as one column that holds the other separator: the file's name says the wrong
    separator (a tab-separated export named .csv, the commonest)."""
    other, names = ("\t", ("tab", "tab-separated", ".tsv")) if delimiter == "," else (",", (
        "comma", "comma-separated", ".csv"))
    if len(header) == 1 and other in header[0]:
        sep, kind, suffix = names
        raise DataError(f"{path}:1: the header is one column with {header[0].count(other)} {sep}(s) in it: "
                        f"the file is {kind}, but a {path.suffix} file is read as "
                        f"{'comma' if delimiter == ',' else 'tab'}-separated. Rename it {path.stem}{suffix}.")


def _maybe_json_cell(cell: str | None) -> Any:
    """CSV cells holding lists (e.g. `messages`) arrive as JSON text; decode those."""
    if cell is None:
        return None
    stripped = cell.strip()
    if stripped[:1] in "[{":
        try:
            return json.loads(stripped)
        except (json.JSONDecodeError, RecursionError):
            return cell
    return cell


def _read_parquet(path: Path, options: ReadOptions) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several types for a corrupt file
        cause = ("no Parquet footer: the file is cut short (an interrupted download or copy) or is not "
                 "Parquet at all" if "magic bytes" in str(error) else
                 "its Parquet structure is damaged, or written with a feature pyarrow cannot read")
        raise DataError(f"{path}: cannot read it as Parquet ({cause}). Re-export or re-download the "
                        "file.") from None
    for index, value in enumerate(table.to_pylist()):
        yield _checked(RawRow(str(path), index, None, value), options)


def _read_hf_dir(path: Path, options: ReadOptions) -> Iterator[RawRow]:
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
        yield _checked(RawRow(str(path), index, None, value), options)
