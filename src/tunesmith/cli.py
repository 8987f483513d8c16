"""The command line: one command per stage, `run` for the whole pipeline, and `demo`.

    tunesmith demo [--loop] [--rl [--seeds 42,1,2]] [--family encoder] [--bias]
    tunesmith run RECIPE [key.sub=value ...] [--resume]
    tunesmith data inspect FILE [--recipe RECIPE]
    tunesmith data prepare RECIPE [key.sub=value ...]
    tunesmith train RECIPE [key.sub=value ...] [--resume] [--watch] [--processes N [--accelerate-config FILE]]
    tunesmith eval RECIPE [key.sub=value ...]
    tunesmith tune RECIPE [--storage URL --study NAME --trials N]
    tunesmith serve RUN_DIR [--port 8000]     tunesmith export RUN_DIR OUT [--format gguf]
    tunesmith push RUN_DIR org/name
    tunesmith monitor RUN_DIR                 tunesmith feedback export RUN_DIR --out DIR
    tunesmith models list                     tunesmith models recommend --task T --memory 16GB
    tunesmith report RUN_DIR [--against OTHER_RUN]
    tunesmith compare RUN_A RUN_B [...] [--html PAGE]
    tunesmith --debug COMMAND ...        (tracebacks of internal errors)

Exit codes (the contract of errors.py, enforced in `main`): 0 done; 1 a quality gate failed
(results written); 2 a mistake in the input, printed as one line that says what, where and how
to fix it; 3 a bug in tunesmith; 130 interrupted. A failed or interrupted command leaves the
run directory as it was.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path

import typer

from tunesmith import interrupts
from tunesmith.console import out, problem

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, help="Fine-tune language models with the best practices built in.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect and prepare data.")
app.add_typer(data_app, name="data")
feedback_app = typer.Typer(no_args_is_help=True, help="What users said of a served model's answers.")
app.add_typer(feedback_app, name="feedback")
models_app = typer.Typer(no_args_is_help=True, help="The base-model catalog and advisor.")
app.add_typer(models_app, name="models")

RecipeArg = typer.Argument(..., help="Path of a YAML recipe.", show_default=False)
OverridesArg = typer.Argument(None, help="Overrides such as train.lr=3e-4 data.on_invalid=skip.",
                              show_default=False)
ResumeOpt = typer.Option(False, "--resume", help="Continue an interrupted training.")
WatchOpt = typer.Option(False, "--watch", help="Serve the live training report (loss curves, tokens/s, "
                        "guards, ETA) on http://127.0.0.1 while training runs.")
WatchPortOpt = typer.Option(8765, "--watch-port", min=0, max=65535, help="--watch's port (0: any free one).")
ProcessesOpt = typer.Option(1, "--processes", min=1, help="Worker processes on this machine, one per GPU "
                            "(accelerate: DDP, gloo on CPUs, NCCL on GPUs).")
AccelerateConfigOpt = typer.Option(None, "--accelerate-config",
                                   help="An accelerate config file (FSDP, DeepSpeed, machines).")
MachinesOpt = typer.Option(None, "--machines", min=1,
                           help="Machines in the launch (each runs this command).")
MachineRankOpt = typer.Option(None, "--machine-rank", min=0, help="This machine's rank (0 writes the run).")
MainAddressOpt = typer.Option(None, "--main-address",
                              help="Machine 0's address, reachable from every machine.")
MainPortOpt = typer.Option(None, "--main-port", min=1, max=65535, help="Machine 0's rendezvous port (29500).")
try:  # typer >= 0.2x vendors its own click (Exit and Abort are typer's); older ones use click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click import ClickException

BUG_REPORT = ("This is a bug in tunesmith, not in your input: please report it with the output of "
              "the same command run with --debug.")


@app.callback()
def root(debug: bool = typer.Option(False, "--debug", help="Show the traceback of internal errors.")) -> None:
    """Fine-tune language models with the best practices built in."""
    if debug:
        os.environ["TUNESMITH_DEBUG"] = "1"


def _pipeline():
    from tunesmith import pipeline  # imported when a command runs, so that `--help` stays quick

    return pipeline


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
    _pipeline().prepare(_recipe(recipe, overrides))


@app.command("train")
def train_command(
    recipe: str = RecipeArg, overrides: list[str] | None = OverridesArg, resume: bool = ResumeOpt,
    processes: int = ProcessesOpt, accelerate_config: str | None = AccelerateConfigOpt,
    machines: int | None = MachinesOpt, machine_rank: int | None = MachineRankOpt,
    main_address: str | None = MainAddressOpt, main_port: int | None = MainPortOpt,
    watch: bool = WatchOpt, watch_port: int = WatchPortOpt,
) -> None:
    """Fine-tune (prepares the data first)."""
    launch = _launch(processes, accelerate_config, machines, machine_rank, main_address, main_port)
    resolved = _recipe(recipe, overrides)
    with _watching(resolved, watch, watch_port):
        result = _pipeline().fine_tune(resolved, resume=resume, launch=launch)
    if not launch.writes_run:
        out.print(f"machine {launch.machine_rank}: training done; machine 0 writes the run")
        return
    out.print(f"trained {result.steps} steps, {result.tokens_per_second:.0f} tokens/s; "
              f"model in {result.model_dir}")


@contextlib.contextmanager
def _watching(recipe, watch: bool, port: int) -> Iterator[None]:
    """With --watch: the live training report served on loopback while the command runs."""
    if not watch:
        yield
        return
    from tunesmith.console import note
    from tunesmith.rundir import RunDir
    from tunesmith.train.watch import PAGE, serve_live

    try:
        server, url = serve_live(RunDir(recipe.run_dir).checkpoints / PAGE, port)
    except OSError as error:
        from tunesmith.errors import ConfigError

        raise ConfigError(f"--watch-port {port}: cannot listen on 127.0.0.1:{port} ({error.strerror}). "
                          "Choose another port, or 0 for any free one.") from None
    note(f"live report: {url}")
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def _launch(processes: int, accelerate_config: str | None, machines: int | None = None,
            machine_rank: int | None = None, main_address: str | None = None, main_port: int | None = None):
    from tunesmith.train.distributed import Launch, check_launch

    launch = Launch(processes, accelerate_config, machines, machine_rank, main_address, main_port)
    check_launch(launch)  # a wrong flag fails now, before the data stage
    return launch


@app.command("tune")
def tune_command(
    recipe: str = RecipeArg,
    overrides: list[str] | None = OverridesArg,
    storage: str | None = typer.Option(None, help="Optuna storage URL, e.g. postgresql://user@host/db."),
    study: str | None = typer.Option(None, help="Study name shared by all workers."),
    trials: int | None = typer.Option(None, min=1, help="Trials for this worker (default tune.trials)."),
    processes: int = typer.Option(1, "--processes", min=1, help="Tuning workers on this machine sharing "
                                  "the study, each on its own device (tune.devices)."),
) -> None:
    """Search hyperparameters (tune.space); writes tune/trials.csv and tune/best.yaml."""
    pipeline = _pipeline()
    parsed = _recipe(recipe, overrides)
    result = pipeline.search(parsed, storage=storage, study_name=study, trials=trials, processes=processes)
    out.print(f"{result.trials} trials ({result.pruned} pruned); best validation loss "
              f"{result.best_value} with {result.best_params}")
    out.print(f"replay the best: tunesmith run {result.best_recipe}")
    if parsed.tune.cv_folds >= 2 and result.best_params:
        pipeline.retrain_best(result.best_recipe)


@app.command("eval")
def eval_command(recipe: str = RecipeArg, overrides: list[str] | None = OverridesArg,
                 processes: int = typer.Option(1, "--processes", min=1, help="Generate in N worker processes "
                                               "on this machine, one GPU each (decoders).")) -> None:
    """Score the base and fine-tuned models on the same test / eval-set examples."""
    _pipeline().evaluate_run(_recipe(recipe, overrides), _launch(processes, None))


@app.command("report")
def report_command(
    run_dir: str = typer.Argument(..., help="A run directory, e.g. runs/demo."),
    against: str | None = typer.Option(None, "--against", help="Another evaluated run: the card and "
                                       "report show this run's paired deltas against it."),
) -> None:
    """Rebuild the model card (README.md) and report.html of a run from its directory."""
    from tunesmith import report
    from tunesmith.report.card import judge_lines
    from tunesmith.report.review import summarise, summary_text
    from tunesmith.report.sources import read_run
    from tunesmith.rundir import RunDir

    result = report.rebuild(Path(run_dir), Path(against) if against else None)
    run = read_run(RunDir(Path(run_dir)))
    found = summarise(run)
    out.print(summary_text(found), highlight=False, soft_wrap=True, markup=False)
    for line in judge_lines(run.evaluation.judge if run.evaluation else None, (found or {}).get("judge")):
        out.print(f"judge: {line}", highlight=False, soft_wrap=True, markup=False)
    out.print(f"model card: {result.card}\nreport: {result.html}")


@app.command("review")
def review_command(
    run_dir: str = typer.Argument(..., help="An evaluated run directory, e.g. runs/demo."),
    port: int = typer.Option(8765, "--port", help="Port on 127.0.0.1 (0: any free port)."),
) -> None:
    """Label the fine-tuned answers by hand (correct / wrong / harmful, from the keyboard) on a
    local page; `tunesmith report` then summarises the labels."""
    import uvicorn

    from tunesmith.errors import ConfigError
    from tunesmith.report.review_page import create_review_app
    from tunesmith.rundir import RunDir, location_problem

    problem = location_problem(run_dir)
    if problem:
        raise ConfigError(f"{problem}.")
    run = RunDir(Path(run_dir))
    if not run.recipe.is_file() or not run.predictions.is_file():
        raise ConfigError(f"{run_dir}: not an evaluated run directory (needs recipe.yaml and "
                          "eval/predictions.jsonl). Run `tunesmith eval` on it first.")
    app = create_review_app(run)
    out.print(f"review page: http://127.0.0.1:{port}/  (c correct, w wrong, h harmful, n note; Ctrl-C stops)")
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


@app.command("compare")
def compare_command(
    run_dirs: list[str] = typer.Argument(..., help="Two or more evaluated run directories."),
    html: str | None = typer.Option(None, "--html", help="Also write a comparison page here."),
) -> None:
    """Recipe differences and metric deltas (paired CIs) between runs."""
    from tunesmith.report.compare import compare, print_comparison, write_comparison_html

    page = _output_file(html, "--html") if html else None
    result = compare(run_dirs)
    print_comparison(result)
    if page:
        write_comparison_html(result, page)
        out.print(f"comparison page: {page}")


@app.command("serve")
def serve_command(
    target: str = typer.Argument(..., help="A run directory (runs/demo), a model directory or a hub id."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (beyond loopback needs an API key)."),
    port: int = typer.Option(8000, min=1, max=65535),
    api_key_file: str | None = typer.Option(None, help="A file with one API key a line."),
    insecure: bool = typer.Option(False, "--insecure", help="Serve beyond loopback without an API key."),
    engine: str | None = typer.Option(None, help="serve.engine: builtin (transformers, CPU or GPU), upstream "
                                      "(serve.upstream.url) or vllm (started here, CUDA)."),
    overrides: list[str] | None = OverridesArg,
) -> None:
    """The model behind an OpenAI-compatible API (/v1/chat/completions, /v1/completions)."""
    from tunesmith.errors import ConfigError
    from tunesmith.serve import serve

    if engine == "transformers":  # the name before serve.engine existed
        engine = "builtin"
    if engine is not None and engine not in ("builtin", "upstream", "vllm"):
        raise ConfigError(f"--engine {engine}: choose builtin, upstream or vllm.")
    serve(target, host, port, api_key_file, insecure, engine, overrides)


@app.command("export")
def export_command(
    run_dir: str = typer.Argument(..., help="A run directory, e.g. runs/demo."),
    out_dir: str = typer.Argument(..., help="A new directory for the export."),
    format: str = typer.Option("hf", "--format", help="hf: the merged model (safetensors) for vLLM, TGI "
                               "and transformers; gguf: one GGUF for llama.cpp and Ollama, with a "
                               "Modelfile."),
    dtype: str = typer.Option("bfloat16", "--dtype", help="hf: the weights' dtype: bfloat16 (what serving "
                              "engines expect), float16 or float32 (reproduces the evaluation's fp32 "
                              "answers)."),
    quant: str = typer.Option("q4_k_m", "--quant", help="gguf: f16, q8_0 or q4_k_m (llama.cpp's "
                              "quantizer)."),
    check: bool = typer.Option(False, "--check", help="Then answer the run's test prompts with the export "
                               "(plain transformers, or llama.cpp for a GGUF; its own chat template) and "
                               "print the agreement with `tunesmith eval`'s answers. On an existing export: "
                               "only check it."),
    check_examples: int = typer.Option(30, "--check-examples", min=1, help="Test prompts --check answers."),
) -> None:
    """The run's model as one export that answers as the run was scored (system prompt in its chat
    template, greedy generation settings): merged safetensors, or a GGUF with an Ollama Modelfile."""
    import json

    from tunesmith.errors import ConfigError
    from tunesmith.export.merged import MANIFEST

    if format not in ("hf", "gguf"):
        raise ConfigError(f"--format {format}: choose hf or gguf.")
    existing = check and (Path(out_dir) / MANIFEST).exists()
    if format == "gguf":
        from tunesmith.export.gguf import check_gguf, export_gguf

        if not existing:
            written = export_gguf(run_dir, out_dir, quant)
            said = json.loads((written.parent / MANIFEST).read_text())["quantizer"]
            out.print(f"gguf: {written} (llama.cpp's converter{' and quantizer' if said else ''}; "
                      f"Modelfile beside it)")
            if said:
                out.print(f"  llama.cpp's quantizer: {said.get('size', '?')}"
                          + (f"; {said['fallback']}" if "fallback" in said else ""))
        where = "in llama.cpp with the GGUF's own chat template"
        agreement = check_gguf(run_dir, out_dir, check_examples) if check else None
    else:
        from tunesmith.export.merged import check_export, export_merged

        if not existing:
            out.print(f"merged model: {export_merged(run_dir, out_dir, dtype)} ({dtype})")
        where = "in plain transformers with the export's own chat template"
        agreement = check_export(run_dir, out_dir, check_examples) if check else None
    if agreement is not None:
        _print_agreement(agreement, where)


def _print_agreement(agreement, where: str) -> None:
    out.print(f"export check: {agreement.same} of {agreement.examples} test answers "
              f"({100 * agreement.share:.1f}%) identical to tunesmith eval's, {where} ({agreement.dtype})")
    if agreement.export_score is not None:
        out.print(f"  {agreement.metric} on these prompts: export {100 * agreement.export_score:.1f}%, "
                  f"tunesmith eval {100 * agreement.eval_score:.1f}%")
    for row in agreement.differing:
        out.print(f"  differs: {row['prompt'][:80]!r}: eval {row['eval'][:60]!r}, "
                  f"export {row['export'][:60]!r}")


@app.command("push")
def push_command(
    run_dir: str = typer.Argument(..., help="An evaluated run directory, e.g. runs/demo."),
    repo_id: str = typer.Argument(..., help="The Hub repository, org/name (created if needed)."),
    public: bool = typer.Option(False, "--public", help="A public repository (private by default)."),
    merged: bool = typer.Option(False, "--merged", help="Upload the merged model (as `tunesmith export` "
                                "writes it) instead of the adapter."),
) -> None:
    """Upload the run's model, model card and report to the Hugging Face Hub (token from HF_TOKEN)."""
    from tunesmith.export.hub import push

    url = push(run_dir, repo_id, public=public, merged=merged)
    out.print(f"pushed {run_dir} to {repo_id} ({'public' if public else 'private'}): {url}")


