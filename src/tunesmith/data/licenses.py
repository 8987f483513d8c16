"""Data rights: the license of every data file, checked against the declared use before any work,
and the terms a model trained on them inherits.

    files = resolve(recipe.data, recipe.train.init_adapter)   # one FileLicense per data file
    warnings = check(recipe, files)           # ConfigError when a training file's license forbids the use
    section = report_section(recipe, files)   # data/report.json's `licenses`, read by the model card

Where a file's license comes from, first found:
1. `data.licenses` in the recipe: the file's path, or a glob (`data/*.jsonl`; a pattern without a
   `/` matches the file's name); exact paths first, then patterns in the order written;
2. a dataset card beside the file (README.md with YAML front matter, as the Hub writes them, and
   as `tunesmith feedback export` writes its own: the served run's license and users' consent, for
   the files it lists in `tunesmith.files`);
3. a saved HF datasets directory's own `dataset_info.json` (its `license`);
else it is `unknown`. A run that continues an earlier run's adapter (`train.init_adapter`) also
lists that run's training files: the model learned from them too. What a license allows is
tunesmith/licenses.py's table, which judges the base model's license too. Only training files
pass their terms on to the model; the evaluation files are listed with theirs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath

from tunesmith.artifacts import DataLicenses, FileLicense
from tunesmith.errors import ConfigError, DataError
from tunesmith.files import sha256_file
from tunesmith.licenses import CardError, Terms, card_license, card_metadata, card_terms, verdict
from tunesmith.recipe import DataConfig, Recipe


@dataclass(frozen=True)
class Found:
    license: str
    declared_in: str
    source: str | None = None
    attribution: str | None = None
    consent: str | None = None


def data_paths(cfg: DataConfig) -> list[tuple[str, str]]:
    """(path, role) of every data file in the recipe: train, then val, test and each eval set."""
    named = [("val", cfg.val), ("test", cfg.test), *((f"eval set {k}", v) for k, v in cfg.eval_sets.items())]
    return [(p, "train") for p in cfg.train] + [(p, role) for role, p in named if p]


def _plain(path: str) -> str:
    return PurePosixPath(path.replace("\\", "/")).as_posix()


def _absolute(path: str) -> str:
    return _plain(str(Path(path).absolute()))


def matches(pattern: str, path: str) -> bool:
    """A pattern without a / matches the file's name; one with a / the path as written, or both
    made absolute (from the working directory). `*` matches across / as well."""
    if "/" not in pattern.replace("\\", "/"):
        return fnmatch(PurePosixPath(_plain(path)).name, pattern)
    pairs = ((_plain(path), _plain(pattern)), (_absolute(path), _absolute(pattern)))
    return any(fnmatch(p, q) for p, q in pairs)


def _from_recipe(cfg: DataConfig, path: str) -> Found | None:
    exact = [k for k in cfg.licenses if _absolute(k) == _absolute(path)]
    key = next(iter(exact), None) or next((k for k in cfg.licenses if matches(k, path)), None)
    if key is None:
        return None
    entry = cfg.licenses[key]
    return Found(entry.license, f"data.licenses[{key!r}]", entry.source, entry.attribution)


def _from_card(path: Path) -> Found | None:
    readme = (path if path.is_dir() else path.parent) / "README.md"
    try:
        meta = card_metadata(readme)
        found = card_license(meta, readme)
    except CardError as error:
        raise DataError(f"{error}: the dataset card beside {path} gives no usable license. Fix the card's "
                        f"`license:` (an SPDX id such as cc-by-4.0, or a list of them), or set "
                        f"data.licenses: {{{path}: <SPDX id>}} in the recipe.") from None
    own = meta.get("tunesmith") if found and isinstance(meta.get("tunesmith"), dict) else {}
    covered = own.get("files")
    if found is None or (isinstance(covered, list) and path.name not in covered):
        return None  # no license, or a card of other files beside it (a feedback export's)
    source = own.get("source") or meta.get("pretty_name")
    return Found(found, str(readme), str(source) if source else None, consent=own.get("consent"))


def _from_dataset_info(path: Path) -> Found | None:
    if not path.is_dir():
        return None
    infos = [path / "dataset_info.json", *sorted(path.glob("*/dataset_info.json"))]
    info = next((i for i in infos if i.is_file()), None)
    if info is None:
        return None
    try:
        value = json.loads(info.read_text(encoding="utf-8")).get("license")
    except (ValueError, AttributeError):
        raise DataError(f"{info}: not a JSON object. Fix it, or set data.licenses: {{{path}: <SPDX id>}} "
                        "in the recipe.") from None
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise DataError(f"{info}: license: {value!r} is not a license id. Set data.licenses: "
                        f"{{{path}: <SPDX id>}} in the recipe.")
    return Found(value.strip(), str(info), str(info.parent))


def _unmatched(cfg: DataConfig) -> None:
    paths = [p for p, _ in data_paths(cfg)]
    for key in cfg.licenses:
        if not any(matches(key, p) for p in paths):
            raise ConfigError(f"data.licenses: {key!r} matches none of the data files ({', '.join(paths)}). "
                              "Fix the path or pattern (a pattern without a / matches file names), or "
                              "remove the entry.")


def continued(init_adapter: str | None, paths: set[str]) -> list[FileLicense]:
    """The training files of the run whose adapter this one continues (train.init_adapter: an
    earlier run's model/, whose data/report.json lists them): the model learned from them too.
    Files this run trains on again are left to this run's own entries."""
    report = Path(init_adapter).parent / "data" / "report.json" if init_adapter else None
    if report is None or not report.is_file():
        return []
    try:
        section = json.loads(report.read_text(encoding="utf-8")).get("licenses") or {}
        earlier = [FileLicense.model_validate(f) for f in section.get("files", [])]
    except (ValueError, AttributeError):
        return []  # an earlier run's report that cannot be read passes nothing on; the card says so
    return [f.model_copy(update={"via": f.via or init_adapter, "rows_kept": None})
            for f in earlier if f.role == "train" and _absolute(f.path) not in paths]


def resolve(cfg: DataConfig, init_adapter: str | None = None) -> list[FileLicense]:
    """Every data file's license (see the module's doc), and those of the files an adapter it
    continues was trained on; ConfigError for a recipe entry that matches no file, DataError for
    a dataset card whose license cannot be read."""
    _unmatched(cfg)
    out = []
    for path, role in data_paths(cfg):
        found = (_from_recipe(cfg, path) or _from_card(Path(path)) or _from_dataset_info(Path(path))
                 or Found("unknown", "nowhere"))
        out.append(FileLicense(path=path, role=role, license=card_terms(found.license).id,
                               declared_in=found.declared_in,
                               source=found.source, attribution=found.attribution, consent=found.consent))
    return out + continued(init_adapter, {_absolute(p) for p, _ in data_paths(cfg)})


def terms_of(entry: FileLicense) -> Terms:
    return card_terms(entry.license)


def _refusal(recipe: Recipe, entry: FileLicense) -> str | None:
    if entry.consent == "none":
        return (f"{entry.path}: its users did not agree that their conversations train models "
                f"(monitor.consent: none, {entry.declared_in})")
    why, _ = verdict(terms_of(entry), recipe.model.intended_use, recipe.data.accept_license)
    via = f", learned by the adapter {entry.via} (train.init_adapter)" if entry.via else ""
    return f"{entry.path}: license {entry.license}, from {entry.declared_in}{via}: {why}" if why else None


def _warning(recipe: Recipe, entry: FileLicense) -> str | None:
    terms = terms_of(entry)
    _, note = verdict(terms, recipe.model.intended_use, recipe.data.accept_license)
    notes = [note] if note else []
    if note and terms.attribution and not entry.attribution and "attribution" in note:
        notes.append(f"set data.licenses['{entry.path}'].attribution to the credit it asks for")
    if entry.consent == "unknown":
        notes.append("its users' consent to training is unknown (the served run's monitor.consent)")
    return f"{entry.path} ({entry.license}): " + "; ".join(notes) if notes else None


def check(recipe: Recipe, files: list[FileLicense]) -> list[str]:
    """The training files' licenses against model.intended_use: ConfigError naming every file
    whose license forbids it, with the fix; else one warning per file with terms to heed."""
    training = [f for f in files if f.role == "train"]
    refused = [(f, why) for f in training if (why := _refusal(recipe, f))]
    if refused:
        ids = sorted({f.license for f, _ in refused if f.consent != "none"})
        use = f"; model.intended_use is {recipe.model.intended_use}" if ids else ""
        fix = "Drop the file from data.train" + (
            " (or, for a file the adapter in train.init_adapter learned, start from a fresh adapter)"
            if any(f.via for f, _ in refused) else "")
        if len(ids) == 1:
            fix += f", or, if you hold a separate agreement, set data.accept_license: {ids[0]}"
        elif ids:
            fix += f", or list the licenses you hold agreements for in data.accept_license ({', '.join(ids)})"
        raise ConfigError(f"data.train: {'; '.join(why for _, why in refused)}{use}. {fix}.")
    return [w for f in training if (w := _warning(recipe, f))]


SPLIT_OF = {"train": "train", "val": "val", "test": "test"}


def _rows_kept(entry: FileLicense, splits: dict[str, list[dict]]) -> int | None:
    """The file's rows in the split it feeds (a training file: the training split)."""
    split = SPLIT_OF.get(entry.role) or entry.role.removeprefix("eval set ")
    if split not in splits:
        return None
    source = str(Path(entry.path))
    return sum(1 for r in splits[split] if str(r.get("meta", {}).get("source")) == source)


def report_section(recipe: Recipe, files: list[FileLicense],
                   splits: dict[str, list[dict]] | None = None) -> DataLicenses:
    """data/report.json's `licenses`: each file with its hash and the rows it kept."""
    for entry in files:
        if entry.via:
            continue  # an earlier run's file: its hash was recorded there, and no row of it is here
        path = Path(entry.path)
        entry.sha256 = sha256_file(path) if path.is_file() else None
        entry.rows_kept = _rows_kept(entry, splits or {})
    return DataLicenses(files=files, intended_use=recipe.model.intended_use,
                        accepted=list(recipe.data.accept_license))


# -- what the model inherits -----------------------------------------------------------------

def _names(entries: list[FileLicense]) -> str:
    return ", ".join(f"`{Path(e.path).name}`" + (f" via the adapter {e.via}" if e.via else "")
                     for e in entries)


def _grouped(entries: list[FileLicense]) -> dict[str, list[FileLicense]]:
    groups: dict[str, list[FileLicense]] = {}
    for entry in entries:
        groups.setdefault(entry.license, []).append(entry)
    return groups


def _credit(entries: list[FileLicense]) -> str:
    return "; ".join(dict.fromkeys(e.attribution or e.source or f"the authors of {Path(e.path).name}"
                                   for e in entries))


def inherited(section: DataLicenses) -> list[str]:
    """The terms a model trained on these files inherits, one line per license and term."""
    lines = []
    for license_id, entries in _grouped([f for f in section.files if f.role == "train"]).items():
        terms, names = card_terms(license_id), _names(entries)
        accepted = any(license_id.lower() == a.lower() for a in section.accepted)
        also = " (accepted by data.accept_license: a separate agreement)" if accepted else ""
        if terms.commercial == "no":
            lines.append(f"non-commercial: trained on {terms.name} data ({names}){also}")
        if not terms.derivatives:
            lines.append(f"no derivatives: trained on {terms.name} data ({names}); the model may not be "
                         f"shared{also}")
        if terms.share_alike:
            lines.append(f"share-alike: trained on {terms.name} data ({names}); share the model under the "
                         "same terms")
        if terms.attribution:
            lines.append(f"attribution: credit {_credit(entries)} ({terms.name})")
        if terms.commercial == "conditions":
            lines.append(f"conditions: {terms.conditions} ({names})")
        if not terms.known and terms.commercial != "no":
            lines.append(f"unknown: the terms of {names} ({terms.name}) are unknown; find them before you "
                         "share the model")
    for consent, entries in _by_consent(section).items():
        lines.append(f"user data: {_names(entries)} come from a served model's users, whose consent to "
                     f"training is {consent}")
    return lines


def _by_consent(section: DataLicenses) -> dict[str, list[FileLicense]]:
    groups: dict[str, list[FileLicense]] = {}
    for entry in section.files:
        if entry.role == "train" and entry.consent:
            groups.setdefault(entry.consent, []).append(entry)
    return groups


def restricts(terms: Terms) -> bool:
    """Terms that bind how the model itself may be licensed: non-commercial, no derivatives,
    share-alike, conditions."""
    return terms.commercial in ("no", "conditions") or not terms.derivatives or terms.share_alike


def model_license(base_license: str, section: DataLicenses | None) -> tuple[str, str | None]:
    """The model card's `license` (and `license_name` when it is `other`): the base model's,
    unless training data binds it further: then that data's license when the base is permissive
    and one license binds, else `other` named by every license that applies (A AND B)."""
    binding = [] if section is None else [f.license for f in section.files if f.role == "train"
                                          and restricts(card_terms(f.license))]
    binding = [b for b in dict.fromkeys(binding) if b.lower() != base_license.lower()]
    if not binding:
        return base_license, None
    if len(binding) == 1 and not restricts(card_terms(base_license)) and card_terms(base_license).known:
        return binding[0], None
    return "other", " AND ".join([base_license, *binding])
