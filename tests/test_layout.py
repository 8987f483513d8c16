"""The layering of DESIGN.md, checked on the source: a stage imports only what lies below it.

Layers, lowest first: the shared base (errors, console and the license table; recipe, records and
figures; per-answer scores; rundir; models), then the stages in the order they run (data; train;
tune and evaluate, which must not import each other; monitor; report and serve), then what drives
them (pipeline; the demo, which runs the pipeline and serves its run; cli). A module
may import its own package and anything in a lower layer; every `tunesmith.*` import counts,
including those inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "tunesmith"
LAYERS = [
    {"errors", "console", "files", "formatting", "events", "interrupts", "licenses", "explain"},
    {"recipe", "records", "artifacts", "render"},
    {"answer_scores"},
    {"rundir"},
    {"track"},
    {"models"},
    {"data"},
    {"train"},
    {"tune", "evaluate"},
    {"monitor"},
    {"report", "serve"},
    {"export"},
    {"pipeline"},
    {"curve"},
    {"demo"},
    {"cli"},
    {"__main__"},
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def _unit(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "tunesmith" and len(parts) > 1 else None


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, tunesmith unit) of every import in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, _unit(alias.name)) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "tunesmith":  # from tunesmith import data, train
                found += [(node.lineno, alias.name) for alias in node.names]
            else:
                found.append((node.lineno, _unit(node.module)))
    return [(line, unit) for line, unit in found if unit and unit != "__version__"]


def test_every_module_has_a_layer():
    units = {p.stem if p.parent == SRC else p.relative_to(SRC).parts[0] for p in SRC.rglob("*.py")}
    assert units - {"__init__"} <= set(RANK), sorted(units - set(RANK) - {"__init__"})


def test_no_stage_imports_one_above_it_or_beside_it():
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        own = path.stem if path.parent == SRC else path.relative_to(SRC).parts[0]
        if own == "__init__":
            continue
        for line, unit in imports(path):
            if unit != own and RANK[unit] >= RANK[own]:
                wrong.append(f"{path.relative_to(SRC)}:{line} ({own}) imports {unit}")
    assert not wrong, "\n".join(wrong)


def test_the_check_catches_an_upward_import(tmp_path):
    """The scan itself works: an import of a later stage is found, with its line."""
    sample = tmp_path / "sample.py"
    sample.write_text("import json\n\ndef f():\n    from tunesmith import report\n"
                      "    from tunesmith.train import run\n")
    assert imports(sample) == [(4, "report"), (5, "train")]


MAX_FUNCTION_LINES = 60
REASON = "# long:"
"""A function may run longer, or define a class inside it, when a comment on the line above
its `def` starting with `# long:` says why."""


def _excused(lines: list[str], node: ast.AST) -> bool:
    above = lines[node.lineno - 2].strip() if node.lineno >= 2 else ""
    return above.startswith(REASON)


def long_functions(path: Path) -> list[str]:
    """Functions over the limit and classes defined inside functions, without a reason comment."""
    text = path.read_text(encoding="utf-8")
    lines, found = text.splitlines(), []
    for node in ast.walk(ast.parse(text)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or _excused(lines, node):
            continue
        length = node.end_lineno - node.lineno + 1
        if length > MAX_FUNCTION_LINES:
            found.append(f"{path.name}:{node.lineno} {node.name} is {length} lines")
        found += [f"{path.name}:{inner.lineno} class {inner.name} inside {node.name}"
                  for inner in ast.walk(node) if isinstance(inner, ast.ClassDef)]
    return found


def test_no_function_a_reader_cannot_hold_in_their_head():
    wrong = [problem for path in sorted(SRC.rglob("*.py")) for problem in long_functions(path)]
    assert not wrong, "\n".join(wrong)


def test_the_length_check_catches_a_long_function_and_an_inner_class(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    sample = tmp_path / "sample.py"
    sample.write_text(f"def long():\n{body}\n\ndef short():\n    class Inner:\n        pass\n\n"
                      f"# long: a table of constants reads best in one piece\ndef excused():\n{body}")
    assert long_functions(sample) == [f"sample.py:1 long is {MAX_FUNCTION_LINES + 1} lines",
                                      f"sample.py:{MAX_FUNCTION_LINES + 5} class Inner inside short"]


def test_every_data_file_ships_in_the_package():
    """Templates, probes and the demo recipe are read at run time: a wheel without them fails
    on first use, so each file under src/ that is not Python matches a package-data pattern."""
    import fnmatch

    import tomllib

    config = tomllib.loads((SRC.parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["tunesmith"]
    data = [p.relative_to(SRC).as_posix() for p in SRC.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts]
    missing = [f for f in data if not any(fnmatch.fnmatch(f, pattern) for pattern in patterns)]
    assert data and not missing, missing
