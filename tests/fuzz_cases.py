"""The fuzz suite's cases: bad inputs a new user gives, generated from tables by family.

Every case runs one `tunesmith` command against a copy of a complete, trained and evaluated
run (`base`) and states what the one error line must say: where (a file and line, a recipe
key, an override, a path) and the fix. `test_fuzz.py` runs them all and checks the contract:
the exit code, exactly one `error:` line holding every expected piece, no traceback, and the
run directory byte for byte as it was.

    python tests/fuzz_cases.py        # list the cases (family, id, command)
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml


@dataclass
class Workspace:
    """A case's directory: the base recipe (a dict), its run under runs/base, the tiny model."""

    dir: Path
    model: Path
    recipe: dict[str, Any]

    @property
    def run(self) -> Path:
        return self.dir / "runs" / "base"

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    def rows(self, name: str, rows: list[Any]) -> Path:
        return self.write(name, "".join(json.dumps(r) + "\n" for r in rows))

    def recipe_file(self, name: str = "r.yaml", **changes: Any) -> Path:
        """The base recipe with dotted-key changes (`data__train=...` for data.train)."""
        recipe = json.loads(json.dumps(self.recipe))
        for key, value in changes.items():
            node = recipe
            *parents, leaf = key.split("__")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        return self.write(name, yaml.safe_dump(recipe, sort_keys=False))


@dataclass
class Case:
    family: str
    id: str
    argv: Callable[[Workspace], list[str]]
    expect: Callable[[Workspace], tuple[str, ...]]
    code: int = 2
    signal: str | None = None
    """Sent to a subprocess once the command has started work: when `begun` exists in the run."""
    begun: str = ".staging"
    env: dict[str, str] = field(default_factory=dict)
    """Set for the command (an empty value unsets the variable)."""
    absent: tuple[str, ...] = ()
    """Words the error line must not hold (a wrong cause or fix this case once got)."""
    user_exception: bool = False
    """The line names an exception the user's own code raised (a reward function): its class name
    is the user's to read, not a library's."""


GOOD = {"instruction": "code for red", "output": "RE"}


def _chat(*turns: tuple[str, Any], **extra: Any) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in turns], **extra}


# -- data files: (id, file name, content builder, expected pieces); `train` on the base run, the
# command that would replace its data and model if it succeeded --
DATA_FILES: list[tuple[str, str, Callable[[Workspace], str | bytes], tuple[str, ...]]] = [
    ("broken-json-line", "t.jsonl", lambda w: json.dumps(GOOD) + '\n{"instruction": "x"\n',
     ("t.jsonl:2: not valid JSON", "data.on_invalid: skip")),
    ("unclosed-json-array", "t.json", lambda w: '[\n  {"instruction": "a", "output": "b"},\n',
     ("t.json: JSON array is not closed", "missing ']'")),
    ("broken-json-array", "t.json",
     lambda w: '[\n {"instruction": "a", "output": "b"},\n {"instruction": }\n]',
     ("t.json:3: not valid JSON", "Fix the file")),
    ("object-with-two-lists", "t.json", lambda w: json.dumps({"a": [GOOD], "b": [GOOD]}),
     ("t.json: expected a JSON array of rows", "Convert it to JSON Lines")),
    ("empty-file", "t.jsonl", lambda w: "", ("t.jsonl: no rows", "Point the recipe at a file")),
    ("only-blank-lines", "t.jsonl", lambda w: "\n  \n\n", ("t.jsonl: no rows", "Point the recipe")),
    ("cp1252-file", "t.jsonl", lambda w: json.dumps({"instruction": "Café – olé", "output": "x"},
                                                    ensure_ascii=False).encode("cp1252"),
     ("t.jsonl:1: not UTF-8 (byte 0xe9", "data.encoding: cp1252", "iconv")),
    ("latin1-file", "t.jsonl",
     lambda w: '{"instruction": "na\u00efve \u00bfqu\u00e9?\x81", "output": "x"}\n'.encode("latin-1"),
     ("t.jsonl:1: not UTF-8", "or set data.encoding:")),
    ("utf16-read-as-utf8", "t.jsonl", lambda w: b"x" + json.dumps(GOOD).encode("utf-16-le"),
     ("t.jsonl: not valid utf-16-be text", "Re-save the file as UTF-8")),
    ("binary-file", "t.jsonl", lambda w: bytes(range(256)) * 8,
     ("t.jsonl: a binary file", "JSONL, JSON, CSV")),
    ("gzip-as-jsonl", "t.jsonl", lambda w: gzip.compress(json.dumps(GOOD).encode()),
     ("t.jsonl: this is gzip-compressed", "gunzip it first")),
    ("zip-as-json", "t.json", lambda w: _zip(), ("t.json: this is a zip archive", "unzip it first")),
    ("parquet-as-jsonl", "t.jsonl", lambda w: b"PAR1" + b"\x00" * 64, ("t.jsonl: this is Parquet",
                                                                         "name it .parquet")),
    ("corrupt-parquet", "t.parquet", lambda w: b"not parquet at all",
     ("t.parquet: cannot read it as Parquet (no Parquet footer", "Re-export or re-download")),
    ("nested-too-deep", "t.jsonl", lambda w: json.dumps({**GOOD, "x": json.loads("[" * 60 + "]" * 60)}),
     ("t.jsonl:1: nested more than data.max_depth (50)", "data.on_invalid: skip")),
    ("nested-past-the-parser", "t.jsonl", lambda w: "[" * 100_000 + "\n",
     ("t.jsonl:1: nested too deeply to parse", "data.on_invalid: skip")),
    ("ten-megabyte-row", "t.jsonl", lambda w: json.dumps({"instruction": "x" * 10_000_000, "output": "y"}),
     ("t.jsonl:1: row is 10,000,034 characters, over data.max_row_chars (1,000,000)", "split it")),
    ("row-is-a-list", "t.jsonl", lambda w: json.dumps(GOOD) + "\n[1, 2]\n",
     ("t.jsonl:2: expected an object with keys, got list", "data.on_invalid: skip")),
    ("row-is-a-string", "t.jsonl", lambda w: json.dumps(GOOD) + '\n"just text"\n',
     ("t.jsonl:2: expected an object with keys, got str", "Fix the row")),
    ("missing-output", "t.jsonl", lambda w: json.dumps(GOOD) + '\n{"instruction": "x"}\n',
     ('t.jsonl:2: missing "output" (alpaca format)', "data.on_invalid: skip")),
    ("output-not-text", "t.jsonl", lambda w: json.dumps(GOOD) + '\n{"instruction": "x", "output": 5}\n',
     ('t.jsonl:2: "output" must be text, got int', "Fix the row")),
    ("sharegpt-unknown-role", "t.jsonl", lambda w: json.dumps(
        {"conversations": [{"from": "bot", "value": "hi"}]}),
     ("t.jsonl:1: conversations[0].from is 'bot'", "expected human, gpt")),
    ("openai-unknown-role", "t.jsonl", lambda w: json.dumps(_chat(("customer", "hi"), ("assistant", "x"))),
     ("t.jsonl:1: messages[0].role is 'customer'", "expected system, user, assistant or tool")),
    ("assistant-speaks-first", "t.jsonl", lambda w: json.dumps(_chat(("assistant", "Hi!"), ("user", "q"),
                                                                     ("assistant", "a"))),
     ("t.jsonl:1: messages[0] is an assistant turn with no user turn before it",
      "Start the conversation with a user turn")),
    ("image-only-user-turn", "t.jsonl", lambda w: json.dumps(_chat(
        ("user", [{"type": "image_url", "image_url": {"url": "a.png"}}]), ("assistant", "a cat"))),
     ("t.jsonl:1: messages[0].content holds only image_url parts and no text", "Add a text part")),
    ("control-characters-only-prompt", "t.jsonl", lambda w: json.dumps(_chat(("user", "\x07\x08\u200b"),
                                                                             ("assistant", "ok"))),
     ("t.jsonl:1: messages[0] is an assistant turn", "Start the conversation with a user turn")),
    ("fractional-weight", "t.jsonl", lambda w: json.dumps({"messages": [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0.5}]}),
     ("t.jsonl:1: messages[1].weight is 0.5", "fully (1) or not at all (0)")),
    ("loss-weight-on-user", "t.jsonl", lambda w: json.dumps({"messages": [
        {"role": "user", "content": "q", "loss_weight": 1.0}, {"role": "assistant", "content": "a"}]}),
     ("t.jsonl:1: messages[0].loss_weight is 1 on a user turn", "only assistant turns are trained")),
    ("function-call-not-json", "t.jsonl", lambda w: json.dumps({"conversations": [
        {"from": "human", "value": "q"}, {"from": "function_call", "value": "get_weather(Oslo)"}]}),
     ("t.jsonl:1: conversations[1].value is not JSON", '{"name": ..., "arguments"')),
    ("tool-result-without-call", "t.jsonl", lambda w: json.dumps(_chat(("user", "q"), ("tool", "42"),
                                                                       ("assistant", "a"))),
     ("t.jsonl:1: messages[1] is a tool result with no tool call before it", "data.on_invalid: skip")),
    ("tools-column-not-json", "t.jsonl", lambda w: json.dumps({"conversations": [
        {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "tools": "[{oops"}),
     ('t.jsonl:1: "tools" is not JSON', "data.on_invalid: skip")),
    ("csv-extra-cells", "t.csv", lambda w: "instruction,output\na,b\nc,d,e\n",
     ("t.csv:3: 1 more cell(s) than the header", "data.on_invalid: skip")),
    ("csv-unclosed-quote-huge-field", "t.csv", lambda w: 'instruction,output\n"' + "x" * 1_100_000 + "\n",
     ("t.csv:", "not valid CSV", "data.max_row_chars")),
    ("csv-empty", "t.csv", lambda w: "", ("t.csv: empty CSV (no header row)", "The first line must name")),
    ("tsv-unknown-columns", "t.tsv", lambda w: "question\tanswer\nq\ta\n",
     ("t.tsv: its columns ['answer', 'question'] match no format tunesmith reads", "data.columns")),
    ("unknown-suffix", "t.rtf", lambda w: "hello", ("t.rtf: unknown file type '.rtf'", "Use .jsonl")),
    ("text-file-cp1252", "t.txt", lambda w: "Caf\u00e9 au lait, a document.\n".encode("cp1252"),
     ("t.txt:1: not utf-8 (byte 0xe9", "data.encoding: cp1252")),
    ("text-document-too-big", "t.md", lambda w: "x" * 1_100_000,
     ("t.md:1: document is 1,100,000 characters, over data.max_row_chars", "data.text_separator")),
    ("reasoning-part-on-user-turn", "t.jsonl", lambda w: json.dumps(_chat(
        ("user", [{"type": "reasoning", "value": "hmm"}, {"type": "text", "value": "q"}]),
        ("assistant", "a"))),
     ("t.jsonl:1: messages[0] is a user turn with reasoning or tool_call parts", "only assistant turns")),
    ("tool-call-part-not-json", "t.jsonl", lambda w: json.dumps(_chat(
        ("user", "q"), ("assistant", [{"type": "tool_call", "value": "get_weather(Oslo)"}]))),
     ("t.jsonl:1: messages[1].content[0] is not JSON", '{"name": ..., "arguments"')),
    ("v1-preference-prompts-differ", "t.jsonl", lambda w: json.dumps({
        "chosen_messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "good"}],
        "rejected_messages": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "bad"}]}),
     ('t.jsonl:1: "chosen_messages" and "rejected_messages" must share every turn but the last',
      "data.on_invalid: skip")),
    ("dpo-preference-file", "t.json",
     lambda w: json.dumps([{"conversations": [{"from": "human", "value": "q"}],
                            "chosen": {"from": "gpt", "value": "good"},
                            "rejected": {"from": "gpt", "value": "bad"}}]),
     ("t.json: preference data (dpo", "but train.method is lora", "Set train.method: dpo")),
    ("kto-preference-file", "t.jsonl", lambda w: json.dumps({**_chat(("user", "q"), ("assistant", "a")),
                                                             "label": False}),
     ("t.jsonl: preference data (kto", "or kto (labelled answers)")),
    ("bracketed-name-missing", "tickets[bold].jsonl", None,
     ("tickets[bold].jsonl: file not found", "Check data.train in the recipe")),
]


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("train.jsonl", json.dumps(GOOD))
    return buffer.getvalue()


