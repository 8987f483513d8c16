"""The run directory: where stages hand over their artifacts, and the manifest that records them.

Layout of `runs/<run>/`:
    recipe.yaml           the resolved recipe that produced every artifact below
    manifest.json         every artifact (file, sha256, stage, time) and each stage's recipe
    data/                 canonical train/val/test/<eval set> JSONL + report.json/html
    model/                adapter (or full weights) + tokenizer
    train/                log.jsonl, summary.json
    eval/                 summary.json, predictions.jsonl, judge.jsonl, curve.json
    tune/                 study, trials.csv, best.yaml, summary.json, figures
    README.md, report.html  model card and run report
    comparison.json       with `tunesmith report RUN --against OTHER`: paired deltas against OTHER
    .staging/, .work/     work in progress (never part of the run; see below)

Every command is a transaction (`RunDir.transaction`): its stages write into a staging view
of the run (`.staging/<id>/`, the committed artifacts linked in, so later stages read what
earlier ones staged), and only when all of them succeed are their outputs moved into place,
the manifest and recipe.yaml rewritten, and the artifacts the change made stale (a new model
makes the old evaluation stale) removed, in one commit. A commit first writes a journal
(`.commit.json`); a process killed half-way through is rolled forward by the next command that
opens the run, and SIGINT/SIGTERM wait until the commit is done. So a failed or interrupted
command leaves the run exactly as it was: files, hashes and manifest. Only `.work/` outlives a
failure: training checkpoints for `--resume` and the SQLite study of `tune`.

Before it commits, a command checks that the artifacts it keeps were made with the same
recipe values (`STAGE_KEYS`): recipe.yaml always describes what produced every artifact. A
model or a study that the change would make stale is never removed by a command that does
not make it again: the command is refused instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import ConfigError
from tunesmith.explain import shown_path
from tunesmith.files import read_json, sha256_file, write_json, write_text
from tunesmith.recipe import Recipe, dump_recipe

STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "data": ("data",),
    "train": ("model", "train"),
    "eval": ("eval",),
    "tune": ("tune",),
    "report": ("README.md", "report.html", "comparison.json"),
}
"""What each stage owns in the run directory (top-level names)."""

DOWNSTREAM: dict[str, tuple[str, ...]] = {
    "data": ("train", "eval", "tune", "report"),
    "train": ("eval", "report"),
    "eval": ("report",),
    "tune": ("report",),
    "report": (),
}
"""Stages whose artifacts are built from a stage's artifacts: stale when it changes."""

PROTECTED = ("train", "tune")
"""Expensive artifacts: made stale, they are refused rather than removed, unless the command
itself produces them again."""

_DATA_KEYS = ("data", "model.name", "model.revision", "model.trust_remote_code",
              "model.chat_template", "train.max_length")
STAGE_KEYS: dict[str, tuple[str, ...]] = {
    "data": _DATA_KEYS,  # the tokenizer measures lengths; train.max_length bounds the filters
    "train": ("data", "model", "train"),
    "eval": ("data", "model", "train", "eval"),
    "tune": ("data", "model", "train", "tune"),
    "report": ("name", "description", "data", "model", "train", "eval"),
}
"""The recipe keys (dotted prefixes) whose values a stage's artifacts depend on."""

NEUTRAL_KEYS = ("train.report_to",)
"""Keys no artifact depends on (where a run is reported to): never a difference."""

MERGED = {"tune"}
"""Stages whose outputs are merged into the run's, not replaced: workers sharing a study each
add their trials."""

JOURNAL = ".commit.json"
STAGING = ".staging"
WORK = ".work"