@models_app.command("list")
def models_list(family: str | None = typer.Option(None, help="causal_lm, encoder or seq2seq.")) -> None:
    """The catalog: size, family, context, languages, license and commercial use of each model."""
    from tunesmith.report.advice import print_catalog

    print_catalog(family)


@models_app.command("recommend")
def models_recommend(
    task: str = typer.Option(..., help="generation, classification or text2text."),
    memory: str | None = typer.Option(None, help="Memory to train in, e.g. 16GB (default: this machine's)."),
    license: str = typer.Option("any", help="commercial (exclude non-commercial licenses) or any."),
    data: str | None = typer.Option(None, help="A recipe whose training data sizes the epoch."),
    top: int = typer.Option(5, min=1, help="How many to show."),
) -> None:
    """Base models ranked for a task, a memory budget and a license, with the reasons."""
    from tunesmith.report.advice import print_recommendation, recommendation_need

    print_recommendation(recommendation_need(task, memory, license, data), top)


StoreOpt = typer.Option(None, "--store", help="The store's URL when it is not the run's own SQLite "
                        "(monitor.store), e.g. postgresql://user@host/db.")


def _served_run(run_dir: str):
    from tunesmith.errors import ConfigError
    from tunesmith.recipe import load_recipe
    from tunesmith.rundir import open_run_dir

    run = open_run_dir(run_dir)
    if not run.recipe.is_file():
        raise ConfigError(f"{run_dir}: not a run directory (no recipe.yaml). Give the directory a "
                          "`tunesmith run` wrote, e.g. runs/demo.")
    return run, load_recipe(run.recipe)