def _data_case(case_id: str, name: str, build: Callable | None, expect: tuple[str, ...]) -> Case:
    def argv(w: Workspace) -> list[str]:
        path = w.write(name, build(w)) if build else w.dir / name
        return ["train", str(w.recipe_file()), f"data.train={path}"]

    return Case("data file", case_id, argv, lambda w: expect)


# -- recipes: (id, recipe text or builder, expected); run through `train` --
RECIPES: list[tuple[str, Callable[[Workspace], str | bytes], tuple[str, ...]]] = [
    ("yaml-bad-indentation", lambda w: "data:\n  train: a.jsonl\n   val: b.jsonl\n",
     ("r.yaml:3:", "not valid YAML", "Check the indentation")),
    ("yaml-tab", lambda w: "train:\n\tlr: 1\n", ("r.yaml:2:", "not valid YAML", "Check the indentation")),
    ("yaml-unclosed-quote", lambda w: 'name: "demo\n', ("r.yaml:", "not valid YAML", "quote values")),
    ("duplicate-key", lambda w: "train:\n  lr: 1.0e-4\n  batch_size: 2\n  lr: 3.0e-4\n",
     ("r.yaml:4:3: key 'lr' appears twice in one section (first on line 2)", "keep one")),
    ("duplicate-section", lambda w: "train:\n  lr: 1.0e-4\ntrain:\n  epochs: 2\n",
     ("r.yaml:3:1: key 'train' appears twice", "keep one")),
    ("recipe-is-a-list", lambda w: "- data\n- train\n",
     ("r.yaml: a recipe is a YAML mapping", "recipes/demo.yaml")),
    ("recipe-is-a-scalar", lambda w: "just words\n", ("r.yaml: a recipe is a YAML mapping", "Start from")),
    ("recipe-not-utf8", lambda w: b"name: caf\xe9\n", ("r.yaml: not UTF-8 text", "Save the recipe as UTF-8")),
    ("typo-in-key", lambda w: yaml.safe_dump({**w.recipe, "train": {"epochz": 2}}),
     ('r.yaml: train.epochz: unknown key (did you mean "epochs"?)',)),
    ("wrong-type", lambda w: yaml.safe_dump({**w.recipe, "train": {"lr": "fast"}}),
     ("r.yaml: train.lr: expected a number", "got 'fast'")),
    ("negative-batch", lambda w: yaml.safe_dump({**w.recipe, "train": {"batch_size": -4}}),
     ("r.yaml: train.batch_size: must be greater than 0", "got -4")),
    ("eval-set-named-train", lambda w: yaml.safe_dump({**w.recipe, "data": {
        **w.recipe["data"], "eval_sets": {"train": "x.jsonl"}}}),
     ("r.yaml: data.eval_sets: train is taken by a split", "give the eval set another name")),
    ("cap-without-cap", lambda w: yaml.safe_dump({**w.recipe, "data": {
        **w.recipe["data"], "balance": {"strategy": "cap"}}}),
     ("r.yaml: data.balance: strategy cap needs balance.cap",)),
    ("no-training-data", lambda w: "name: empty\n", ("data.train is empty", "set it to your training file")),
    ("unknown-encoding",
     lambda w: yaml.safe_dump({**w.recipe, "data": {**w.recipe["data"], "encoding": "klingon"}}),
     ("data.encoding 'klingon': unknown encoding", "Use a Python codec name")),
    ("lora-target-matches-nothing", lambda w: yaml.safe_dump({**w.recipe, "train": {
        **w.recipe["train"], "lora": {"targets": ["q_proj", "query_key_value"]}}}),
     ("train.lora.targets: query_key_value matches no linear layer", "or use all-linear")),
    ("chat-data-no-template", lambda w: yaml.safe_dump({**w.recipe, "model": {
        "name": str(_no_template_model(w))}}),
     ("the tokenizer has no chat template", "model.chat_template: chatml")),
    ("non-commercial-base-for-commercial-use", lambda w: yaml.safe_dump({**w.recipe, "model": {
        "name": str(_non_commercial_model(w)), "intended_use": "commercial"}}),
     ("its license CC-BY-NC-4.0 does not allow commercial use",
      "tunesmith models recommend --license commercial", "model.accept_license: CC-BY-NC-4.0")),
]