@dataclass(frozen=True)
class RunDir:
    root: Path
    home: Path | None = None
    """The run itself when `root` is a transaction's staging view of it (see `transaction`)."""

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
    def work(self) -> Path:
        """Work in progress kept across failed commands, never part of the run's artifacts."""
        return (self.home or self.root) / WORK

    @property
    def checkpoints(self) -> Path:
        """Resumable training checkpoints (kept when training fails, removed when it succeeds)."""
        return self.work / "checkpoints"

    @property
    def study_db(self) -> Path:
        """The tune stage's SQLite study (when no shared storage is given)."""
        return self.work / "study.db"

    @property
    def checkpoint_recipe(self) -> Path:
        """The recipe the checkpoints were made with (a resume must use the same one)."""
        return self.checkpoints / "recipe.json"

    @property
    def log_in_progress(self) -> Path:
        """train/log.jsonl while training runs (kept with the checkpoints for a resume)."""
        return self.checkpoints / "log.jsonl"

    @property
    def merged_model(self) -> Path:
        """The LoRA adapter merged into its base (train.merge: true)."""
        return self.model / "merged"

    @property
    def drift_reference(self) -> Path:
        """Statistics of the training prompts that serving compares live requests with."""
        return self.root / "train" / "drift_reference.json"

    @property
    def drift_embeddings(self) -> Path:
        return self.root / "train" / "drift_embeddings.safetensors"

    @property
    def monitor_db(self) -> Path:
        """The served model's request, feedback and alert log (live; not a stage artifact)."""
        return (self.home or self.root) / "monitor" / "requests.db"

    @property
    def train_log(self) -> Path:
        return self.root / "train" / "log.jsonl"

    @property
    def train_summary(self) -> Path:
        return self.root / "train" / "summary.json"

    @property
    def data_report(self) -> Path:
        return self.data / "report.json"

    @property
    def data_report_html(self) -> Path:
        return self.data / "report.html"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def eval_summary(self) -> Path:
        return self.eval / "summary.json"

    @property
    def predictions(self) -> Path:
        return self.eval / "predictions.jsonl"

    @property
    def judge_grades(self) -> Path:
        return self.eval / "judge.jsonl"

    @property
    def curve(self) -> Path:
        """`tunesmith curve`'s result, in the run trained on the whole training split."""
        return self.eval / "curve.json"

    @property
    def tune(self) -> Path:
        return self.root / "tune"

    @property
    def best_recipe(self) -> Path:
        return self.tune / "best.yaml"

    @property
    def trials_csv(self) -> Path:
        return self.tune / "trials.csv"

    @property
    def tune_summary(self) -> Path:
        return self.tune / "summary.json"

    @property
    def trials(self) -> Path:
        """One run directory per tuning trial (recipe, logs, summary; no weights)."""
        return self.tune / "trials"

    @property
    def card(self) -> Path:
        return self.root / "README.md"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    @property
    def comparison(self) -> Path:
        """`tunesmith report RUN --against OTHER`: this run's deltas against OTHER (report stage)."""
        return self.root / "comparison.json"

    def has_model(self) -> bool:
        return (self.model / "adapter_config.json").exists() or (self.model / "config.json").exists()

    def committed_stages(self) -> dict[str, dict[str, Any]]:
        """{stage: {"time", "recipe"}} of every stage whose artifacts the run holds."""
        manifest = (self.home or self.root) / "manifest.json"
        return read_json(manifest).get("stages", {}) if manifest.exists() else {}

    @contextlib.contextmanager
    def transaction(self, recipe: Recipe, stages: tuple[str, ...]) -> Iterator[RunDir]:
        """Run `stages` as one transaction: yield a staging view of the run, commit on success.

        The view holds the run's committed artifacts (linked, read-only by convention) and the
        resolved recipe; the stages write their outputs into it. On success the outputs replace
        the run's in one journaled commit; on any failure or interrupt the view is deleted and
        the run is left exactly as it was.
        """
        plan(self, recipe, stages, changed=set())  # fail fast on recipe conflicts
        existed = self.root.exists()
        view = RunDir(self.root / STAGING / uuid.uuid4().hex[:12], home=self.root)
        try:
            view.root.mkdir(parents=True)
            owned = {name for stage in stages for name in STAGE_OUTPUTS[stage]}
            for entry in self.root.iterdir() if existed else []:
                if not entry.name.startswith(".") and entry.name not in owned | {"recipe.yaml"}:
                    (view.root / entry.name).symlink_to(Path("..", "..", entry.name))
            write_text(view.recipe, dump_recipe(recipe))
            yield view
            commit(self, refined(view, recipe), stages, view)
        finally:
            shutil.rmtree(view.root, ignore_errors=True)
            _tidy(self.root, existed)


def refined(view: RunDir, recipe: Recipe) -> Recipe:
    """The recipe the staged stages ran with: a stage may refine it by rewriting the view's
    recipe.yaml (train.fit: auto applies the memory fix it chose), and the commit records that."""
    from tunesmith.recipe import load_recipe

    if view.recipe.read_text(encoding="utf-8") == dump_recipe(recipe):
        return recipe
    return load_recipe(view.recipe)


