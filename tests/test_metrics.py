"""Metric and statistics functions against values computed by hand."""

import pytest

from tunesmith.evaluate import analysis
from tunesmith.evaluate.metrics import (
    corpus_scores,
    exact_match,
    json_fields,
    json_valid,
    label_scores,
    rouge_l,
    token_f1,
)
from tunesmith.evaluate.stats import bootstrap_ci, mcnemar, paired_bootstrap


def test_exact_match_and_token_f1():
    assert exact_match("  Paris\n", "Paris") == 1.0
    assert exact_match("paris", "Paris") == 0.0
    # prediction tokens {the, cat, sat}, reference {the, cat}: P = 2/3, R = 1, F1 = 0.8
    assert token_f1("The cat sat", "the cat") == pytest.approx(0.8)
    assert token_f1("dog", "cat") == 0.0


def test_rouge_l_by_longest_common_subsequence():
    # LCS of "a b c d" and "a b x d" is "a b d": P = R = 3/4
    assert rouge_l("a b c d", "a b x d") == pytest.approx(0.75)


def test_json_validity_and_fields():
    assert json_valid('Sure! {"category": "billing"} hope it helps') == 1.0
    assert json_valid("category: billing") == 0.0
    reference = '{"category": "billing", "priority": "high"}'
    swapped = '{"priority": "high", "category": "billing"}'
    assert json_fields(swapped, reference, ["category", "priority"]) == 1
    assert json_fields('{"category": "billing", "priority": "low"}', reference, ["category"]) == 1
    assert json_fields('{"category": "billing", "priority": "low"}', reference, ["priority"]) == 0


def test_bleu_and_chrf_are_sacrebleu_corpus_scores():
    scores = corpus_scores(["the cat is on the mat"] * 3, ["the cat is on the mat"] * 3)
    assert scores["bleu"]["value"] == pytest.approx(1.0)
    assert scores["chrf"]["value"] == pytest.approx(1.0)
    assert corpus_scores(["xyz"], ["the cat is on the mat"])["bleu"]["value"] == 0.0


def test_label_scores_hand_example():
    predicted = ["a", "a", "b", "b", "b", "c"]
    expected = ["a", "b", "b", "b", "c", "c"]
    scores = label_scores(predicted, expected, None)
    assert scores["accuracy"]["value"] == pytest.approx(4 / 6)
    # per class: a P=1/2 R=1 F=2/3; b P=2/3 R=2/3 F=2/3; c P=1 R=1/2 F=2/3 -> macro F1 2/3
    assert scores["macro"]["f1"] == pytest.approx(2 / 3)
    assert scores["micro"]["f1"] == pytest.approx(4 / 6)
    assert scores["confusion"] == {"labels": ["a", "b", "c"], "matrix": [[1, 0, 0], [1, 2, 0], [0, 1, 1]]}
    top = analysis.top_confusions(scores["confusion"]["labels"], scores["confusion"]["matrix"])
    assert ("b", "a", 1) in [(t.expected, t.predicted, t.count) for t in top]


def test_label_from_json_field():
    scores = label_scores(['{"category": "x"}', "garbage"], ['{"category": "x"}', '{"category": "y"}'],
                          "category")
    assert scores["accuracy"]["value"] == 0.5
    assert "<invalid>" in scores["confusion"]["labels"]


def test_bootstrap_ci_brackets_the_mean():
    assert bootstrap_ci([1.0] * 10) == (1.0, 1.0)
    low, high = bootstrap_ci([0, 1] * 50)
    assert low < 0.5 < high and high - low < 0.25


def test_paired_tests():
    base, tuned = [0] * 20, [1] * 6 + [0] * 14
    paired = paired_bootstrap(base, tuned)
    assert paired["delta"] == pytest.approx(0.3) and paired["ci_low"] > 0
    # 6 discordant pairs, all favouring tuned: two-sided exact p = 2 * (1/2)^6
    assert mcnemar(base, tuned)["p_value"] == pytest.approx(2 / 64)
    assert mcnemar(base, base)["p_value"] == 1.0


def test_error_classes():
    ref = '{"category": "billing", "priority": "high"}'
    assert analysis.error_class("", ref, False, False, None) == "empty"
    assert analysis.error_class('{"category": "bil', ref, False, True, None) == "truncated"
    assert analysis.error_class("It is billing.", ref, False, False, None) == "format_error"
    assert analysis.error_class(ref + " Anything else?", ref, False, False, None) == "extra_text"
    assert analysis.error_class('{"category": "account", "priority": "high"}', ref, False, False,
                                "category") == "wrong_label"
    assert analysis.error_class("spam", "ham", False, False, None) == "wrong_label"


def test_memorisation_counts_only_distinctive_answers():
    train = ["a long distinctive answer that appears once in training data", "short", "short"]
    result = analysis.memorisation_rate(
        ["a long distinctive answer that appears once in training data",
         "another long answer that was never seen in training"],
        train)
    assert result.model_dump() == {"checked": 2, "verbatim_train_answers": 1, "rate": 0.5, "min_chars": 40}


def test_group_gap_and_its_paired_change_between_two_runs():
    """Before: group a right on all 4 prompts, b on 1 (gap 0.75); after: a 3, b 3 (gap 0). The
    paired change is -0.75; each resample keeps a prompt's copies together, and b's one right
    prompt is not one of a's wrong one, so the gap after never exceeds the gap before."""
    from tunesmith.evaluate.stats import gap_ci, group_gap, paired_gap

    before = {"a": [1, 1, 1, 1], "b": [1, 0, 0, 0]}
    after = {"a": [1, 1, 1, 0], "b": [1, 1, 1, 0]}
    assert group_gap(before) == pytest.approx(0.75)
    assert group_gap(after) == 0.0
    low, high = gap_ci(before)
    assert 0.0 <= low <= 0.75 <= high <= 1.0
    change = paired_gap(before, after)
    assert change["delta"] == pytest.approx(-0.75)
    assert change["ci_high"] <= 0 and change["ci_low"] >= -1.0
    same = paired_gap(before, before)
    assert same["delta"] == 0 and same["p_value"] == 1.0 and not same["significant"]