def _non_commercial_model(w: Workspace) -> Path:
    """A copy of the tiny model whose card says its license is non-commercial."""
    import shutil

    target = w.dir / "nc-model"
    if not target.exists():
        shutil.copytree(w.model, target)
        (target / "README.md").write_text("---\nlicense: cc-by-nc-4.0\n---\n# research only\n")
    return target


def _no_template_model(w: Workspace) -> Path:
    """A copy of the tiny model whose tokenizer has no chat template."""
    import shutil

    target = w.dir / "plain-model"
    if not target.exists():
        shutil.copytree(w.model, target)
        config = target / "tokenizer_config.json"
        settings = json.loads(config.read_text())
        settings.pop("chat_template", None)
        config.write_text(json.dumps(settings))
        (target / "chat_template.jinja").unlink(missing_ok=True)
    return target


def _recipe_case(case_id: str, build: Callable, expect: tuple[str, ...]) -> Case:
    return Case("recipe", case_id, lambda w: ["train", str(w.write("r.yaml", build(w)))], lambda w: expect)


# -- overrides: (id, override, expected) on `train RECIPE override` --
OVERRIDES: list[tuple[str, str, tuple[str, ...]]] = [
    ("empty-text-separator", "data.text_separator=''",
     ("override data.text_separator='': data.text_separator: an empty separator splits nothing",
      "leave it unset")),
    ("value-starts-with-star", "train.lr=*fast",
     ("override train.lr=*fast: train.lr: expected a number", "got '*fast'")),
    ("value-starts-with-at", "train.optimizer=@adam", ("override train.optimizer=@adam: train.optimizer",
                                                       "'adamw', 'sgd' or 'rmsprop'")),
    ("value-starts-with-bracket", "train.lr=[1e-4", ("override train.lr=[1e-4: train.lr", "got '[1e-4'")),
    ("value-unclosed-brace", "data.columns={a: b", ("override data.columns={a: b: data.columns",
                                                     "expected a mapping of keys to values")),
    ("no-equals", "train.lr", ("override 'train.lr': expected key.sub=value", "e.g. train.lr=3e-4")),
    ("no-key", "=3", ("override '=3': expected key.sub=value",)),
    ("empty-part", "train..lr=1", ("override 'train..lr=1': expected key.sub=value",)),
    ("into-a-value", "train.lr.x=1", ("override train.lr.x=1: train.lr takes a value, not keys under it",
                                      "write train.lr=VALUE")),
    ("epochs-infinite", "train.epochs=.inf",
     ("override train.epochs=.inf: train.epochs: must be a finite number", "got inf")),
    ("seed-negative", "train.seed=-1", ("train.seed: must be at least 0", "got -1")),
    ("unknown-section", "unknown.x=1",
     ("override unknown.x=1: unknown: unknown key;", "the recipe's sections are name, description, data")),
    ("missing-eval-set-file", "data.eval_sets.ood=missing.jsonl",
     ("data.eval_sets.ood: missing.jsonl (looked for at", "file not found",
      "Check data.eval_sets.ood in the recipe (a relative path is read from the working directory")),
    ("typo-section", "trian.lr=1", ("override trian.lr=1: trian: unknown key", 'did you mean "train"?')),
    ("typo-key", "train.lrr=1", ('override train.lrr=1: train.lrr: unknown key (did you mean "lr"?)',)),
    ("bad-literal", "eval.metric=bleu", ("override eval.metric=bleu: eval.metric", "'exact_match'")),
    ("missing-data-file", "data.test=nowhere.jsonl", ("data.test: nowhere.jsonl (looked for at",
                                                      "file not found", "Check data.test in the recipe")),
    ("bias-mitigate-unknown", "data.bias.mitigate=[debias]",
     ("data.bias.mitigate", "'counterfactual' or 'reweight'")),
    ("bias-alpha-out-of-range", "data.bias.alpha=2", ("data.bias.alpha", "less than 1")),
    ("bias-lexicon-not-groups", "data.bias.lexicon={origin: Ahmed}",
     ("data.bias.lexicon", "expected a mapping")),
    ("bias-lexicon-empty-group", "data.bias.lexicon={origin: {a: [Ahmed], b: []}}",
     ("data.bias.lexicon", "origin.b: give each group one or more non-empty terms")),
    ("probe-lexicon-empty-group", "eval.bias.lexicon={origin: {a: [Ahmed], b: ['']}}",
     ("eval.bias.lexicon", "origin.b: give each group one or more non-empty terms")),
    ("packing-unknown", "train.packing=sometimes", ("override train.packing=sometimes: train.packing",
                                                    "'auto'")),
    ("fit-unknown", "train.fit=always", ("override train.fit=always: train.fit", "'check', 'auto' or 'off'")),
    ("method-unknown", "train.method=qdora", ("override train.method=qdora: train.method", "'qlora'")),
    ("flash-attention-without-its-package", "model.attn_implementation=flash_attention_2",
     ("model.attn_implementation flash_attention_2 needs the flash_attn package", "use auto or sdpa")),
]


def _override_case(case_id: str, override: str, expect: tuple[str, ...]) -> Case:
    return Case("override", case_id, lambda w: ["train", str(w.recipe_file()), override], lambda w: expect)