@app.command("monitor")
def monitor_command(run_dir: str = typer.Argument(..., help="A served run directory, e.g. runs/demo."),
                    store: str | None = StoreOpt) -> None:
    """Windows, drift, feedback and alerts of a served run; whether retraining is advised."""
    from tunesmith.monitor.summary import advise, read, show

    run, recipe = _served_run(run_dir)
    summary = read(run, recipe, store)
    show(summary, advise(summary, recipe), run.root)


@feedback_app.command("export")
def feedback_export(run_dir: str = typer.Argument(..., help="A served run directory, e.g. runs/demo."),
                    out_dir: str = typer.Option(..., "--out", help="Directory for sft/kto/dpo.jsonl."),
                    store: str | None = StoreOpt,
                    corrections_only: bool = typer.Option(
                        False, "--corrections-only", help="sft.jsonl without the answers rated +1.")) -> None:
    """Rated and corrected answers as SFT, KTO and DPO data (deduplicated, test prompts removed)."""
    from tunesmith.monitor.export import export

    run, recipe = _served_run(run_dir)
    result = export(run, recipe, Path(out_dir), store, approved=not corrections_only)
    written = ", ".join(f"{name}.jsonl {count} rows" for name, count in result.rows.items())
    out.print(f"{result.rated} rated answers -> {written} in {result.out}")
    dropped = {n: sum(d.values()) for n, d in result.dropped.items() if sum(d.values())}
    if dropped:
        out.print("dropped (duplicates, test prompts): " + ", ".join(f"{n} {c}" for n, c in dropped.items()))


