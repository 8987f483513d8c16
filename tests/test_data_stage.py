"""The data stage: cleaning, filters, dedup, leak-free splits, leakage, privacy, balance, augment."""

import json
from collections import Counter

import pytest

from conftest import REAL, build_char_tokenizer, write_jsonl
from tunesmith import data
from tunesmith.data import balance, privacy
from tunesmith.data.clean import normalise_messages, normalise_text
from tunesmith.data.dedup import (
    NearDupParams,
    exact_duplicate_groups,
    jaccard,
    near_duplicate_clusters,
    shingle,
)
from tunesmith.data.filters import repeated_ngram_fraction, text_character_fraction
from tunesmith.data.leakage import ngram_overlap
from tunesmith.demo import tickets
from tunesmith.recipe import load_recipe
from tunesmith.rundir import RunDir


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


def prepare(tmp_path, tokenizer, *overrides):
    recipe = load_recipe(None, [f"output.dir={tmp_path / 'runs'}", *overrides])
    return data.run(recipe, RunDir(tmp_path / "run"), tokenizer)


def test_normalise_text_and_chat_shape():
    counts = Counter()
    assert normalise_text("CafÃ© \x07ok  \n\n\n\nend ", counts) == "Café ok\n\nend"
    assert counts == {"mojibake_repaired": 1, "control_characters_removed": 1,
                      "whitespace_normalised": 1}
    assert normalise_text("def f():\n    return  1", Counter()) == "def f():\n    return  1"
    messages = normalise_messages([
        {"role": "user", "content": "a"}, {"role": "system", "content": "s"},
        {"role": "user", "content": "b"}, {"role": "assistant", "content": ""},
        {"role": "assistant", "content": "c"}, {"role": "user", "content": "unanswered"}], counts)
    assert messages == [{"role": "system", "content": "s"}, {"role": "user", "content": "a\n\nb"},
                        {"role": "assistant", "content": "c"}]


def test_filters_on_hand_made_rows():
    assert repeated_ngram_fraction("the cat sat " * 10) > 0.5
    assert repeated_ngram_fraction("one two three four five six seven eight nine ten eleven twelve") == 0
    assert text_character_fraction("\x00\x01\x02abc") == 0.5


def test_exact_and_near_duplicates_with_known_jaccard():
    base = "the quick brown fox jumps over the lazy dog near the river bank today"
    texts = [base, base.upper() + "  ", base + " again",
             "completely different words in this one sentence here"]
    assert exact_duplicate_groups(texts) == [[0, 1]]
    shingles = shingle(texts, 5)
    assert len(shingles[0]) == 10 and len(shingles[2]) == 11
    assert jaccard(shingles[0], shingles[2]) == pytest.approx(10 / 11)
    assert len(shingle(["two words"], 5)[0]) == 1  # shorter than a shingle: one shingle
    assert near_duplicate_clusters(texts, NearDupParams(threshold=0.8)) == [[0, 1, 2]]
    assert near_duplicate_clusters(texts, NearDupParams(threshold=0.95)) == [[0, 1]]


def test_demo_data_planted_duplicates_and_broken_rows_removed(tmp_path, tokenizer):
    paths = tickets.write(tmp_path / "demo")
    result = prepare(tmp_path, tokenizer, f"data.train={paths['train']}", f"data.test={paths['test']}",
                     f"data.eval_sets.ood={paths['ood']}", "data.on_invalid=skip")
    report = result.stats
    assert report["files"][str(paths["train"])]["invalid_rows"] == 6
    assert report["dedup"]["exact_removed"] >= 24 and report["dedup"]["near_removed"] >= 16
    kept = [data.match_text(r) for r in result.splits["train"] + result.splits["val"]]
    assert not exact_duplicate_groups(kept)
    assert not near_duplicate_clusters(kept), "no near-duplicate pair survives"
    for name in ("val", "test", "ood"):  # leak-free: no eval row is a near copy of a train row
        texts = [data.match_text(r) for r in result.splits["train"]]
        others = [data.match_text(r) for r in result.splits[name]]
        clusters = near_duplicate_clusters(texts + others)
        assert not [c for c in clusters if min(c) < len(texts) <= max(c)], name
    html = (tmp_path / "run" / "data" / "report.html").read_text()
    assert "data:image/png;base64," in html and "Duplicates" in html
    assert json.loads((tmp_path / "run" / "data" / "report.json").read_text())["splits"]["train"] > 400


def test_planted_eval_leak_is_removed_or_flagged(tmp_path, tokenizer):
    train = [{"prompt": f"ticket number {i}: the printer on floor {i} is broken again today",
              "completion": "hardware"} for i in range(20)]
    test = [{"prompt": "ticket number 3: the printer on floor 3 is broken again today!!",
             "completion": "hardware"}, {"prompt": "something unrelated entirely", "completion": "x"}]
    args = [f"data.train={write_jsonl(tmp_path / 't.jsonl', train)}",
            f"data.test={write_jsonl(tmp_path / 'e.jsonl', test)}", "data.val_fraction=0"]
    removed = prepare(tmp_path, tokenizer, *args).stats["leakage"]["sets"]["test"]
    assert removed["duplicates_of_train"] == 1 and removed["removed_from_train"] == 1
    flagged = prepare(tmp_path, tokenizer, *args, "data.leakage.action=flag")
    assert flagged.stats["leakage"]["sets"]["test"]["duplicates_of_train"] == 1
    assert len(flagged.splits["train"]) == 20
    dropped = prepare(tmp_path, tokenizer, *args, "data.leakage.action=drop_from_eval")
    assert len(dropped.splits["test"]) == 1 and len(dropped.splits["train"]) == 20


