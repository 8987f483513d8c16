"""Real-world formats (LLaMA-Factory's tool-calling, content-part, DPO and KTO files), rows judged
as they will be trained, encodings, and row limits."""

import gzip
import json

import pytest

from conftest import REAL, build_char_tokenizer, write_jsonl
from tunesmith import data, pipeline
from tunesmith.data.formats import convert_row
from tunesmith.errors import DataError
from tunesmith.models.chat import answer_spans, tokenize_record
from tunesmith.recipe import load_recipe
from tunesmith.records import RowError, check_record


def recipe_for(*overrides):
    return load_recipe(None, list(overrides))


def test_glaive_tool_calls_become_openai_tool_calls():
    loaded = data.load(recipe_for(), str(REAL / "glaive_toolcall_en_demo.json"))
    assert loaded.format == "sharegpt" and len(loaded.records) == 60 and not loaded.invalid
    first = loaded.records[0]
    roles = [m["role"] for m in first["messages"]]
    assert roles[:6] == ["user", "assistant", "user", "assistant", "tool", "assistant"]
    call = first["messages"][3]["tool_calls"][0]
    assert call == {"type": "function", "function": {
        "name": "search_recipes", "arguments": {"ingredients": ["chicken", "bell peppers", "rice"]}}}
    assert first["tools"][0]["type"] == "function"
    assert first["tools"][0]["function"]["name"] == "search_recipes"
    raw = json.loads((REAL / "glaive_toolcall_en_demo.json").read_text())
    with_tools = sum(1 for r in raw if r["tools"] not in ("", "[]"))
    assert sum(1 for r in loaded.records if r.get("tools")) == with_tools


def _masked_text(tokenizer, record):
    row = tokenize_record(tokenizer, record, "assistant", 10**6, None)
    return tokenizer.decode([t for t, m in zip(row["input_ids"], row["assistant_masks"], strict=True) if m])


def test_tool_calls_fallback_rendering_puts_calls_in_the_loss_and_results_out():
    tokenizer = build_char_tokenizer()  # ChatML without tools: the documented fallback
    record = data.load(recipe_for(), str(REAL / "glaive_toolcall_en_demo.json")).records[0]
    text, _ = answer_spans(tokenizer, record["messages"], record["tools"])
    assert "<tools>" in text and '"name": "search_recipes"' in text
    assert "<tool_response>" in text
    masked = _masked_text(tokenizer, record)
    assert '<tool_call>\n{"name": "search_recipes"' in masked
    assert "Chicken and Rice Casserole" in text and "tool_response" not in masked
    assert '"recipes": [' not in masked  # the observation is input, not something to learn


def test_tool_aware_template_gets_tools_natively():
    tokenizer = build_char_tokenizer()
    tokenizer.chat_template = (
        "{% if tools %}<|im_start|>system\nTOOLS {{ tools | tojson }}<|im_end|>\n{% endif %}"
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
        "{% for c in m.get('tool_calls', []) %}CALL {{ c['function']['name'] }}{% endfor %}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    record = convert_row({"messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
        {"role": "tool", "content": "rain"},
        {"role": "assistant", "content": "It rains."}],
        "tools": [{"name": "get_weather", "parameters": {}}]}, "openai")
    check_record(record)
    text, spans = answer_spans(tokenizer, record["messages"], record["tools"])
    assert text.startswith("<|im_start|>system\nTOOLS [{")
    assert [text[s:e] for s, e in spans] == ["CALL get_weather<|im_end|>\n", "It rains.<|im_end|>\n"]


def test_tool_calling_file_trains_two_steps(tmp_path, tiny_model_dir):
    recipe = recipe_for(f"model.name={tiny_model_dir}", f"data.train={REAL / 'glaive_toolcall_en_demo.json'}",
                        "data.max_rows=16", "data.val_fraction=0", "data.filters.max_tokens=1000000",
                        "train.max_steps=2", "train.batch_size=2", "train.max_length=384",
                        f"output.dir={tmp_path}", "name=tools")
    result = pipeline.fine_tune(recipe)
    assert result.steps == 2 and (result.model_dir / "adapter_model.safetensors").exists()


def test_content_parts_and_loss_weight_of_v1_sft_demo():
    loaded = data.load(recipe_for(), str(REAL / "v1_sft_demo.jsonl"))
    assert loaded.format == "openai" and len(loaded.records) == 60 and not loaded.invalid
    messages = loaded.records[0]["messages"]
    assert messages == [{"role": "user", "content": "hi"}, {"role": "assistant", "weight": 1,
                        "content": "Hello! I am {{name}}, an AI assistant developed by {{author}}. "
                                   "How can I assist you today?"}]