# -- model paths: (id, model.name builder, expected) on `train` --
MODELS: list[tuple[str, Callable[[Workspace], str], tuple[str, ...]]] = [
    ("dot-path-missing", lambda w: "./nowhere",
     ("model.name ./nowhere: directory not found", "Check the path")),
    ("relative-path-missing", lambda w: str(w.write("models/keep", "") and "models/mine"),
     ("model.name models/mine: directory not found", "a hub id has the form org/name")),
    ("nested-path-missing", lambda w: "a/b/c", ("model.name a/b/c: directory not found",)),
    ("a-file-not-a-dir", lambda w: str(w.write("model.safetensors", "x")),
     ("model.safetensors: expected a model directory, got a file", "model.name")),
    ("dir-without-config", lambda w: str(w.write("empty-model/README.md", "hi").parent),
     ("empty-model: no config.json", "saved transformers model directory")),
    ("pickle-only-weights", lambda w: str(_pickled_model(w)),
     ("no .safetensors weights", "never loads pickle")),
    ("unknown-embedded", lambda w: "embedded:gpt-5", ("model.name 'embedded:gpt-5': unknown embedded model",
                                                      "embedded:smollm2-135m-instruct")),
    ("invalid-hub-id", lambda w: "not a repo!", ("model.name 'not a repo!': neither a local directory nor a "
                                                 "valid hub id", "Check the spelling")),
]


def _pickled_model(w: Workspace) -> Path:
    w.write("pickled/config.json", "{}")
    return w.write("pickled/pytorch_model.bin", b"\x80\x04not loaded").parent


def _model_case(case_id: str, build: Callable[[Workspace], str], expect: tuple[str, ...]) -> Case:
    return Case("model path", case_id,
                lambda w: ["train", str(w.recipe_file(model__name=build(w)))], lambda w: expect)


def edited(w: Workspace, name: str, content: str) -> Path:
    """A copy of the base run with one artifact replaced (edited by hand, or from another version)."""
    copy = w.dir / "runs" / "edited"
    shutil.copytree(w.run, copy, symlinks=True)
    (copy / name).write_text(content, encoding="utf-8")
    return copy