def _output_file(path: str, option: str) -> Path:
    from tunesmith.errors import ConfigError

    target = Path(path)
    if target.is_dir() or path.endswith(("/", os.sep)):
        raise ConfigError(f"{option} {path}: is a directory. Give a file name, e.g. {option} "
                          f"{target / 'compare.html'}.")
    if target.parent.exists() and not target.parent.is_dir():
        raise ConfigError(f"{option} {path}: {target.parent} is a file, not a directory. "
                          "Choose another path.")
    return target


@app.command("run")
def run_command(recipe: str = RecipeArg, overrides: list[str] | None = OverridesArg,
                resume: bool = ResumeOpt, processes: int = ProcessesOpt,
                accelerate_config: str | None = AccelerateConfigOpt, machines: int | None = MachinesOpt,
                machine_rank: int | None = MachineRankOpt, main_address: str | None = MainAddressOpt,
                main_port: int | None = MainPortOpt, watch: bool = WatchOpt,
                watch_port: int = WatchPortOpt) -> None:
    """The whole pipeline: data -> train -> evaluate -> report (--processes: training and
    evaluation in that many worker processes)."""
    launch = _launch(processes, accelerate_config, machines, machine_rank, main_address, main_port)
    resolved = _recipe(recipe, overrides)
    with _watching(resolved, watch, watch_port):
        _pipeline().run(resolved, resume=resume, launch=launch)