def _tidy(root: Path, existed: bool) -> None:
    """Remove empty scaffolding; a run dir this command created and never committed goes away."""
    for sub in (root / STAGING, root / WORK):
        if sub.is_dir() and not any(sub.iterdir()):
            sub.rmdir()
    if not existed and root.is_dir() and not any(p for p in root.iterdir() if p.name != ".lock"):
        shutil.rmtree(root, ignore_errors=True)


def open_run(recipe: Recipe) -> RunDir:
    """The recipe's run dir. Nothing is written until a stage commits; a commit that a killed
    process left half done is completed first."""
    return open_run_dir(recipe.run_dir)


def location_problem(path: Path | str) -> str | None:
    """Why `path` cannot be a run directory before anything is read in it: it does not exist, or
    it is a file (None when it is a directory)."""
    path = Path(path)
    if not path.exists():
        return f"{shown_path(path)}: no such directory. Give the directory of a run, e.g. runs/demo"
    if not path.is_dir():
        return f"{path}: a file, not a run directory. Give the directory of a run, e.g. runs/demo"
    return None


def open_run_dir(path: Path | str) -> RunDir:
    run = RunDir(Path(path))
    if (run.root / JOURNAL).exists():
        with _locked(run):
            _roll_forward(run)
    return run


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1}} -> {"train.lr": 1}."""
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def _covered(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def differences(old: dict[str, Any], new: dict[str, Any], *key_sets: tuple[str, ...]) -> list[str]:
    """`key: old -> new` for every flattened key covered by all `key_sets` whose value differs."""
    a, b = flatten(old), flatten(new)
    keys = [k for k in sorted(set(a) | set(b))
            if all(_covered(k, s) for s in key_sets) and not _covered(k, NEUTRAL_KEYS)]
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


def plan(run: RunDir, recipe: Recipe, stages: tuple[str, ...], changed: set[str]) -> list[str]:
    """The committed stages that committing `stages` (of which `changed` produced new artifacts)
    with `recipe` makes stale, to be removed. Raises ConfigError when that would lose expensive
    artifacts (a model, a study) or leave recipe.yaml describing something that did not happen."""
    new = recipe.model_dump(mode="json")
    ours = tuple(k for s in stages for k in STAGE_KEYS[s])
    stale = []
    for other, info in run.committed_stages().items():
        if other in stages:
            continue
        old = info.get("recipe", {})
        causes = [c for s in stages if other in DOWNSTREAM[s]
                  for c in ([f"new {s} artifacts"] if s in changed else differences(old, new, STAGE_KEYS[s]))]
        if causes:
            if other in PROTECTED:
                raise ConfigError(
                    f"{run.root}: this would make its {other} artifacts stale ({'; '.join(causes[:3])}). "
                    f"Run `tunesmith {'train' if other == 'train' else 'tune'}` with this recipe to "
                    "replace them, or write to a new run with output.run_name=NAME.")
            stale.append(other)
            continue
        conflicts = differences(old, new, STAGE_KEYS[other], ours)
        if conflicts:
            raise ConfigError(
                f"{run.root}: its {other} artifacts were made with other recipe values "
                f"({'; '.join(conflicts[:3])}{' ...' if len(conflicts) > 3 else ''}). Use the run's "
                f"own recipe ({run.recipe}), re-run the {other} stage with this one, or write to a "
                "new run with output.run_name=NAME.")
    return stale


def commit(run: RunDir, recipe: Recipe, stages: tuple[str, ...], view: RunDir) -> None:
    """Move the staged outputs of `stages` into the run in one journaled step."""
    with _locked(run):
        _roll_forward(run)
        manifest = read_json(run.manifest) if run.manifest.exists() else {"artifacts": {}, "stages": {}}
        manifest.setdefault("stages", {})
        new = recipe.model_dump(mode="json")
        hashes: dict[str, dict[str, str]] = {}
        changed = set()
        for stage in stages:
            staged = [view.root / n for n in STAGE_OUTPUTS[stage]
                      if (view.root / n).exists() and not (view.root / n).is_symlink()]
            hashes[stage] = {str(p.relative_to(view.root)): sha256_file(p) for p in _files(staged)}
            before = {k: v["sha256"] for k, v in manifest["artifacts"].items() if v["stage"] == stage}
            recorded = manifest["stages"].get(stage, {}).get("recipe")
            if hashes[stage] != before or recorded is None or differences(recorded, new, STAGE_KEYS[stage]):
                changed.add(stage)
        stale = plan(run, recipe, stages, changed)
        if not changed and not stale:
            return  # the run already holds exactly these artifacts, made with these values
        moves, removals = [], []
        for stage in sorted(changed, key=stages.index):
            for name in STAGE_OUTPUTS[stage]:
                staged = view.root / name
                if staged.exists() and not staged.is_symlink():
                    moves.append([str(staged), str(run.root / name)])
                elif stage not in MERGED:
                    removals.append(str(run.root / name))
        for other in stale:
            removals += [str(run.root / name) for name in STAGE_OUTPUTS[other]]
        gone = (changed - MERGED) | set(stale)  # a merged stage keeps the files earlier runs added
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        manifest["artifacts"] = {k: v for k, v in manifest["artifacts"].items() if v["stage"] not in gone}
        for stage in stale:
            manifest["stages"].pop(stage, None)
        for stage in changed:
            manifest["artifacts"].update({k: {"sha256": h, "stage": stage, "time": when}
                                          for k, h in hashes[stage].items()})
            manifest["stages"][stage] = {"time": when, "recipe": new}
        journal = {"moves": moves, "remove": removals, "manifest": manifest,
                   "recipe": dump_recipe(_describing_all(recipe, manifest["stages"], changed)),
                   "merge": sorted(MERGED & changed)}
        with signals_deferred():
            write_json(run.root / JOURNAL, journal)
            _roll_forward(run)
    if stale:
        from tunesmith.console import note

        note(f"{run.root}: removed its {', '.join(stale)} artifacts, built from what this command "
             "replaced.")


def _describing_all(recipe: Recipe, stages: dict[str, Any], changed: set[str]) -> Recipe:
    """recipe.yaml after a commit: the new recipe, with the values that the stages left in place
    were made with (they agree with it wherever the new stages depend on them)."""
    from tunesmith.recipe import recipe_from_dict

    nested = recipe.model_dump(mode="json")
    for stage, info in stages.items():
        if stage in changed:
            continue
        for prefix in STAGE_KEYS[stage]:  # dotted paths of sections and fields (no dots in names)
            *parents, leaf = prefix.split(".")
            source, target = info.get("recipe", {}), nested
            for part in parents:
                source, target = source.get(part, {}), target.setdefault(part, {})
            if leaf in source:
                target[leaf] = source[leaf]
    return recipe_from_dict(nested, "recipe.yaml")


def _roll_forward(run: RunDir) -> None:
    """Finish the commit described by the journal; every step can be repeated safely."""
    path = run.root / JOURNAL
    if not path.exists():
        return
    journal = read_json(path)
    trash = run.root / ".trash"
    trash.mkdir(exist_ok=True)
    for target in journal["remove"]:
        if os.path.lexists(target):
            os.replace(target, trash / uuid.uuid4().hex)
    for source, target in journal["moves"]:
        if not os.path.lexists(source):
            continue  # moved before the interruption
        if Path(target).name in journal.get("merge", []) and Path(target).is_dir():
            _merge_into(Path(source), Path(target), trash)
            continue
        if os.path.lexists(target):
            os.replace(target, trash / uuid.uuid4().hex)
        os.replace(source, target)
    write_json(run.manifest, journal["manifest"])
    write_text(run.recipe, journal["recipe"])
    path.unlink()
    shutil.rmtree(trash, ignore_errors=True)


def _merge_into(source: Path, target: Path, trash: Path) -> None:
    """Move every entry of `source` into `target`, replacing same-named ones (tuning workers
    sharing a run add their trials to one tune/ directory)."""
    for entry in list(source.iterdir()):
        destination = target / entry.name
        if entry.name == "trials" and entry.is_dir() and destination.is_dir():
            _merge_into(entry, destination, trash)
            continue
        if os.path.lexists(destination):
            os.replace(destination, trash / uuid.uuid4().hex)
        os.replace(entry, destination)
    shutil.rmtree(source, ignore_errors=True)


@contextlib.contextmanager
def _locked(run: RunDir) -> Iterator[None]:
    """One commit at a time per run (tuning workers on one machine share a run dir)."""
    run.root.mkdir(parents=True, exist_ok=True)
    with open(run.root / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block ends (a commit is never cut in half by Ctrl-C)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {s: signal.signal(s, lambda number, _frame: received.append(number))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if received:
            raise KeyboardInterrupt


def _files(paths: Iterable[Path]) -> list[Path]:
    out = []
    for path in paths:
        out += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return out