def _run_cases() -> list[Case]:
    """Commands pointed at run directories that cannot take them."""
    def prepared_only(w: Workspace) -> Path:
        recipe = w.recipe_file(output__run_name="prepared")
        from tunesmith.cli import main

        with contextlib.suppress(SystemExit):  # the run is set up; the case is what follows
            main(["data", "prepare", str(recipe)])
        return w.dir / "runs" / "prepared"

    return [
        Case("run dir", "report-missing-dir", lambda w: ["report", str(w.dir / "runs" / "nope")],
             lambda w: ("runs/nope: not a run directory", "e.g. runs/demo")),
        Case("run dir", "report-not-a-run", lambda w: ["report", str(w.write("notes/a.txt", "x").parent)],
             lambda w: ("notes: not a run directory", "tunesmith run")),
        Case("run dir", "report-before-training", lambda w: ["report", str(prepared_only(w))],
             lambda w: ("runs/prepared: no trained model", "tunesmith train RECIPE")),
        Case("run dir", "eval-before-training",
             lambda w: (prepared_only(w), ["eval", str(w.recipe_file(output__run_name="prepared"))])[1],
             lambda w: ("no trained model", "tunesmith train RECIPE")),
        Case("run dir", "eval-with-another-learning-rate",
             lambda w: ["eval", str(w.recipe_file()), "train.lr=0.5"],
             lambda w: ("runs/base: its train artifacts were made with other recipe values",
                        "train.lr: 0.01 -> 0.5", "output.run_name=NAME")),
        Case("run dir", "prepare-other-data-under-a-model",
             lambda w: ["data", "prepare", str(w.recipe_file()), "data.val_fraction=0.3"],
             lambda w: ("runs/base: this would make its train artifacts stale",
                        "data.val_fraction: 0.25 -> 0.3", "output.run_name=NAME")),
        Case("run dir", "resume-nothing", lambda w: ["train", str(w.recipe_file()), "--resume"],
             lambda w: ("runs/base: nothing to resume", "Train without --resume")),
        Case("evaluation", "benchmark-task-file-missing",
             lambda w: ["eval", str(w.recipe_file()), "eval.benchmarks.tasks=[tasks/nowhere.yaml]"],
             lambda w: ("eval.benchmarks: tasks/nowhere.yaml: no such task file", "local task YAML file")),
        Case("evaluation", "benchmark-task-file-not-yaml",
             lambda w: ["eval", str(w.recipe_file()),
                        f"eval.benchmarks.tasks=[{w.write('tasks/bad.yaml', 'task: [unclosed')}]"],
             lambda w: ("tasks/bad.yaml:", "not valid YAML", "Check the indentation there")),
        Case("evaluation", "benchmark-task-file-without-name",
             lambda w: ["eval", str(w.recipe_file()),
                        f"eval.benchmarks.tasks=[{w.write('tasks/nameless.yaml', 'dataset_path: json')}]"],
             lambda w: ("nameless.yaml: a task file names its task", "task: my_task")),
        Case("evaluation", "judge-not-listening",
             lambda w: ["eval", str(w.recipe_file()), "eval.judge.url=http://127.0.0.1:9/v1"],
             lambda w: ("eval.judge.url http://127.0.0.1:9/v1: nothing listens at that host and port",
                        "Start the judge there")),
        Case("evaluation", "judge-pass-grade-above-scale",
             lambda w: ["eval", str(w.recipe_file()), "eval.judge.pass_grade=7"],
             lambda w: ("eval.judge", "pass_grade 7 is above the scale's top grade 5")),
        Case("evaluation", "curve-fractions-out-of-range",
             lambda w: ["curve", str(w.recipe_file()), "--fractions", "0,2"],
             lambda w: ("--fractions 0,2: give shares of the training split in (0, 1]",)),
        Case("evaluation", "curve-fractions-not-numbers",
             lambda w: ["curve", str(w.recipe_file()), "--fractions", "half,all"],
             lambda w: ("--fractions half,all: give numbers separated by commas",)),
        Case("run dir", "tune-empty-space", lambda w: ["tune", str(w.recipe_file())],
             lambda w: ("tune.space is empty", "tune.space: {train.lr:")),
        Case("run dir", "report-edited-eval-summary",
             lambda w: ["report", str(edited(w, "eval/summary.json", '{"metric": "exact_match", "sets": '
                                                                   '{"test": {"examples": "six"}}}'))],
             lambda w: ("eval/summary.json: not a valid eval summary (sets.test.examples:",
                        "expected a whole number",
                        "run the stage that writes it again")),
        Case("run dir", "report-eval-summary-not-json",
             lambda w: ["report", str(edited(w, "eval/summary.json", '{"metric": '))],
             lambda w: ("eval/summary.json: not a valid eval summary (not valid JSON at line 1, column",)),
        Case("run dir", "compare-edited-predictions",
             lambda w: ["compare", str(edited(w, "eval/predictions.jsonl", '{"set": "test"}\n')), str(w.run)],
             lambda w: ("eval/predictions.jsonl:1: not a valid prediction (index: missing (required)",)),
        Case("run dir", "compare-one-run", lambda w: ["compare", str(w.run)],
             lambda w: ("compare needs at least two run directories",)),
        Case("run dir", "compare-unevaluated", lambda w: ["compare", str(w.run), str(prepared_only(w))],
             lambda w: ("runs/prepared: not an evaluated run directory", "Run `tunesmith eval`")),
        Case("run dir", "report-against-unevaluated",
             lambda w: ["report", str(w.run), "--against", str(prepared_only(w))],
             lambda w: ("runs/prepared: not an evaluated run directory", "Run `tunesmith eval`")),
        Case("run dir", "report-against-missing",
             lambda w: ["report", str(w.run), "--against", str(w.dir / "runs" / "nope")],
             lambda w: ("runs/nope: no such directory", "e.g. runs/demo")),
        Case("run dir", "report-edited-comparison",
             lambda w: ["report", str(edited(w, "comparison.json", '{"runs": ["a", "b"], "sets": 3}'))],
             lambda w: ("comparison.json: not a valid comparison (the key", "is missing", "--against OTHER")),
        Case("run dir", "report-comparison-not-json",
             lambda w: ["report", str(edited(w, "comparison.json", '{"runs": '))],
             lambda w: ("comparison.json: not a valid comparison (not valid JSON at column",)),
        Case("run dir", "compare-html-is-a-dir",
             lambda w: ["compare", str(w.run), str(w.run), "--html", str(w.dir)],
             lambda w: ("--html", "is a directory. Give a file name")),
        Case("run dir", "compare-html-under-a-file",
             lambda w: ["compare", str(w.run), str(w.run), "--html", str(w.write("f", "x") / "c.html")],
             lambda w: ("is a file, not a directory", "Choose another path")),
        Case("run dir", "tune-storage-unreachable",
             lambda w: ["tune", str(w.recipe_file()), SPACE, "--storage",
                        "postgresql://me:s3cret@127.0.0.1:1/none"],
             lambda w: ("tune storage ...@127.0.0.1:1/none: cannot connect",
                        "pip install 'tunesmith[distributed]'")),
        Case("run dir", "tune-storage-unknown-scheme",
             lambda w: ["tune", str(w.recipe_file()), SPACE, "--storage", "nosuchdb://x/y"],
             lambda w: ("tune storage ...@nosuchdb://x/y: cannot connect", "Check the URL")),
        Case("run dir", "recipe-is-a-directory", lambda w: ["train", str(w.dir)],
             lambda w: (": is a directory", "Pass the path of a YAML recipe")),
        Case("run dir", "recipe-missing", lambda w: ["run", str(w.dir / "missing.yaml")],
             lambda w: ("missing.yaml: recipe not found", "Pass the path of a YAML recipe")),
        Case("run dir", "serve-beyond-loopback-without-a-key",
             lambda w: ["serve", str(w.run), "--host", "0.0.0.0"],
             lambda w: ("--host 0.0.0.0: serving beyond this machine needs an API key", "TUNESMITH_API_KEY",
                        "--insecure")),
        Case("run dir", "serve-api-key-file-missing",
             lambda w: ["serve", str(w.run), "--api-key-file", str(w.dir / "keys.txt")],
             lambda w: ("keys.txt: not a file", "one key a line")),
        Case("run dir", "serve-run-without-a-model", lambda w: ["serve", str(prepared_only(w))],
             lambda w: ("runs/prepared: a run directory without a trained model", "tunesmith train")),
        Case("run dir", "serve-model-dir-missing", lambda w: ["serve", str(w.dir / "models" / "nope")],
             lambda w: ("models/nope: directory not found",)),
        Case("run dir", "serve-fallback-run-missing",
             lambda w: ["serve", str(w.run), "serve.fallback.kind=run",
                        f"serve.fallback.run={w.dir / 'gone'}"],
             lambda w: ("gone: directory not found",)),
        Case("run dir", "serve-vllm-without-cuda", lambda w: ["serve", str(w.run), "--engine", "vllm"],
             lambda w: ("serve.engine vllm needs vLLM on a CUDA machine: pip install vllm",
                        "serve.engine upstream")),
        Case("run dir", "serve-upstream-without-url", lambda w: ["serve", str(w.run), "--engine", "upstream"],
             lambda w: ("serve.engine upstream needs serve.upstream.url",)),
        Case("run dir", "serve-upstream-url-not-http",
             lambda w: ["serve", str(w.run), "serve.engine=upstream", "serve.upstream.url=127.0.0.1:8001"],
             lambda w: ("give an http:// or https:// address",)),
        Case("run dir", "serve-upstream-base-fallback-without-base",
             lambda w: ["serve", str(w.run), "serve.engine=upstream", "serve.upstream.url=http://127.0.0.1:9",
                        "serve.fallback.kind=base"],
             lambda w: ("needs serve.upstream.base_model",)),
        Case("run dir", "serve-unknown-engine", lambda w: ["serve", str(w.run), "--engine", "tgi"],
             lambda w: ("--engine tgi: choose builtin, upstream or vllm",)),
        Case("run dir", "export-into-a-full-directory",
             lambda w: ["export", str(w.run), str(w.write("out/keep.txt", "x").parent)],
             lambda w: ("out: exists and is not empty", "nothing was written")),
        Case("run dir", "export-not-a-run", lambda w: ["export", str(w.dir / "nope"), str(w.dir / "o")],
             lambda w: ("nope: not a run directory with a trained model",)),
        Case("run dir", "monitor-not-a-run", lambda w: ["monitor", str(w.dir / "nope")],
             lambda w: ("nope: not a run directory (no recipe.yaml)", "e.g. runs/demo")),
        Case("run dir", "monitor-never-served", lambda w: ["monitor", str(w.run)],
             lambda w: ("requests.db: no request log yet", "tunesmith serve")),
        Case("run dir", "monitor-store-unreachable",
             lambda w: ["monitor", str(w.run), "--store", "postgresql://me:s3cret@127.0.0.1:1/none"],
             lambda w: ("monitor store ...@127.0.0.1:1/none: cannot connect", "Check the URL")),
        Case("run dir", "feedback-export-never-served",
             lambda w: ["feedback", "export", str(w.run), "--out", str(w.dir / "fb")],
             lambda w: ("no request log", "POST /v1/feedback")),
        Case("run dir", "feedback-export-out-is-a-file",
             lambda w: ["feedback", "export", str(w.run), "--out", str(w.write("fb.txt", "x"))],
             lambda w: ("--out", "fb.txt: is a file", "Give a directory")),
        Case("run dir", "feedback-export-not-a-run",
             lambda w: ["feedback", "export", str(w.dir / "nope"), "--out", str(w.dir / "fb")],
             lambda w: ("nope: not a run directory",)),
        Case("run dir", "dpo-on-demonstrations",
             lambda w: ["train", str(w.recipe_file(output__run_name="dpo")), "train.method=dpo"],
             lambda w: ("train.method dpo learns from preference data", "tunesmith feedback export")),
        Case("run dir", "preference-data-for-sft",
             lambda w: ["train", str(w.recipe_file(output__run_name="sft", data__train=[str(w.rows(
                 "pairs.jsonl", [{"prompt": "hi", "chosen": "hello", "rejected": "go away"}] * 3))]))],
             lambda w: ("pairs.jsonl: preference data (dpo", "Set train.method: dpo")),
        Case("run dir", "kto-rows-for-dpo",
             lambda w: ["train", str(w.recipe_file(output__run_name="kto", data__train=[str(w.rows(
                 "kto.jsonl", [{"prompt": f"hi {i}", "completion": "hello", "label": i % 2 == 0}
                               for i in range(12)]))])), "train.method=dpo", "data.val_fraction=0"],
             lambda w: ("kto.jsonl:", "a KTO row (one labelled answer) cannot train DPO",
                        "train.method: kto")),
        Case("run dir", "init-adapter-missing",
             lambda w: ["train", str(w.recipe_file(output__run_name="again")),
                        f"train.init_adapter={w.dir / 'runs' / 'nope' / 'model'}"],
             lambda w: ("train.init_adapter", "nope/model: no LoRA adapter there", "e.g. runs/demo/model")),
        Case("run dir", "models-recommend-unknown-task",
             lambda w: ["models", "recommend", "--task", "poetry"],
             lambda w: ("--task poetry: choose generation, classification or text2text",)),
        Case("run dir", "models-recommend-bad-memory",
             lambda w: ["models", "recommend", "--task", "generation", "--memory", "lots"],
             lambda w: ("--memory lots: expected an amount like 16GB",)),
        Case("run dir", "models-recommend-bad-license",
             lambda w: ["models", "recommend", "--task", "generation", "--license", "gpl"],
             lambda w: ("--license gpl: choose commercial or any",)),
        Case("run dir", "models-list-unknown-family", lambda w: ["models", "list", "--family", "cnn"],
             lambda w: ("--family cnn: choose causal_lm, encoder or seq2seq",)),
        Case("run dir", "processes-accelerate-config-missing",
             lambda w: ["train", str(w.recipe_file(output__run_name="ddp")), "--processes", "2",
                        "--accelerate-config", str(w.dir / "nope.yaml")],
             lambda w: ("--accelerate-config", "nope.yaml: no such file", "accelerate config --config_file")),
        Case("run dir", "machines-without-main-address",
             lambda w: ["train", str(w.recipe_file(output__run_name="mn")), "--processes", "2",
                        "--machines", "2"],
             lambda w: ("--machines 2 needs --main-address", "the address of machine 0")),
        Case("run dir", "machine-rank-out-of-range",
             lambda w: ["run", str(w.recipe_file(output__run_name="mn2")), "--machines", "2",
                        "--machine-rank", "2", "--main-address", "10.0.0.1"],
             lambda w: ("--machine-rank 2: must be 0 to 1 for --machines 2",)),
        Case("run dir", "processes-worker-refuses-lora-target",
             lambda w: ["train", str(w.recipe_file(output__run_name="ddp2")), "--processes", "2",
                        "train.lora.targets=[q_proj,query_key_value]"],
             lambda w: ("train.lora.targets: query_key_value matches no linear layer", "or use all-linear")),
        Case("run dir", "bias-dimension-unknown",
             lambda w: ["train", str(w.recipe_file(output__run_name="bias1")),
                        "data.bias.mitigate=[counterfactual]", "data.bias.dimensions=[race]"],
             lambda w: ("data.bias.dimensions: ['race'] not in the lexicon", "data.bias.lexicon")),
        Case("run dir", "bias-reweight-on-trl",
             lambda w: ["train", str(w.recipe_file(output__run_name="bias2")),
                        "data.bias.mitigate=[reweight]", "data.bias.dimensions=[gender]",
                        "train.backend=trl"],
             lambda w: ("reweight gives rows loss weights", "mitigate: [counterfactual]")),
        Case("run dir", "compile-unknown-value",
             lambda w: ["train", str(w.recipe_file(output__run_name="cmp")), "train.compile=sometimes"],
             lambda w: ("train.compile", "sometimes")),
        Case("run dir", "family-unknown",
             lambda w: ["train", str(w.recipe_file(output__run_name="fam")), "model.family=cnn"],
             lambda w: ("model.family", "'causal_lm', 'encoder' or 'seq2seq'")),
        Case("run dir", "encoder-answers-lack-label-field",
             lambda w: ["train", str(w.recipe_file(output__run_name="enc")), "model.family=encoder",
                        "eval.label_field=category"],
             lambda w: ("a training answer has no 'category' field", "eval.label_field: category")),
        Case("run dir", "encoder-one-label",
             lambda w: ["train", str(w.recipe_file(output__run_name="enc1", data__train=[str(w.rows(
                 "one.jsonl", [{"text": f"ticket {i}", "label": "billing"} for i in range(20)]))],
                 data__test=str(w.rows("one-test.jsonl", [{"text": "a ticket", "label": "billing"}])))),
                        "model.family=encoder", "data.val_fraction=0"],
             lambda w: ("the training data has 1 label(s)", "at least two")),
        Case("run dir", "seq2seq-dpo",
             lambda w: ["train", str(w.recipe_file(output__run_name="s2s")), "model.family=seq2seq",
                        "train.method=dpo"],
             lambda w: ("train.method dpo is built for decoders", "lora or full")),
        Case("run dir", "demo-unknown-family", lambda w: ["demo", "--family", "cnn"],
             lambda w: ("--family cnn: the demo has causal_lm and encoder",)),
        Case("run dir", "monitor-window-too-small", lambda w: ["serve", str(w.run), "monitor.window_size=2"],
             lambda w: ("monitor.window_size", "must be at least 5")),
        Case("run dir", "all-rows-leak-into-test",
             lambda w: ["data", "prepare", str(w.recipe_file(output__run_name="leaky")),
                        f"data.test={w.recipe['data']['train']}"],
             lambda w: ("no training rows left", "removed as copies of test rows",
                        "data.leakage.action: flag")),
    ]


