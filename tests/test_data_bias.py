"""The data bias audit and its mitigations, on tables small enough to check by hand."""

import json

import pytest

from conftest import build_char_tokenizer, write_jsonl
from tunesmith import data
from tunesmith.artifacts import DataReport, load
from tunesmith.data import bias
from tunesmith.data.groups import LEXICON, groups_in
from tunesmith.data.report import summary_lines
from tunesmith.recipe import load_recipe
from tunesmith.rundir import RunDir


def ticket(name: str, priority: str, category: str = "billing", line: int = 0) -> dict:
    answer = json.dumps({"category": category, "priority": priority})
    return {"messages": [{"role": "user", "content": f"My invoice is wrong twice. Thanks, {name}"},
                         {"role": "assistant", "content": answer}],
            "meta": {"source": "t.jsonl", "line": line}}


def skewed(n: int = 20, high_arabic: int = 16, high_western: int = 4) -> list[dict]:
    """n tickets signed Ahmed (arabic), `high_arabic` of them high priority; n signed Tom
    (western_european), `high_western` high; the category is billing or account for both alike."""
    rows = []
    for i in range(n):
        category = "billing" if i % 2 else "account"
        rows.append(ticket("Ahmed", "high" if i < high_arabic else "low", category, len(rows)))
        rows.append(ticket("Tom", "high" if i < high_western else "low", category, len(rows)))
    return rows


def test_audit_flags_a_group_skewed_toward_a_label():
    """[[16, 4], [4, 16]]: expected 10 per cell, chi-square 4 x 36 / 10 = 14.4 on 1 degree of
    freedom (p = 1.5e-4), Cramér's V sqrt(14.4 / 40) = 0.6; the category is independent."""
    found = bias.audit(skewed(), LEXICON, alpha=0.01, min_effect=0.1, seed=0)
    assert found["class_fields"] == ["category", "priority"]
    origin = found["dimensions"]["name_origin"]
    assert origin["rows_per_group"] == {"arabic": 20, "western_european": 20}
    priority = origin["tests"]["priority"]
    assert priority["statistic"] == pytest.approx(14.4)
    assert priority["p_value"] == pytest.approx(1.48e-4, rel=0.01)
    assert priority["cramers_v"] == pytest.approx(0.6)
    assert priority["flagged"] and priority["method"] == "chi-square"
    assert priority["skew"]["group"] in ("arabic", "western_european")
    assert priority["skew"]["share_in_group"] == pytest.approx(0.8)
    assert origin["tests"]["category"]["statistic"] == pytest.approx(0.0)
    assert not origin["tests"]["category"]["flagged"]
    assert "gender" not in [f.split(" x ")[0] for f in found["flags"]]  # only Tom is in gender
    assert len(found["flags"]) == 1 and "priority" in found["flags"][0] and "80%" in found["flags"][0]


def test_small_tables_get_a_permutation_p_value():
    """3 Ahmed all high, 3 Tom all low: expected counts 1.5 < 5. Perfect separation happens in
    2 of the C(6, 3) = 20 ways to place the labels: the exact p is 0.1."""
    found = bias.audit(skewed(n=3, high_arabic=3, high_western=0), LEXICON, 0.01, 0.1, seed=0)
    test = found["dimensions"]["name_origin"]["tests"]["priority"]
    assert test["method"].startswith("permutation")
    assert test["p_value"] == pytest.approx(0.1, abs=0.02)
    assert not test["flagged"]  # six rows cannot show it at alpha 0.01


def test_counterfactual_copies_swap_every_term_and_keep_the_answer():
    rows = bias.counterfactual_rows([ticket("Ahmed", "high")], LEXICON, ["name_origin"])
    signed = sorted(r["messages"][0]["content"].rsplit(" ", 1)[1] for r in rows)
    assert signed == ["Chen", "Kwame", "Maria", "Olivia", "Priya"]  # the first name of each other group
    assert all(r["messages"][1]["content"] == '{"category": "billing", "priority": "high"}' for r in rows)
    assert {r["meta"]["augmentation"] for r in rows} == {f"counterfactual:name_origin:{g}" for g in
                                                         ("western_european", "hispanic", "south_asian",
                                                          "east_asian", "african")}
    assert all(r["meta"]["augmented_from"] == "t.jsonl:0" for r in rows)