def test_non_text_parts_counted_and_image_only_turns_invalid(tmp_path):
    rows = [{"messages": [{"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                                       {"type": "image_url", "image_url": {"url": "x"}}]},
                          {"role": "assistant", "content": "a cat"}]},
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                          {"role": "assistant", "content": "a dog"}]}]
    path = write_jsonl(tmp_path / "mm.jsonl", rows)
    loaded = data.load(recipe_for(), str(path), on_invalid="skip")
    assert len(loaded.records) == 1 and loaded.non_text_parts == {"image_url": 1}
    assert "holds only image_url parts and no text" in loaded.invalid[0].error
    assert loaded.invalid[0].where == f"{path}:2"


def test_rows_are_judged_after_cleaning(tmp_path):
    rows = [{"messages": [{"role": "assistant", "content": "Hi, how can I help?"},
                          {"role": "user", "content": "refund"}, {"role": "assistant", "content": "ok"}]},
            {"messages": [{"role": "user", "content": "\u200b\x07"}, {"role": "assistant", "content": "x"}]},
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                          {"role": "user", "content": "unanswered"}]}]
    loaded = data.load(recipe_for(), str(write_jsonl(tmp_path / "c.jsonl", rows)), on_invalid="skip")
    errors = [i.error for i in loaded.invalid]
    assert "messages[0] is an assistant turn with no user turn before it" in errors[0]
    assert "no user turn before it" in errors[1]  # the user turn was only control characters
    assert len(loaded.records) == 1 and loaded.records[0]["messages"][-1]["content"] == "a"


@pytest.mark.parametrize("name,fmt,kind_check", [
    ("dpo_en_demo.json", "dpo",
     lambda r: r["chosen"] and r["rejected"] and r["prompt"][-1]["role"] == "user"),
    ("kto_en_demo.json", "kto", lambda r: isinstance(r["label"], bool) and r["completion"]),
])
def test_preference_files_are_detected_and_refused_for_sft(tmp_path, name, fmt, kind_check):
    loaded = data.load(recipe_for(), str(REAL / name))
    assert loaded.format == fmt and loaded.kind == "preference" and not loaded.invalid
    assert all(kind_check(r) for r in loaded.records)
    recipe = recipe_for(f"data.train={REAL / name}", f"output.dir={tmp_path}")
    with pytest.raises(DataError, match="preference data .* train.method is lora.* Set train.method: dpo"):
        pipeline.prepare(recipe)
    assert not (tmp_path / "run").exists()
    prepared = pipeline.prepare(recipe_for(f"data.train={REAL / name}", f"output.dir={tmp_path}",
                                           f"train.method={fmt}", "data.filters.max_tokens=100000"))
    assert prepared.report.kind == "preference" and prepared.report.splits["train"] > 30


def test_kto_labels_counted():
    labels = [r["label"] for r in data.load(recipe_for(), str(REAL / "kto_en_demo.json")).records]
    raw = json.loads((REAL / "kto_en_demo.json").read_text())
    assert labels == [r["label"] for r in raw] and sum(labels) == 25


def test_windows_encodings_are_named_and_readable(tmp_path):
    path = tmp_path / "cp.jsonl"
    row = '{"prompt": "Caf\u00e9 cr\u00e8me \u2013 price?", "completion": "3 \u20ac"}\n'
    path.write_bytes(row.encode("cp1252"))
    located = r"cp.jsonl:1: not UTF-8 \(byte 0xe9 at column 16\).*data.encoding: cp1252"
    with pytest.raises(DataError, match=located):
        data.load(recipe_for(), str(path))
    loaded = data.load(recipe_for("data.encoding=cp1252"), str(path))
    assert loaded.records[0]["messages"][1]["content"] == "3 \u20ac"
    utf16 = tmp_path / "u16.jsonl"
    utf16.write_text('{"prompt": "na\u00efve", "completion": "ok"}\n', encoding="utf-16")
    assert data.load(recipe_for(), str(utf16)).records[0]["messages"][0]["content"] == "na\u00efve"


def test_binary_and_compressed_files_are_named(tmp_path):
    packed = tmp_path / "train.jsonl"
    packed.write_bytes(gzip.compress(b'{"text": "x"}\n'))
    with pytest.raises(DataError, match="gzip-compressed"):
        data.load(recipe_for(), str(packed))
    blob = tmp_path / "blob.jsonl"
    blob.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(DataError, match="a binary file, not text"):
        data.load(recipe_for(), str(blob))


