"""Data rights: each file's license (recipe, dataset card, saved dataset), checked against the
declared use before any work, and carried into the model card with the terms it passes on."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import REAL, write_jsonl
from tunesmith.artifacts import DataLicenses, FileLicense
from tunesmith.data.licenses import check, inherited, model_license, resolve
from tunesmith.errors import ConfigError, DataError
from tunesmith.licenses import LicenseIdError, license_terms, verdict
from tunesmith.recipe import load_recipe

ALPACA = REAL / "alpaca_en_demo.json"


def _recipe(*overrides: str):
    return load_recipe(None, list(overrides))


def _card(directory, front: dict) -> None:
    (directory / "README.md").write_text("---\n" + yaml.safe_dump(front) + "---\n# a dataset\n")


# --- the one table ---------------------------------------------------------------------------

def test_the_table_reads_spdx_and_hub_ids_and_expressions():
    nc = license_terms("cc-by-nc-4.0")  # the Hub's spelling
    assert (nc.id, nc.commercial, nc.attribution, nc.share_alike) == ("CC-BY-NC-4.0", "no", True, False)
    assert not license_terms("CC-BY-ND-4.0").derivatives and license_terms("CC-BY-ND-4.0").commercial == "yes"
    assert license_terms("odc-by").id == "ODC-By-1.0"
    both = license_terms("CC-BY-SA-4.0 AND MIT")  # both apply: the strictest of each
    assert (both.commercial, both.share_alike) == ("yes", True)
    assert license_terms("MIT AND CC-BY-NC-4.0").commercial == "no"
    assert license_terms("MIT OR CC-BY-NC-4.0").commercial == "yes"  # the licensee chooses
    assert license_terms("LicenseRef-acme-internal").commercial == "unknown"
    assert license_terms("qwen-research").commercial == "no"  # model licenses share the table
    with pytest.raises(LicenseIdError, match="closest: CC-BY-NC-4.0"):
        license_terms("CC-BY-NC-5.0")
    with pytest.raises(LicenseIdError, match="one operator"):
        license_terms("MIT AND GPL-3.0 OR ISC")
    assert license_terms("acme-nc-1.0", strict=False).commercial == "no"  # a card's id, judged by its name


def test_every_catalog_license_is_in_the_table():
    from tunesmith.models.catalog import load_catalog

    for entry in load_catalog():
        assert license_terms(entry.license).commercial in ("yes", "no", "conditions"), entry.hub_id


def test_the_verdict_of_each_declared_use():
    nc, sa, nd = license_terms("CC-BY-NC-4.0"), license_terms("CC-BY-SA-4.0"), license_terms("CC-BY-ND-4.0")
    assert "does not allow commercial use" in verdict(nc, "commercial")[0]
    accepted = "CC-BY-NC-4.0 accepted (a separate agreement)"
    assert verdict(nc, "commercial", ["cc-by-nc-4.0"]) == (None, accepted)
    assert verdict(nc, "research") == (None, "CC BY-NC 4.0 asks for attribution: credit the source wherever "
                                             "the model is shared")
    refusal, warning = verdict(sa, "commercial")
    assert refusal is None and "share-alike" in warning and "attribution" in warning
    assert "no derivatives" in verdict(nd, "commercial")[0]
    assert verdict(nd, "research")[0] is None and "may not be shared" in verdict(nd, "research")[1]
    assert "cannot tell" in verdict(license_terms("unknown"), "commercial")[1]
    assert verdict(nc, "unspecified") == (None, None)  # nothing declared, nothing judged
    assert verdict(license_terms("Apache-2.0"), "commercial") == (None, None)


# --- where a file's license comes from -------------------------------------------------------

def test_recipe_key_then_dataset_card_then_saved_dataset(tmp_path):
    import datasets

    for folder in ("mine", "hub"):
        (tmp_path / folder).mkdir()
    mine, hub = tmp_path / "mine" / "train.jsonl", tmp_path / "hub"
    write_jsonl(mine, [])
    carded = write_jsonl(hub / "data.jsonl", [])
    _card(hub, {"license": "cc-by-sa-4.0", "pretty_name": "Some wiki"})
    saved = tmp_path / "saved"
    info = datasets.DatasetInfo(license="odc-by")
    datasets.Dataset.from_list([{"text": "a"}], info=info).save_to_disk(saved)
    nowhere = write_jsonl(tmp_path / "test.jsonl", [])
    recipe = _recipe(f"data.train=[{mine}, {carded}, {saved}]", f"data.test={nowhere}",
                     f"data.licenses={{{mine}: {{license: proprietary, source: our CRM}}, '*.md': MIT}}")
    with pytest.raises(ConfigError, match=r"'\*.md' matches none of the data files"):
        resolve(recipe.data)
    recipe = _recipe(f"data.train=[{mine}, {carded}, {saved}]", f"data.test={nowhere}",
                     "data.licenses={'*/mine/*.jsonl': {license: proprietary, source: our CRM}}")
    found = {f.path: f for f in resolve(recipe.data)}
    assert (found[str(mine)].license, found[str(mine)].source) == ("proprietary", "our CRM")
    assert found[str(mine)].declared_in == "data.licenses['*/mine/*.jsonl']"
    assert (found[str(carded)].license, found[str(carded)].source) == ("CC-BY-SA-4.0", "Some wiki")
    assert found[str(carded)].declared_in == str(hub / "README.md")
    assert found[str(saved)].license == "ODC-By-1.0"
    assert found[str(saved)].declared_in.endswith("dataset_info.json")
    assert (found[str(nowhere)].license, found[str(nowhere)].role) == ("unknown", "test")
    named = _recipe(f"data.train={carded}", "data.licenses={data.jsonl: CC-BY-4.0}")  # a name, no /
    assert resolve(named.data)[0].license == "CC-BY-4.0"  # the recipe outranks the card


def test_a_malformed_card_license_is_located(tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", [])
    _card(tmp_path, {"license": {"id": "mit"}})
    broken = r"README.md: license: \{'id': 'mit'\} is not a license id.*data.licenses"
    with pytest.raises(DataError, match=broken):
        resolve(_recipe(f"data.train={data}").data)
    (tmp_path / "README.md").write_text("---\nlicense: [mit\n---\n")
    with pytest.raises(DataError, match="README.md:2: its YAML front matter is not valid YAML"):
        resolve(_recipe(f"data.train={data}").data)


# --- the check, before any work --------------------------------------------------------------

def test_commercial_use_is_checked_file_by_file(tmp_path):
    files = {name: write_jsonl(tmp_path / f"{name}.jsonl", []) for name in ("nc", "sa", "odd", "ok")}
    given = (f"data.train=[{files['nc']}, {files['sa']}, {files['odd']}, {files['ok']}]",
             "data.licenses={nc.jsonl: CC-BY-NC-4.0, sa.jsonl: CC-BY-SA-4.0, ok.jsonl: CC0-1.0}")
    commercial = _recipe(*given, "model.intended_use=commercial")
    with pytest.raises(ConfigError) as refused:
        check(commercial, resolve(commercial.data))
    message = str(refused.value)
    assert "nc.jsonl: license CC-BY-NC-4.0" in message and "sa.jsonl" not in message
    assert "Drop the file from data.train, or, if you hold a separate agreement, set data.accept_license: " \
           "CC-BY-NC-4.0" in message
    accepted = _recipe(*given, "model.intended_use=commercial", "data.accept_license=cc-by-nc-4.0")
    warnings = check(accepted, resolve(accepted.data))
    assert [w.split(" ")[0].rsplit("/", 1)[1] for w in warnings] == ["nc.jsonl", "sa.jsonl", "odd.jsonl"]
    assert "share-alike" in warnings[1] and "attribution" in warnings[1]
    assert "cannot tell whether it allows commercial use" in warnings[2]  # unknown: once per file
    assert check(_recipe(*given), resolve(_recipe(*given).data)) == []  # no use declared: no check


def test_feedback_without_consent_never_trains(tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", [])
    _card(tmp_path, {"license": "apache-2.0", "tunesmith": {"consent": "none", "files": ["sft.jsonl"]}})
    recipe = _recipe(f"data.train={data}")
    with pytest.raises(ConfigError, match="did not agree that their conversations train models"):
        check(recipe, resolve(recipe.data))
    _card(tmp_path, {"license": "apache-2.0", "tunesmith": {"consent": "unknown", "files": ["sft.jsonl"]}})
    assert "consent to training is unknown" in check(recipe, resolve(recipe.data))[0]
    _card(tmp_path, {"license": "apache-2.0", "tunesmith": {"consent": "none", "files": ["kto.jsonl"]}})
    assert resolve(recipe.data)[0].license == "unknown"  # a card of other files says nothing of this one


# --- what the model inherits -----------------------------------------------------------------

def _section(*licenses: str, accepted: tuple[str, ...] = ()) -> DataLicenses:
    return DataLicenses(files=[FileLicense(path=f"d/{i}.jsonl", role="train", license=lic, declared_in="x")
                               for i, lic in enumerate(licenses)], accepted=list(accepted))


def test_the_card_license_is_the_base_unless_the_data_binds_it():
    assert model_license("Apache-2.0", _section("CC0-1.0", "MIT", "CC-BY-4.0")) == ("Apache-2.0", None)
    assert model_license("Apache-2.0", _section("CC-BY-NC-4.0", "MIT")) == ("CC-BY-NC-4.0", None)
    assert model_license("llama3.2", _section("CC-BY-NC-4.0")) == ("other", "llama3.2 AND CC-BY-NC-4.0")
    assert model_license("Apache-2.0", _section("CC-BY-NC-4.0", "CC-BY-SA-4.0")) == (
        "other", "Apache-2.0 AND CC-BY-NC-4.0 AND CC-BY-SA-4.0")
    assert model_license("Apache-2.0", None) == ("Apache-2.0", None)
    lines = inherited(_section("CC-BY-NC-4.0", "CC-BY-SA-4.0", "unknown", accepted=("CC-BY-NC-4.0",)))
    assert lines[0] == ("non-commercial: trained on CC BY-NC 4.0 data (`0.jsonl`) (accepted by "
                        "data.accept_license: a separate agreement)")
    assert any(line.startswith("share-alike: trained on CC BY-SA 4.0 data (`1.jsonl`)") for line in lines)
    assert lines[-1].startswith("unknown: the terms of `2.jsonl`")
    assert inherited(_section("CC0-1.0")) == []


def test_the_demo_data_carries_its_own_card(tmp_path):
    from tunesmith.demo import tickets

    tickets.write(tmp_path)
    recipe = load_recipe("recipes/demo.yaml", [f"data.train={tmp_path / 'train.jsonl'}",
                                               f"data.test={tmp_path / 'test.jsonl'}",
                                               f"data.eval_sets.ood={tmp_path / 'ood.jsonl'}"])
    found = resolve(recipe.data)
    assert {(f.role, f.license) for f in found} == {("train", "CC0-1.0"), ("test", "CC0-1.0"),
                                                    ("eval set ood", "CC0-1.0")}
    assert all(f.source.startswith("generated by tunesmith.demo.tickets") for f in found)


# --- through the CLI, on the real public file ------------------------------------------------

def _cli(*argv: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunesmith", *argv], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


def test_a_commercial_recipe_on_non_commercial_data_is_refused_before_any_work(tiny_model_dir, tmp_path):
    done = _cli("train", "recipes/demo.yaml", f"model.name={tiny_model_dir}", f"data.train={ALPACA}",
                "data.test=null", "data.eval_sets={}", "data.licenses={alpaca_en_demo.json: CC-BY-NC-4.0}",
                "model.intended_use=commercial", f"output.dir={tmp_path / 'runs'}", cwd=".")
    assert done.returncode == 2, done.stderr
    error = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "Traceback" not in done.stderr
    assert f"{ALPACA}: license CC-BY-NC-4.0" in error[0] and "does not allow commercial use" in error[0]
    assert "set data.accept_license: CC-BY-NC-4.0" in error[0]
    assert not (tmp_path / "runs").exists()  # refused before data preparation


def test_accepted_and_mixed_licenses_reach_the_card(tiny_model_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    _card(model, {"license": "apache-2.0"})
    faq = write_jsonl(tmp_path / "faq.jsonl", [{"instruction": f"what is item {i}?",
                                                "output": f"item {i} is a thing"} for i in range(12)])
    licenses = ("data.licenses={alpaca_en_demo.json: {license: CC-BY-NC-4.0, source: Alpaca-GPT4 via "
                "LLaMA-Factory}, dummy_conversation.json: {license: Apache-2.0, source: "
                "'https://huggingface.co/datasets/lmsys/fastchat-dummy'}, faq.jsonl: {license: CC-BY-SA-4.0, "
                "attribution: Example Wiki contributors}}")
    done = _cli("run", "recipes/demo.yaml", f"model.name={model}", "name=mixed",
                f"output.dir={tmp_path / 'runs'}",
                f"data.train=[{ALPACA}, {REAL / 'dummy_conversation.json'}, {faq}]", "data.test=null",
                "data.eval_sets={}", "data.max_rows=30", "data.filters.max_tokens=100000", licenses,
                "model.intended_use=commercial", "data.accept_license=CC-BY-NC-4.0", "train.max_steps=1",
                "eval.max_new_tokens=2", "eval.forgetting_probe=false", "data.val_fraction=0.1",
                "data.test_fraction=0.1", "eval.bias.enabled=false", "data.bias.audit=false", cwd=".")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "faq.jsonl (CC-BY-SA-4.0): CC BY-SA 4.0 is share-alike" in " ".join(done.stderr.split())
    card = (tmp_path / "runs" / "mixed" / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    binding = "Apache-2.0 AND CC-BY-NC-4.0 AND CC-BY-SA-4.0"
    assert (front["license"], front["license_name"]) == ("other", binding)
    assert "lmsys/fastchat-dummy" in front["datasets"] and str(ALPACA) in front["datasets"]
    assert ("non-commercial: trained on CC BY-NC 4.0 data (`alpaca_en_demo.json`) (accepted by "
            "data.accept_license: a separate agreement)") in card
    assert "share-alike: trained on CC BY-SA 4.0 data (`faq.jsonl`)" in card
    assert "attribution: credit Example Wiki contributors (CC BY-SA 4.0)" in card
    row = next(line for line in card.splitlines() if line.startswith(f"| `{ALPACA}`"))
    assert "| train |" in row and "| CC-BY-NC-4.0 | Alpaca-GPT4 via LLaMA-Factory |" in row
    report = json.loads((tmp_path / "runs" / "mixed" / "data" / "report.json").read_text())["licenses"]
    kept = {f["path"].rsplit("/", 1)[1]: f["rows_kept"] for f in report["files"]}
    train = [json.loads(line) for line in (tmp_path / "runs" / "mixed" / "data" / "train.jsonl").open()]
    assert sum(kept.values()) == len(train)  # every training row is counted against its file
    assert "data.accept_license: CC-BY-NC-4.0 (a separate agreement)" in card


def test_an_adapter_continued_passes_on_the_terms_of_its_data(tmp_path):
    earlier = tmp_path / "runs" / "first"
    (earlier / "data").mkdir(parents=True)
    first = _section("CC-BY-NC-4.0", "MIT")
    (earlier / "data" / "report.json").write_text(json.dumps({"licenses": first.model_dump()}))
    again = write_jsonl(tmp_path / "more.jsonl", [])
    recipe = _recipe(f"data.train={again}", f"train.init_adapter={earlier / 'model'}",
                     "data.licenses={more.jsonl: CC0-1.0}", "model.intended_use=commercial")
    found = resolve(recipe.data, recipe.train.init_adapter)
    assert [(f.path, f.license) for f in found] == [(str(again), "CC0-1.0"), ("d/0.jsonl", "CC-BY-NC-4.0"),
                                                    ("d/1.jsonl", "MIT")]
    assert found[1].via == str(earlier / "model") and found[0].via is None
    with pytest.raises(ConfigError, match="d/0.jsonl: license CC-BY-NC-4.0, from x, learned by the adapter .*"
                                          "start from a fresh adapter"):
        check(recipe, found)  # the adapter learned from non-commercial data: so did this model
    from tunesmith.data.licenses import report_section

    research = _recipe(f"data.train={again}", f"train.init_adapter={earlier / 'model'}",
                       "data.licenses={more.jsonl: CC0-1.0}", "model.intended_use=research")
    section = report_section(research, resolve(research.data, research.train.init_adapter))
    assert section.files[1].sha256 is None and section.files[1].rows_kept is None  # recorded there
    assert inherited(section)[0] == ("non-commercial: trained on CC BY-NC 4.0 data (`0.jsonl` via the "
                                     f"adapter {earlier / 'model'})")