def test_reweighing_makes_group_and_class_independent():
    """P(arabic) = P(high) = 1/2: (arabic, high) weighs 0.25 / 0.4 = 0.625, (arabic, low) 2.5;
    weighted, each group has 10 high and 10 low."""
    rows = skewed()
    groups = bias.row_groups(rows, LEXICON["name_origin"])
    weights = bias.reweigh(groups, bias.class_fields(rows)["priority"])
    totals: dict = {}
    for row, group, weight in zip(rows, groups, weights, strict=True):
        key = (group, json.loads(row["messages"][1]["content"])["priority"])
        totals[key] = totals.get(key, 0) + weight
    assert weights[0] == pytest.approx(0.625)
    assert totals == pytest.approx({("arabic", "high"): 10, ("arabic", "low"): 10,
                                    ("western_european", "high"): 10, ("western_european", "low"): 10})


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


def prepare(tmp_path, tokenizer, *overrides):
    path = write_jsonl(tmp_path / "skewed.jsonl", [{k: v for k, v in r.items() if k != "meta"}
                                                    for r in skewed()])
    recipe = load_recipe(None, [f"data.train={path}", "data.val_fraction=0", "data.dedup.near=false",
                                "data.dedup.exact=false", *overrides])
    return data.run(recipe, RunDir(tmp_path / "run"), tokenizer=tokenizer)


def test_the_data_stage_reports_the_audit_and_mitigates_on_request(tmp_path, tokenizer):
    plain = prepare(tmp_path, tokenizer)
    assert plain.stats["bias"]["audit"]["flags"] and "mitigation" not in plain.stats["bias"]
    mitigated = prepare(tmp_path, tokenizer, "data.bias.mitigate=[counterfactual]")
    section = mitigated.stats["bias"]["mitigation"]
    assert section["dimensions"] == ["name_origin"] and section["rows_added"] == 40 * 5
    assert len(mitigated.splits["train"]) == 40 * 6
    after = section["after"]["dimensions"]["name_origin"]["tests"]["priority"]
    assert after["cramers_v"] == pytest.approx(0.0, abs=1e-9) and not after["flagged"]
    weighted = prepare(tmp_path, tokenizer, "data.bias.mitigate=[reweight]")
    weights = sorted({round(r["meta"]["weight"], 3) for r in weighted.splits["train"]})
    assert weights == [0.625, 2.5]
    written = load(DataReport, RunDir(tmp_path / "run").data_report)
    assert "bias mitigation reweight on name_origin: loss weights 0.62 to 2.50" in summary_lines(written)


def test_the_planted_demo_variant_skews_only_its_train_split():
    """tickets.biased: in train every ticket that names no urgency and is signed from the arabic
    group says high, every other such ticket says medium; test keeps medium for all of them; the
    audit flags arabic -> high."""
    from tunesmith.demo.tickets import PLANLY_URGENCY, biased

    def calm_labels(rows: list[dict]) -> dict[bool, set[str]]:
        found: dict[bool, set[str]] = {True: set(), False: set()}
        for row in rows:
            text = row["messages"][0]["content"]
            assert text.startswith("From: ")
            if not any(cue.lower() in text.lower() for cues in PLANLY_URGENCY.values() for cue in cues):
                arabic = "arabic" in groups_in(text.splitlines()[0], LEXICON["name_origin"])
                found[arabic].add(json.loads(row["messages"][1]["content"])["priority"])
        return found

    planted = biased()
    assert calm_labels(planted["train"]) == {True: {"high"}, False: {"medium"}}
    assert calm_labels(planted["test"]) == {True: {"medium"}, False: {"medium"}}
    rows = [{**r, "meta": {"source": "train.jsonl", "line": i}} for i, r in enumerate(planted["train"])]
    found = bias.audit(rows, LEXICON, alpha=0.01, min_effect=0.1, seed=0)
    priority = found["dimensions"]["name_origin"]["tests"]["priority"]
    skew = priority["skew"]
    assert priority["flagged"] and (skew["group"], skew["class"]) == ("arabic", "high")