SPACE = "tune.space={train.lr: {type: float, low: 0.001, high: 0.01}}"


def _big_data(w: Workspace) -> Path:
    """20,000 rows: the data stage takes ~10 s on the tiny model's tokenizer (a wide window for a
    signal, whatever the machine's load)."""
    words = ["refund", "invoice", "login", "crash", "calendar", "export", "sync", "team", "owner",
             "billing", "plan", "seat"]
    rows = [{"instruction": " ".join(words[(i * 7 + j) % len(words)] for j in range(40)) + f" #{i}",
             "output": "RE"} for i in range(20_000)]
    return w.rows("big.jsonl", rows)


def _signal_cases() -> list[Case]:
    return [
        Case("signal", "sigint-during-train",
             lambda w: ["train", str(w.recipe_file()), "train.max_steps=100000", "train.save_steps=1000"],
             lambda w: ("interrupted", "the run directory is as it was"), code=130, signal="SIGINT",
             begun=".work/checkpoints/recipe.json"),
        Case("signal", "sigterm-while-preparing-new-data",
             lambda w: ["train", str(w.recipe_file()), f"data.train={_big_data(w)}"],
             lambda w: ("interrupted", "the run directory is as it was"), code=130, signal="SIGTERM"),
    ]


def _uncleaned_cases() -> list[Case]:
    """Bad rows that cleaning would repair, with data.clean.enabled=false (ftfy replaces a lone
    surrogate; without it, the row is refused where it is instead of crashing the tokenizer)."""
    def surrogate(w: Workspace) -> list[str]:
        path = w.write("t.jsonl", json.dumps(GOOD) + '\n{"instruction": "q\\ud800", "output": "a"}\n')
        return ["train", str(w.recipe_file()), f"data.train={path}", "data.clean.enabled=false"]

    return [Case("data file", "lone-surrogate-uncleaned", surrogate,
                 lambda w: ("t.jsonl:2: messages[0].content holds a lone surrogate", "or drop the row"))]