@app.command("curve")
def curve_command(
    recipe: str = RecipeArg, overrides: list[str] | None = OverridesArg,
    fractions: str = typer.Option("0.125,0.25,0.5,1", "--fractions", help="Shares of the training split, "
                                  "each a nested subset of the next."),
    seeds: int = typer.Option(1, "--seeds", help="Runs per share, seeds train.seed, train.seed+1, ..."),
) -> None:
    """Train the recipe on growing shares of its training data, fit the learning curve, and say
    what 2x and 10x the data would likely give (or that the curve has flattened)."""
    from tunesmith import curve
    from tunesmith.errors import ConfigError

    try:
        shares = [float(f) for f in fractions.split(",") if f.strip()]
    except ValueError:
        raise ConfigError(f"--fractions {fractions}: give numbers separated by commas, e.g. "
                          "0.25,0.5,1") from None
    summary, where = curve.run(_recipe(recipe, overrides), shares, seeds)
    curve.print_curve(summary, where)


@app.command("demo")
def demo_command(
    data_dir: str = typer.Option("data/demo", help="Where to write the generated demo data."),
    loop: bool = typer.Option(False, "--loop", help="After `tunesmith demo`: serve runs/demo, watch it "
                              "drift, feed corrections back, retrain, and measure the gain."),
    family: str = typer.Option("causal_lm", "--family", help="causal_lm: SmolLM2 answers JSON (the demo); "
                               "encoder: MiniLM classifies the category, on the same tickets."),
    bias: bool = typer.Option(False, "--bias", help="The planted biased variant: train with and without "
                              "data.bias.mitigate: [counterfactual], and compare the probe gaps, paired."),
    rl: bool = typer.Option(False, "--rl", help="After `tunesmith demo`: GRPO from its SFT adapter against "
                            "SFT for the same extra steps, over --seeds, paired on test and ood."),
    seeds: str = typer.Option("42,1,2", "--seeds", help="--rl: the seeds, separated by commas."),
    overrides: list[str] | None = OverridesArg,
) -> None:
    """Generate the ticket-triage data and run the demo recipe on the embedded SmolLM2 (or MiniLM)."""
    import time
    from importlib.resources import files

    from tunesmith.demo import tickets

    if loop:
        from tunesmith.demo.loop import run_loop

        run_loop()
        return
    if rl:
        from tunesmith.demo.rl import run_rl

        run_rl(seeds=_seeds(seeds))
        return
    if bias:
        from tunesmith.demo.bias import run_bias_demo

        run_bias_demo(data_dir if data_dir != "data/demo" else "data/demo-biased", overrides)
        return

    started = time.time()
    demo_recipes = {"causal_lm": "recipe.yaml", "encoder": "encoder.yaml"}
    if family not in demo_recipes:
        from tunesmith.errors import ConfigError

        raise ConfigError(f"--family {family}: the demo has {' and '.join(demo_recipes)}.")
    recipe_path = str(files("tunesmith.demo") / demo_recipes[family])
    target = Path(data_dir)
    data_overrides = [f"data.train={target / 'train.jsonl'}", f"data.test={target / 'test.jsonl'}",
                      f"data.eval_sets.ood={target / 'ood.jsonl'}"]
    recipe = _recipe(recipe_path, data_overrides + list(overrides or []))  # checked before writing
    paths = tickets.write(data_dir)
    out.print(f"demo data written to {target}/ ({', '.join(p.name for p in paths.values())})")
    _pipeline().run(recipe)
    out.print(f"demo wall time: {time.time() - started:.0f} s")


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(part) for part in text.split(","))
    except ValueError:
        from tunesmith.errors import ConfigError

        raise ConfigError(f"--seeds {text}: give whole numbers separated by commas, e.g. 42,1,2") from None
    return seeds