def test_row_size_and_depth_limits(tmp_path):
    deep = {"prompt": "p", "completion": "c", "extra": json.loads("[" * 80 + "]" * 80)}
    path = tmp_path / "l.jsonl"
    path.write_text(json.dumps({"prompt": "x" * 5000, "completion": "y"}) + "\n" + json.dumps(deep) + "\n"
                    + "[" * 100000 + "\n" + json.dumps({"prompt": "ok", "completion": "fine"}) + "\n")
    loaded = data.load(recipe_for("data.max_row_chars=2000"), str(path), on_invalid="skip")
    errors = [i.error for i in loaded.invalid]
    assert "over data.max_row_chars (2,000)" in errors[0]
    assert "nested more than data.max_depth (50)" in errors[1]
    assert len(loaded.records) == 1 and len(errors) == 3


def test_check_record_rejects_a_tool_result_without_a_call():
    record = convert_row({"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "r"},
                                       {"role": "assistant", "content": "a"}]}, "openai")
    with pytest.raises(RowError, match=r"messages\[1\] is a tool result with no tool call before it"):
        check_record(record)


def test_an_unreadable_file_is_named(tmp_path, monkeypatch):
    """chmod 000 does not stop root (CI), so the read itself is made to fail."""
    from tunesmith.data import readers

    path = write_jsonl(tmp_path / "locked.jsonl", [{"text": "x"}])

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(readers, "open", refuse, raising=False)
    with pytest.raises(DataError, match=r"locked.jsonl: cannot read it \(Permission denied\)"):
        data.load(recipe_for(), str(path))


def test_chatml_is_the_documented_default_for_a_model_without_a_template(tmp_path, tiny_model_dir):
    import shutil

    from tunesmith.models.chat import render_prompt
    from tunesmith.models.loading import load_tokenizer

    plain = tmp_path / "plain"
    shutil.copytree(tiny_model_dir, plain)
    config = json.loads((plain / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    assert not load_tokenizer(recipe_for(f"model.name={plain}").model).chat_template
    tokenizer = load_tokenizer(recipe_for(f"model.name={plain}", "model.chat_template=chatml").model)
    assert render_prompt(tokenizer, [{"role": "user", "content": "hi"}]) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_wiki_demo_txt_becomes_packed_blocks_with_eos_between_documents(tmp_path, tiny_model_dir):
    """LLaMA-Factory's raw-text file, one article a line: 4 documents, located at their lines;
    prepared and packed into train.max_length blocks, EOS after each document, every token in the
    loss, nothing cut off."""
    from tunesmith.models.chat import pack_documents
    from tunesmith.models.loading import load_tokenizer
    from tunesmith.train import tokenized_dataset

    recipe = recipe_for(f"model.name={tiny_model_dir}", f"data.train={REAL / 'wiki_demo.txt'}",
                        "data.text_separator=\\n", "data.val_fraction=0", "train.max_length=256",
                        f"output.dir={tmp_path}", "name=wiki")
    loaded = data.load(recipe, str(REAL / "wiki_demo.txt"))
    assert loaded.format == "text" and [r["meta"]["line"] for r in loaded.records] == [1, 2, 3, 4]
    assert loaded.records[0]["text"].startswith("Anarchism is a political philosophy")
    prepared = pipeline.prepare(recipe)
    train = prepared.splits["train"]
    tokenizer = load_tokenizer(recipe.model)
    rows = tokenized_dataset(tokenizer, train, recipe)
    blocks = [rows[i]["input_ids"] for i in range(len(rows))]
    assert all(len(b) == 256 for b in blocks[:-1]) and 1 < len(blocks[-1]) <= 256
    stream = [t for b in blocks for t in b]
    expected = sum(len(tokenizer(r["text"], add_special_tokens=False)["input_ids"]) + 1 for r in train)
    assert len(stream) == expected  # every token of every document, plus one EOS each
    assert stream.count(tokenizer.eos_token_id) == len(train) and stream[-1] == tokenizer.eos_token_id
    assert all(all(rows[i]["assistant_masks"]) for i in range(len(rows)))
    assert pack_documents(tokenizer, ["ab", "cd"], 4) == [
        {"input_ids": [*tokenizer("ab", add_special_tokens=False)["input_ids"], tokenizer.eos_token_id,
                       tokenizer("c", add_special_tokens=False)["input_ids"][0]], "assistant_masks": [1] * 4},
        {"input_ids": [*tokenizer("d", add_special_tokens=False)["input_ids"], tokenizer.eos_token_id],
         "assistant_masks": [1] * 2}]