def _share_cases() -> list[Case]:
    """Where a run goes next: trackers, exports, the Hub."""
    return [
        Case("share", "report-to-unknown-tracker",
             lambda w: ["train", str(w.recipe_file(output__run_name="tracked")), "train.report_to=[comet]"],
             lambda w: ("train.report_to", "'mlflow', 'tensorboard', 'wandb' or 'trackio'")),
        Case("share", "report-to-mlflow-unreachable",  # port 9 (discard): nothing listens on loopback
             lambda w: ["train", str(w.recipe_file(output__run_name="tracked")), "train.report_to=[mlflow]"],
             lambda w: ("train.report_to: mlflow could not start a run", "Check MLFLOW_TRACKING_URI"),
             env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}),
        Case("share", "export-unknown-format",
             lambda w: ["export", str(w.run), str(w.dir / "out"), "--format", "onnx"],
             lambda w: ("--format onnx: choose hf or gguf",)),
        Case("share", "export-unknown-quant",
             lambda w: ["export", str(w.run), str(w.dir / "out"), "--format", "gguf", "--quant", "q2_k"],
             lambda w: ("--quant q2_k: choose f16, q8_0, q4_k_m",)),
        Case("share", "export-gguf-unknown-tokenizer",  # the tiny model's character tokenizer
             lambda w: ["export", str(w.run), str(w.dir / "out"), "--format", "gguf", "--quant", "f16"],
             lambda w: ("llama.cpp's converter could not convert this model", "--print-supported-models")),
        Case("share", "export-gguf-into-a-full-directory",
             lambda w: ["export", str(w.run), str(w.write("full/x.txt", "mine").parent), "--format", "gguf"],
             lambda w: ("full: exists and is not empty", "nothing was written")),
        Case("share", "push-bad-repo-id", lambda w: ["push", str(w.run), "just-a-name"],
             lambda w: ("just-a-name: not a Hub repository id", "org/name")),
        Case("share", "push-without-token", lambda w: ["push", str(w.run), "acme/tickets"],
             lambda w: ("HF_TOKEN is not set", "export HF_TOKEN="), env={"HF_TOKEN": ""}),
        Case("share", "push-not-a-run", lambda w: ["push", str(w.dir), "acme/tickets"],
             lambda w: ("not a run directory with a trained model",), env={"HF_TOKEN": "hf_fuzz"}),
    ]


def _grpo_case(case_id: str, build: Callable[[Workspace], list[str]], expect: tuple[str, ...]) -> Case:
    """`train` with train.method grpo and the overrides `build` gives (it may write files first)."""
    return Case("recipe", f"grpo-{case_id}",
                lambda w: ["train", str(w.recipe_file()), "train.method=grpo", *build(w)], lambda w: expect)


def _reward_module(w: Workspace, name: str, returned: str) -> str:
    """A user reward `name:score` in the working directory returning `returned`; its override."""
    w.write(f"{name}.py", f"def score(prompts, completions, rows):\n    return {returned}\n")
    return f"train.rl.rewards=[metric, {name}:score]"


def _grpo_cases() -> list[Case]:
    """Learning from rewards on data or rewards it cannot use."""
    pair = {"prompt": "code for red", "chosen": "RE", "rejected": "BL"}
    return [
        _grpo_case("on-preference-pairs", lambda w: [f"data.train={w.rows('pairs.jsonl', [pair] * 8)}"],
                   ("preference data", "train.method is grpo, which learns from prompts and rewards")),
        _grpo_case("unknown-reward", lambda w: ["train.rl.rewards=[style]"],
                   ("train.rl.rewards", "not one of format, metric, reasoning_format")),
        _grpo_case("reward-module-missing", lambda w: ["train.rl.rewards=[fuzz_nowhere:score]"],
                   ("cannot import fuzz_nowhere", "in the working directory")),
        replace(_grpo_case("reward-raises", lambda w: [_reward_module(w, "fuzz_boom", "[1 / 0]")],
                           ("reward fuzz_boom.score raised ZeroDivisionError", "train.jsonl:",
                            "may return None")),
                user_exception=True),
        _grpo_case("reward-not-a-number", lambda w: [_reward_module(w, "fuzz_words", "['good'] * len(rows)")],
                   ("reward fuzz_words.score returned 'good' for row", "train.jsonl:", "a finite number")),
        _grpo_case("format-without-a-format", lambda w: ["train.rl.rewards=[format]"],
                   ("format rewards answers that pass serve.output_check", "serve.output_check: json")),
        _grpo_case("batch-splits-groups", lambda w: ["train.batch_size=6"],
                   ("multiple of train.rl.num_generations (4)", "train.batch_size=4")),
        _grpo_case("vllm-on-the-cpu", lambda w: ["train.rl.rollouts=vllm"],
                   ("train.rl.rollouts: vllm runs on CUDA", "train.rl.rollouts: auto")),
        Case("run dir", "demo-rl-before-the-demo", lambda w: ["demo", "--rl"],
             lambda w: ("runs/demo: the demo's evaluated run is missing", "Run `tunesmith demo` first")),
        Case("run dir", "demo-rl-seeds-not-numbers", lambda w: ["demo", "--rl", "--seeds", "one,two"],
             lambda w: ("--seeds one,two: give whole numbers separated by commas",)),
        Case("recipe", "grpo-tuned", lambda w: ["tune", str(w.recipe_file()), "train.method=grpo"],
             lambda w: ("train.method grpo does not compute", "train.init_adapter")),
        _grpo_case("no-reward-to-derive", lambda w: ["eval.metric=none"],
                   ("train.rl.rewards is empty and the task gives none", "[mymodule:score]")),
        _grpo_case("metric-reward-without-metric",
                   lambda w: ["train.rl.rewards=[metric]", "eval.metric=none"],
                   ("metric scores answers with eval.metric, which is none", "set eval.metric")),
    ]


def _carded_data(w: Workspace, front: str) -> Path:
    """A training file beside a dataset card with the given front matter."""
    w.write("carded/README.md", f"---\n{front}\n---\n# a dataset\n")
    return w.rows("carded/train.jsonl", [GOOD] * 4)


def _license_recipe(w: Workspace, **data: Any) -> list[str]:
    changes = {f"data__{key}": value for key, value in data.items()}
    return ["train", str(w.recipe_file(output__run_name="licensed", **changes))]


def _no_consent_run(w: Workspace) -> Path:
    recipe = yaml.safe_load((w.run / "recipe.yaml").read_text())
    recipe.setdefault("monitor", {})["consent"] = "none"
    return edited(w, "recipe.yaml", yaml.safe_dump(recipe))