def _dashed_override(usage: ClickException) -> str | None:
    """`--train.lr=1` is an override written as an option: say so, instead of click's usage."""
    name = getattr(usage, "option_name", "") or ""  # click's NoSuchOption (typer vendors click)
    if type(usage).__name__ != "NoSuchOption" or "." not in name:
        return None
    key = name.lstrip("-")
    return (f"{name}: no such option; overrides are written without dashes, after the recipe: {key}=VALUE "
            f"(e.g. tunesmith train recipes/demo.yaml {key}=...)")


def main(argv: list[str] | None = None) -> None:
    """Run the CLI and enforce the error contract (see errors.py); exits with its code."""
    from tunesmith.errors import QualityGateError, TunesmithError
    from tunesmith.explain import scrub

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # transformers 5 renames (gradient -> activation checkpointing) that the user cannot act on
    warnings.filterwarnings("ignore", message=".*will be removed in v6.*", category=FutureWarning)
    interrupts.install()  # SIGTERM ends a command the way Ctrl-C does; neither is ever lost
    code = 0
    try:
        returned = app(args=argv, prog_name="tunesmith", standalone_mode=False)
        if returned == 130:  # typer turns Ctrl-C into Exit(130) and returns that code
            raise KeyboardInterrupt
        code = returned if isinstance(returned, int) else 0
    except typer.Exit as done:
        code = done.exit_code
    except ClickException as usage:  # wrong arguments: click's own usage message
        dashed = _dashed_override(usage)
        if dashed:
            problem("error", dashed)
        else:
            usage.show()
        code = usage.exit_code
    except (KeyboardInterrupt, typer.Abort):
        for number in (signal.SIGINT, signal.SIGTERM):  # stopping already: a second signal during
            signal.signal(number, signal.SIG_IGN)        # shutdown must not turn exit 130 into -2
        problem("interrupted", "stopped before it finished; the run directory is as it was "
                "(an interrupted training resumes with --resume).", style="bold yellow")
        code = 130
    except QualityGateError as error:
        problem("failed", scrub(str(error)))
        code = 1
    except TunesmithError as error:
        problem("error", scrub(str(error)))
        code = 2
    except MemoryError:
        problem("error", "out of memory. Lower train.batch_size, train.max_length or eval.batch_size, "
                "or turn on train.gradient_checkpointing.")
        code = 2
    except OSError as error:  # the machine, not the input: disk full, permissions, a vanished file
        where = f"{scrub(str(error.filename))}: " if error.filename else ""
        problem("error", f"{where}{error.strerror or error}. Check that path, its permissions and the "
                "free disk space.")
        code = 2
    except Exception as error:  # noqa: BLE001 - the one place that turns a bug into a message
        if os.environ.get("TUNESMITH_DEBUG"):
            traceback.print_exc()
        problem("internal error", f"{type(error).__name__}: {error}. {BUG_REPORT}")
        code = 3
    sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":
    main()
