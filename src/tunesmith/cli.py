"""The command line: one command per stage, `run` for the whole pipeline, and `demo`.

    tunesmith demo
    tunesmith run RECIPE [key.sub=value ...] [--resume]
    tunesmith data inspect FILE [--recipe RECIPE]
    tunesmith data prepare RECIPE [key.sub=value ...]
    tunesmith train RECIPE [key.sub=value ...] [--resume]
    tunesmith eval RECIPE [key.sub=value ...]
    tunesmith tune RECIPE [--storage URL --study NAME --trials N]
    tunesmith report RUN_DIR
    tunesmith compare RUN_A RUN_B [...] [--html PAGE]

Mistakes in input (recipe, data, model) print one located message and exit with code 2.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import typer
from rich.console import Console

from tunesmith.errors import QualityGateError, TunesmithError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fine-tune language models with the best practices built in.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect and prepare data.")
app.add_typer(data_app, name="data")
console = Console()

RecipeArg = typer.Argument(..., help="Path of a YAML recipe.", show_default=False)
OverridesArg = typer.Argument(None, help="Overrides such as train.lr=3e-4 data.on_invalid=skip.",
                              show_default=False)


def _recipe(path: str | None, overrides: list[str] | None):
    from tunesmith.recipe import load_recipe

    return load_recipe(path, overrides or [])


@data_app.command("inspect")
def data_inspect(
    file: str = typer.Argument(..., help="A data file or saved HF datasets dir."),
    recipe: str | None = typer.Option(None, help="Recipe whose tokenizer, format and columns to use."),
    overrides: list[str] | None = OverridesArg,
) -> None:
    """Detected format, counts, token lengths, invalid rows and examples of one file."""
    from tunesmith.data.inspect import inspect_file, print_report

    print_report(inspect_file(file, _recipe(recipe, overrides)))


@data_app.command("prepare")
def data_prepare(recipe: str = RecipeArg, overrides: list[str] | None = OverridesArg) -> None:
    """Validate, convert and split the recipe's data into runs/<run>/data/."""
    from tunesmith import data
    from tunesmith.rundir import open_run

    parsed = _recipe(recipe, overrides)
    result = data.run(parsed, open_run(parsed))
    data.print_stats(result.stats)


@app.command("train")
def train_command(
    recipe: str = RecipeArg,
    overrides: list[str] | None = OverridesArg,
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint."),
) -> None:
    """Fine-tune (prepares the data first if the run has none)."""
    from tunesmith import data, train
    from tunesmith.rundir import open_run

    parsed = _recipe(recipe, overrides)
    run_dir = open_run(parsed)
    if not (resume and run_dir.split("train").exists()):
        data.print_stats(data.run(parsed, run_dir).stats)
    result = train.run(parsed, run_dir, resume=resume)
    console.print(f"trained {result.steps} steps, {result.tokens_per_second:.0f} tokens/s; "
                  f"model in {result.model_dir}", highlight=False)


@app.command("eval")
def eval_command(recipe: str = RecipeArg, overrides: list[str] | None = OverridesArg) -> None:
    """Score the base and fine-tuned models on the same test / eval-set examples."""
    from tunesmith import evaluate, report
    from tunesmith.evaluate.table import print_summary
    from tunesmith.rundir import open_run

    parsed = _recipe(recipe, overrides)
    run_dir = open_run(parsed)
    try:
        summary = evaluate.run(parsed, run_dir).summary
    finally:
        if (run_dir.eval / "summary.json").exists():
            report.run(run_dir)
    print_summary(summary, run_dir)


@app.command("tune")
def tune_command(
    recipe: str = RecipeArg,
    overrides: list[str] | None = OverridesArg,
    storage: str | None = typer.Option(None, help="Optuna storage URL, e.g. postgresql://user@host/db."),
    study: str | None = typer.Option(None, help="Study name shared by all workers."),
    trials: int | None = typer.Option(None, help="Trials for this worker (default tune.trials)."),
) -> None:
    """Search hyperparameters (tune.space); writes tune/trials.csv and tune/best.yaml."""
    from tunesmith import tune
    from tunesmith.rundir import open_run

    parsed = _recipe(recipe, overrides)
    result = tune.run(parsed, open_run(parsed), storage=storage, study_name=study, trials=trials)
    console.print(f"{result.trials} trials ({result.pruned} pruned); best validation loss "
                  f"{result.best_value} with {result.best_params}", highlight=False)
    console.print(f"replay the best: tunesmith run {result.best_recipe}", highlight=False)
    if parsed.tune.cv_folds >= 2 and result.best_params:
        tune.retrain_best(result.best_recipe)


@app.command("report")
def report_command(run_dir: str = typer.Argument(..., help="A run directory, e.g. runs/demo.")) -> None:
    """Rebuild the model card (README.md) and report.html of a run from its directory."""
    from tunesmith import report
    from tunesmith.errors import ConfigError
    from tunesmith.rundir import RunDir

    run = RunDir(Path(run_dir))
    if not run.recipe.exists():
        raise ConfigError(f"{run_dir}: not a run directory (no recipe.yaml).")
    result = report.run(run)
    console.print(f"model card: {result.card}\nreport: {result.html}", highlight=False)


@app.command("compare")
def compare_command(
    run_dirs: list[str] = typer.Argument(..., help="Two or more evaluated run directories."),
    html: str | None = typer.Option(None, "--html", help="Also write a comparison page here."),
) -> None:
    """Recipe differences and metric deltas (paired CIs) between runs."""
    from tunesmith.report.compare import compare, print_comparison, write_comparison_html

    result = compare(run_dirs)
    print_comparison(result)
    if html:
        write_comparison_html(result, Path(html))
        console.print(f"comparison page: {html}", highlight=False)


@app.command("run")
def run_command(
    recipe: str = RecipeArg,
    overrides: list[str] | None = OverridesArg,
    resume: bool = typer.Option(False, "--resume", help="Continue training from the last checkpoint."),
) -> None:
    """The whole pipeline: data -> train -> evaluate."""
    from tunesmith import pipeline

    pipeline.run(_recipe(recipe, overrides), resume=resume)


@app.command("demo")
def demo_command(
    data_dir: str = typer.Option("data/demo", help="Where to write the generated demo data."),
    overrides: list[str] | None = OverridesArg,
) -> None:
    """Generate the ticket-triage data and run the demo recipe on the embedded SmolLM2."""
    import time
    from importlib.resources import files

    from tunesmith import pipeline
    from tunesmith.demo import tickets

    started = time.time()
    paths = tickets.write(data_dir)
    console.print(f"demo data written to {Path(data_dir)}/ "
                  f"({', '.join(p.name for p in paths.values())})", highlight=False)
    recipe_path = str(files("tunesmith.demo") / "recipe.yaml")
    data_overrides = [f"data.train={paths['train']}", f"data.test={paths['test']}",
                      f"data.eval_sets.ood={paths['ood']}"]
    pipeline.run(_recipe(recipe_path, data_overrides + list(overrides or [])))
    console.print(f"demo wall time: {time.time() - started:.0f} s")


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # transformers 5 renames (gradient -> activation checkpointing) that the user cannot act on
    warnings.filterwarnings("ignore", message=".*will be removed in v6.*", category=FutureWarning)
    try:
        app()
    except QualityGateError as error:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]failed:[/] {error}", highlight=False)
        sys.exit(1)
    except TunesmithError as error:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {error}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