def _license_cases() -> list[Case]:
    """Data licenses: unknown ids, patterns that match nothing, broken dataset cards, and a
    commercial recipe on non-commercial data; feedback export without the users' consent."""
    train = lambda w: w.recipe["data"]["train"]  # noqa: E731
    return [
        Case("recipe", "license-unknown-spdx-id",
             lambda w: _license_recipe(w, licenses={train(w): "CC-BY-NC-5.0"}),
             lambda w: ("data.licenses", "'CC-BY-NC-5.0' is not a license id tunesmith knows",
                        "closest: CC-BY-NC-4.0")),
        Case("recipe", "accept-license-unknown-id", lambda w: _license_recipe(w, accept_license="CC-BY-NC-9"),
             lambda w: ("data.accept_license", "'CC-BY-NC-9' is not a license id")),
        Case("recipe", "license-pattern-matches-nothing",
             lambda w: _license_recipe(w, licenses={"nothing/*.csv": "MIT"}),
             lambda w: ("data.licenses: 'nothing/*.csv' matches none of the data files", train(w),
                        "Fix the path or pattern")),
        Case("recipe", "commercial-use-of-non-commercial-data",
             lambda w: [*_license_recipe(w, licenses={train(w): "CC-BY-NC-4.0"}),
                        "model.intended_use=commercial"],
             lambda w: (f"{train(w)}: license CC-BY-NC-4.0", "does not allow commercial use",
                        "Drop the file from data.train", "data.accept_license: CC-BY-NC-4.0")),
        Case("data file", "dataset-card-malformed-license",
             lambda w: _license_recipe(w, train=str(_carded_data(w, "license:\n  id: mit"))),
             lambda w: ("carded/README.md: license: {'id': 'mit'} is not a license id", "data.licenses")),
        Case("data file", "dataset-card-broken-front-matter",
             lambda w: _license_recipe(w, train=str(_carded_data(w, "license: [mit"))),
             lambda w: ("carded/README.md:2: its YAML front matter is not valid YAML", "Fix the card")),
        Case("run dir", "feedback-export-without-consent",
             lambda w: ["feedback", "export", str(_no_consent_run(w)), "--out", str(w.dir / "fb")],
             lambda w: ("monitor.consent is none", "set monitor.consent: training")),
    ]


def _link(w: Workspace, name: str, target: str) -> Path:
    link = w.dir / name
    link.symlink_to(target)
    return link


def _loop(w: Workspace) -> Path:
    _link(w, "b.jsonl", "a.jsonl")
    return _link(w, "a.jsonl", "b.jsonl")


def _broken_config_model(w: Workspace) -> Path:
    target = w.dir / "broken-config"
    shutil.copytree(w.model, target)
    (target / "config.json").write_text('{"model_type": "llama", ')
    return target


NOT_A_FIX = ("Check data.format and data.columns",)
"""The fix every invalid file was once told, right or not."""


def _message_cases() -> list[Case]:
    """Issue 31's patterns: each message names the true cause and the fix that fixes it."""
    def data(case_id: str, build: Callable[[Workspace], Path], expect: tuple[str, ...],
             absent: tuple[str, ...] = (), extra: tuple[str, ...] = ()) -> Case:
        return Case("data file", case_id, lambda w: ["train", str(w.recipe_file()), f"data.train={build(w)}",
                                                     *extra], lambda w: expect, absent=absent)

    chat = {"messages": [{"role": "user", "content": "code for red"}, {"role": "assistant", "content": "RE"}]}
    null_user = {"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "RE"}]}
    return [
        data("json-duplicate-key",
             lambda w: w.write("t.jsonl", '{"instruction": "red", "instruction": "blue", "output": "RE"}\n'),
             ("t.jsonl:1: key 'instruction' appears twice in one object", "keep one")),
        data("user-content-null", lambda w: w.rows("t.jsonl", [null_user]),
             ("t.jsonl:1: messages[0] is a user turn whose content is null", "Give it the user's text"),
             absent=("no user turn before it",)),
        data("answer-missing", lambda w: w.rows("t.jsonl", [{"messages": chat["messages"][:1]}]),
             ("t.jsonl:1: messages has no answer", "Add the assistant's answer"),
             absent=("no user or assistant turn",)),
        data("symlink-loop", _loop, ("a.jsonl: a loop of symbolic links (", "Point the link at a file"),
             absent=("file not found",)),
        data("dangling-symlink", lambda w: _link(w, "t.jsonl", "gone.jsonl"),
             ("t.jsonl: a symbolic link to", "gone.jsonl, which does not exist",
              "Point the link at the file"),
             absent=("file not found",)),
        data("tab-separated-named-csv",
             lambda w: w.write("t.csv", "instruction\toutput\ncode for red\tRE\n"),
             ("t.csv:1:", "the file is tab-separated", "Rename it t.tsv"), absent=("closest is dpo",)),
        data("columns-of-no-format",
             lambda w: w.rows("t.jsonl", [{"question": "code for red", "answer": "RE"}]),
             ("match no format tunesmith reads", "alpaca (instruction, output)", "data.columns"),
             absent=("closest is",)),
        data("format-named-wrong", lambda w: w.rows("t.jsonl", [chat]),
             ("The rows are openai (messages), not alpaca", "set data.format: openai"),
             absent=("data.on_invalid",), extra=("data.format=alpaca",)),
        data("every-row-invalid-format-right", lambda w: w.rows("t.jsonl", [null_user]),
             ("every row is invalid", "Fix the rows"), absent=NOT_A_FIX, extra=("data.on_invalid=skip",)),
        Case("recipe", "yaml-python-tag",
             lambda w: ["train", str(w.write("r.yaml", "data:\n  train: !!python/object/apply:os.system [x]\n"
                                             ))],
             lambda w: ("r.yaml:2:10: the tag !!python/object/apply:os.system is not allowed",
                        "Remove the tag"),
             absent=("indentation",)),
        Case("recipe", "empty-section", lambda w: ["train", str(w.write("r.yaml", yaml.safe_dump(
            {**w.recipe, "train": None})))],
             lambda w: ("r.yaml: train: the section is empty", "delete the line to take the defaults"),
             absent=("TrainConfig", "Input should")),
        Case("recipe", "comments-only-recipe", lambda w: ["train", str(w.write("r.yaml", "# to do\n"))],
             lambda w: ("r.yaml: the recipe is empty", "Start from recipes/demo.yaml"),
             absent=("data.train is empty",)),
        Case("override", "override-with-dashes", lambda w: ["train", str(w.recipe_file()), "--train.lr=1"],
             lambda w: ("--train.lr: no such option", "overrides are written without dashes",
                        "train.lr=VALUE")),
        Case("model path", "config-json-broken",
             lambda w: ["train", str(w.recipe_file()), f"model.name={_broken_config_model(w)}"],
             lambda w: ("broken-config/config.json is not valid JSON (broken at line 1",
                        "Re-download the model"),
             absent=("tokenizer",)),
        Case("run dir", "compare-missing-path", lambda w: ["compare", str(w.dir / "nope"), str(w.run)],
             lambda w: ("nope: no such directory", "e.g. runs/demo"), absent=("tunesmith eval",)),
        Case("run dir", "compare-a-file", lambda w: ["compare", str(w.write("notes.txt", "x")), str(w.run)],
             lambda w: ("notes.txt: a file, not a run directory", "e.g. runs/demo"),
             absent=("tunesmith eval",)),
        Case("run dir", "inspect-missing-file", lambda w: ["data", "inspect", "nope.jsonl"],
             lambda w: ("nope.jsonl (looked for at", "file not found",
                        "Check the path given to `tunesmith data inspect`"), absent=("in the recipe",)),
    ]


def cases() -> list[Case]:
    found = ([_data_case(*row) for row in DATA_FILES] + _uncleaned_cases()
             + [_recipe_case(*row) for row in RECIPES]
             + [_override_case(*row) for row in OVERRIDES] + [_model_case(*row) for row in MODELS]
             + _run_cases() + _signal_cases() + _share_cases() + _grpo_cases() + _license_cases()
             + _message_cases())
    ids = [c.id for c in found]
    assert len(ids) == len(set(ids)), "case ids are unique"
    return found


if __name__ == "__main__":
    for case in cases():
        print(f"{case.family:10} {case.id}")
    print(f"{len(cases())} cases")