def test_ngram_overlap_counts_rows():
    train = ["a b c d e f g h i j k l m n o p"]
    other = ["x a b c d e f g h i j k l m y", "nothing shared here at all"]
    result = ngram_overlap(train, other, 13)
    assert result["rows_with_overlap"] == 1 and result["row_share"] == 0.5


def test_privacy_scrub():
    text, counts = privacy.scrub("Mail jo@example.com or call +1 415-555-0132, card 4111 1111 1111 "
                                 "1111, from 192.168.1.20; order 1234-5678 v1.2.3")
    assert text == ("Mail <EMAIL> or call <PHONE>, card <CARD>, from <IP>; order 1234-5678 v1.2.3")
    assert counts == {"email": 1, "phone": 1, "card": 1, "ip": 1}
    assert not privacy.luhn_valid("4111 1111 1111 1112")


def test_stratified_split_is_seeded_and_keeps_groups():
    records = [{"label": "a" if i < 80 else "b", "meta": {}} for i in range(100)]
    kept, held = balance.stratified_split(records, 0.1, "label", seed=3)
    assert Counter(records[i]["label"] for i in held) == {"a": 8, "b": 2}
    assert balance.stratified_split(records, 0.1, "label", seed=3) == (kept, held)
    groups = [i // 2 for i in range(100)]  # pairs must stay together
    kept, held = balance.stratified_split(records, 0.1, "label", seed=3, groups=groups)
    assert all((i ^ 1) in held for i in held)


def test_rebalance_strategies():
    records = [{"label": "a", "meta": {}}] * 6 + [{"label": "b", "meta": {}}] * 2
    capped, _ = balance.rebalance(records, "cap", "label", 3, seed=0)
    assert Counter(r["label"] for r in capped) == {"a": 3, "b": 2}
    over, _ = balance.rebalance(records, "oversample", "label", None, seed=0)
    assert Counter(r["label"] for r in over) == {"a": 6, "b": 6}
    _, weights = balance.rebalance(records, "class_weights", "label", None, seed=0)
    assert weights == {"a": pytest.approx(8 / 12), "b": pytest.approx(2.0)}


def test_augmentation_only_in_train_and_marked(tmp_path, tokenizer):
    rows = [{"instruction": f"classify ticket {i} about billing problems", "output": "billing"}
            for i in range(30)]
    result = prepare(tmp_path, tokenizer, f"data.train={write_jsonl(tmp_path / 'a.jsonl', rows)}",
                     "data.augment.methods=[random_swap,template]",
                     "data.augment.templates=['Customer wrote: {text}']")
    augmented = [r for r in result.splits["train"] if "augmented_from" in r["meta"]]
    assert len(augmented) == 2 * (len(result.splits["train"]) - len(augmented))
    assert any(r["messages"][0]["content"].startswith("Customer wrote: ") for r in augmented)
    assert not any("augmented_from" in r["meta"] for r in result.splits["val"])
    assert all(r["messages"][-1]["content"] == "billing" for r in augmented)


def test_same_recipe_same_split(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "s.jsonl", [{"text": f"row {i} text here", "label": str(i % 3)}
                                              for i in range(60)])
    first = prepare(tmp_path, tokenizer, f"data.train={path}").splits["val"]
    second = prepare(tmp_path, tokenizer, f"data.train={path}").splits["val"]
    assert first == second and len(first) == 6


def test_real_sharegpt_templated_answers_reported(tmp_path, tokenizer):
    result = prepare(tmp_path, tokenizer, f"data.train={REAL / 'dummy_conversation.json'}",
                     "data.val_fraction=0", "data.filters.max_tokens=100000")
    clusters = result.stats["dedup"]["answer_clusters"]
    assert clusters[0]["size"] == 167 and clusters[0]["example"] in ("You too!",
                                                                     "Hello! How can I help you today?")
    assert {c["example"] for c in clusters if c["size"] == 167} >= {"You too!"}


def test_real_alpaca_runs_clean(tmp_path, tokenizer):
    result = prepare(tmp_path, tokenizer, f"data.train={REAL / 'alpaca_en_demo.json'}",
                     "data.val_fraction=0", "data.filters.max_tokens=100000")
    assert result.stats["files"][str(REAL / "alpaca_en_demo.json")]["invalid_rows"] == 0
    assert "mojibake_repaired" not in result.stats.get("clean", {})
    assert result.stats["dedup"]["near_removed"] <= 2  # genuinely distinct instructions
