"""The run directory: where stages hand over their artifacts, and the manifest that records them.

Layout of `runs/<run>/`:
    recipe.yaml           the resolved recipe (written first)
    manifest.json         every artifact: file, sha256, stage, time
    data/                 canonical train/val/test/<eval set> JSONL + stats.json
    model/                adapter (or full weights) + tokenizer; checkpoints/ while training
    train/log.jsonl       one JSON line per logging step
    eval/                 summary.json, predictions.jsonl
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.recipe import Recipe, dump_recipe


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def recipe(self) -> Path:
        return self.root / "recipe.yaml"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def split(self, name: str) -> Path:
        """Canonical JSONL of one split: train, val, test or a named eval set."""
        return self.data / f"{name}.jsonl"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def train_log(self) -> Path:
        return self.root / "train" / "log.jsonl"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    def record(self, stage: str, *paths: Path) -> None:
        """Add (or refresh) artifacts in manifest.json with their sha256."""
        manifest = read_json(self.manifest) if self.manifest.exists() else {"artifacts": {}}
        for path in paths:
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            for file in files:
                manifest["artifacts"][str(file.relative_to(self.root))] = {
                    "sha256": sha256_file(file),
                    "stage": stage,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
        write_json(self.manifest, manifest)


def open_run(recipe: Recipe) -> RunDir:
    """Create the run dir if needed and write the resolved recipe into it."""
    run = RunDir(recipe.run_dir)
    run.root.mkdir(parents=True, exist_ok=True)
    write_text(run.recipe, dump_recipe(recipe))
    run.record("recipe", run.recipe)
    return run


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_text(path: Path, text: str) -> None:
    """Write atomically: a crash leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
