"""Every public file in ../shared/fixtures/real/ through the CLI, as a user brings it: `data inspect`
names the right format with 0 invalid rows and exits 0; `data prepare` and `train` (2 steps on the
tiny model, with the method its kind trains with) exit 0. A file added there without a row here
fails `test_every_real_file_has_a_row`."""

from __future__ import annotations

import pytest

from conftest import REAL
from tunesmith.cli import main

# file -> (format, kind, rows, extra overrides for training); kind None: not trained (documentation)
MATRIX = {
    "alpaca_en_demo.json": ("alpaca", "chat", 999, []),
    "alpaca_zh_demo.json": ("alpaca", "chat", 60, []),
    "dpo_en_demo.json": ("dpo", "preference", 40, ["train.method=dpo"]),
    "dummy_conversation.json": ("sharegpt", "chat", 500, []),
    "glaive_toolcall_en_demo.json": ("sharegpt", "chat", 60, []),
    "identity.json": ("alpaca", "chat", 91, []),
    "kto_en_demo.json": ("kto", "preference", 40, ["train.method=kto"]),
    "mllm_demo.json": ("openai", "chat", 6, []),
    "reason_tool_use_demo.jsonl": ("openai", "chat", 20, []),
    "v1_dpo_demo.jsonl": ("dpo_messages", "preference", 10, ["train.method=dpo"]),
    "v1_sft_demo.jsonl": ("openai", "chat", 60, []),
    "wiki_demo.txt": ("text", "text", 1, ["data.text_separator=\\n"]),
    "README.md": ("text", "text", 1, None),
}


def cli(capsys, *argv: str) -> tuple[int, str]:
    """Run the CLI in this process (its one entry point, `main`), returning exit code and output."""
    with pytest.raises(SystemExit) as done:
        main(list(argv))
    captured = capsys.readouterr()
    return done.value.code, captured.out + captured.err


def test_every_real_file_has_a_row():
    assert sorted(p.name for p in REAL.iterdir()) == sorted(MATRIX)


@pytest.mark.parametrize("name", sorted(MATRIX))
def test_inspect_names_the_format_and_finds_no_invalid_row(name, tiny_model_dir, capsys):
    fmt, kind, rows, _ = MATRIX[name]
    code, output = cli(capsys, "data", "inspect", str(REAL / name), f"model.name={tiny_model_dir}")
    assert code == 0, output
    assert "internal error" not in output and "Traceback" not in output
    assert f"{fmt} ({kind} records)" in output
    assert f"{rows} ({rows} valid, 0 invalid)" in output
    assert "tokens per row" in output and "duplicates removed" in output


@pytest.mark.parametrize("name", sorted(n for n, row in MATRIX.items() if row[3] is not None))
def test_prepare_and_train_two_steps(name, tiny_model_dir, tmp_path, capsys):
    fmt, kind, rows, extra = MATRIX[name]
    overrides = [f"model.name={tiny_model_dir}", f"data.train={REAL / name}", "data.max_rows=24",
                 "data.val_fraction=0", "data.filters.max_tokens=1000000", "train.max_steps=2",
                 "train.batch_size=2", "train.max_length=2048", f"output.dir={tmp_path}", "name=matrix",
                 *extra]
    code, output = cli(capsys, "data", "prepare", "-", *overrides)  # no recipe file: "-" is refused
    assert code == 2 and "recipe not found" in output
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("name: matrix\n")
    code, output = cli(capsys, "data", "prepare", str(recipe), *overrides)
    assert code == 0, output
    assert (tmp_path / "matrix" / "data" / "train.jsonl").exists()
    code, output = cli(capsys, "train", str(recipe), *overrides)
    assert code == 0, output
    assert "trained 2 steps" in output


def test_preference_token_statistics_count_every_row(tiny_model_dir):
    """Every pair is measured (the length cache once keyed preference rows on nothing: one number
    four times)."""
    from tunesmith.data.inspect import inspect_file
    from tunesmith.recipe import load_recipe

    recipe = load_recipe(None, [f"model.name={tiny_model_dir}"])
    for name in ("dpo_en_demo.json", "v1_dpo_demo.jsonl", "kto_en_demo.json"):
        tokens = inspect_file(str(REAL / name), recipe).tokens
        assert tokens["p50"] < tokens["p90"] < tokens["max"], (name, tokens)


def test_figures_of_chinese_text_warn_once_not_per_glyph(capsys):
    """alpaca_zh's answers in a figure: with no CJK font installed, one note on stderr and no
    matplotlib warning per glyph; with one installed, no note at all."""
    import warnings

    from tunesmith import render

    def draw(axis):
        axis.barh(["在 2050 年之前", "人工智能的未来"], [3, 5])

    render._note_missing_glyphs.cache_clear()  # once per process: start this test's process anew
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            assert render.figure_png(draw)
    assert not [w for w in caught if "Glyph" in str(w.message)]
    notes = capsys.readouterr().err.count("no installed font has")
    has_cjk = any("CJK" in name or "WenQuanYi" in name or "Droid" in name for name in render._font_families())
    assert notes == (0 if has_cjk else 1)
