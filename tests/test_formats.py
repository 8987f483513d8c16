"""Format detection and conversion, located errors, every reader, and the real fixtures."""

import json

import pytest

from conftest import REAL, write_jsonl
from tunesmith.data.formats import convert_row, detect_format
from tunesmith.data.load import load_file
from tunesmith.errors import DataError
from tunesmith.records import as_chat, check_record


def test_alpaca_with_input_system_and_history():
    record = convert_row({"system": "Be brief.", "history": [["hi", "hello"]],
                          "instruction": "Add", "input": "2+2", "output": "4"}, "alpaca")
    assert record["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "Add\n\n2+2"}, {"role": "assistant", "content": "4"},
    ]


def test_alpaca_without_input():
    record = convert_row({"instruction": "Say hi", "input": "", "output": "hi"}, "alpaca")
    assert record["messages"][0] == {"role": "user", "content": "Say hi"}


def test_sharegpt_roles_are_mapped():
    record = convert_row({"id": "7", "conversations": [
        {"from": "system", "value": "s"}, {"from": "human", "value": "q"},
        {"from": "gpt", "value": "a"}]}, "sharegpt")
    assert [m["role"] for m in record["messages"]] == ["system", "user", "assistant"]
    assert record["meta"] == {"id": "7"}


def test_openai_keeps_weights_and_rejects_bad_ones():
    record = convert_row({"messages": [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0},
        {"role": "user", "content": "q2"}, {"role": "assistant", "content": "b", "weight": 1}]}, "openai")
    assert [m.get("weight") for m in record["messages"]] == [None, 0, None, 1]
    with pytest.raises(ValueError, match=r"messages\[1\].weight is 0.5; tunesmith trains a turn fully"):
        convert_row({"messages": [{"role": "user", "content": "q"},
                                  {"role": "assistant", "content": "a", "weight": 0.5}]}, "openai")


def test_prompt_completion_text_and_classification():
    pc = convert_row({"prompt": "p", "completion": "c"}, "prompt_completion")
    assert as_chat(pc) == [{"role": "user", "content": "p"}, {"role": "assistant", "content": "c"}]
    assert convert_row({"text": "hello"}, "text") == {"text": "hello", "meta": {}}
    cls = convert_row({"text": "great film", "label": 1, "group": "a"}, "classification")
    assert cls == {"text": "great film", "label": "1", "meta": {"group": "a"}}
    assert as_chat(cls)[-1] == {"role": "assistant", "content": "1"}


@pytest.mark.parametrize("row,fmt,message", [
    ({"instruction": "x"}, "alpaca", 'missing "output" (alpaca format)'),
    ({"instruction": "x", "output": ""}, "alpaca", 'empty "output" (alpaca format)'),
    ({"conversations": [{"from": "bot", "value": "x"}]}, "sharegpt",
     "expected human, gpt, system, function_call"),
    ({"messages": [{"role": "user", "content": "q"}]}, "openai", "no non-empty assistant turn"),
    ({"text": "t", "label": ""}, "classification", 'empty "label"'),
    (["a", "list"], "text", "expected an object"),
])
def test_invalid_rows_say_what_is_wrong(row, fmt, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_record(convert_row(row, fmt))


def test_detection_by_majority_and_undetectable_names_the_closest():
    rows = [{"messages": []}, {"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}]
    assert detect_format(rows, "f") == "alpaca"
    with pytest.raises(DataError, match=r"closest is alpaca \(missing 'output'\)"):
        detect_format([{"instruction": "a", "input": "b"}], "f.csv")


def test_jsonl_broken_line_is_located(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n\n{"prompt": "c", "compl\n')
    with pytest.raises(DataError) as error:
        load_file(path)
    assert str(error.value).startswith(f"{path}:3: not valid JSON")
    assert "data.on_invalid: skip" in str(error.value)
    loaded = load_file(path, on_invalid="skip")
    assert len(loaded.records) == 1 and loaded.invalid[0].where == f"{path}:3"


def test_json_array_rows_know_their_lines(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c",\n'
                    '   "output": ""}\n]\n')
    loaded = load_file(path, on_invalid="skip")
    assert loaded.records[0]["meta"]["line"] == 2
    assert loaded.invalid[0].where == f"{path}:3"


def test_csv_missing_column_and_mapping(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("question,answer\nWhat is 2+2?,4\n\"multi\nline\",ok\n")
    with pytest.raises(DataError, match="match no format tunesmith reads"):
        load_file(path)
    loaded = load_file(path, columns={"prompt": "question", "completion": "answer"})
    assert loaded.format == "prompt_completion"
    assert [r["meta"]["line"] for r in loaded.records] == [2, 3]
    with pytest.raises(DataError, match=rf'{path}:2: missing "output" \(alpaca format\)'):
        load_file(path, fmt="alpaca", columns={"instruction": "question"})


def test_parquet_and_hf_datasets_dir(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    loaded = load_file(tmp_path / "d.parquet")
    assert loaded.format == "classification" and len(loaded.records) == 2
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    assert load_file(tmp_path / "ds").records[1]["label"] == "neg"


def test_real_alpaca_fixture():
    loaded = load_file(REAL / "alpaca_en_demo.json")
    assert loaded.format == "alpaca" and len(loaded.records) == 999 and not loaded.invalid
    raw = json.loads((REAL / "alpaca_en_demo.json").read_text())
    with_input = sum(bool(r.get("input")) for r in raw)
    joined = sum("\n\n" in r["messages"][0]["content"] for r in loaded.records)
    assert 0 < with_input <= joined  # rows with input got it appended; rows without did not break


def test_real_sharegpt_fixture():
    loaded = load_file(REAL / "dummy_conversation.json")
    assert loaded.format == "sharegpt" and len(loaded.records) == 500 and not loaded.invalid
    answers = [m["content"] for r in loaded.records for m in r["messages"] if m["role"] == "assistant"]
    assert answers.count("You too!") == 167
    assert max(sum(m["role"] == "assistant" for m in r["messages"]) for r in loaded.records) > 1


def test_empty_file(tmp_path):
    with pytest.raises(DataError, match="no rows"):
        load_file(write_jsonl(tmp_path / "e.jsonl", []))
