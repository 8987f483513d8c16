"""Reasoning traces, first-class: read from reasoning parts, reasoning_content and <think> blocks;
in the loss, masked or dropped by train.reasoning; scored without it; served apart as
reasoning_content (streamed too)."""

from __future__ import annotations

import pytest

from conftest import REAL, build_char_tokenizer, write_jsonl
from tunesmith import data, pipeline
from tunesmith.data.formats import convert_row
from tunesmith.models.chat import answer_spans, tokenize_record
from tunesmith.recipe import load_recipe
from tunesmith.records import split_reasoning
from tunesmith.serve.reasoning import ReasoningStream, split_answer

ROW = {"messages": [{"role": "user", "content": "2+2?"},
                    {"role": "assistant", "content": "4", "reasoning_content": "two and two"}]}


def test_reasoning_is_read_from_parts_fields_and_think_blocks():
    parts = convert_row({"messages": [
        {"role": "user", "content": [{"type": "text", "value": "q"}]},
        {"role": "assistant", "content": [
            {"type": "reasoning", "value": "think"}, {"type": "text", "value": "a"},
            {"type": "tool_call", "value": '{"name": "f", "arguments": {"x": 1}}'}]}]}, "openai")
    assert parts["messages"][1] == {"role": "assistant", "content": "a", "reasoning": "think", "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]}
    assert convert_row(ROW, "openai")["messages"][1] == {"role": "assistant", "content": "4",
                                                         "reasoning": "two and two"}
    think = convert_row({"instruction": "2+2?", "output": "<think>\ntwo and two\n</think>\n\n4"}, "alpaca")
    assert think["messages"][1] == {"role": "assistant", "content": "4", "reasoning": "two and two"}
    sharegpt = convert_row({"conversations": [{"from": "human", "value": "q"},
                                              {"from": "gpt", "value": "<think>t</think>a"}]}, "sharegpt")
    assert sharegpt["messages"][1] == {"role": "assistant", "content": "a", "reasoning": "t"}
    assert split_reasoning("no thinking here") == (None, "no thinking here")
    assert split_reasoning("R1 style</think>\n\nanswer", opened=True) == ("R1 style", "answer")
    assert split_reasoning("R1 style</think>answer") == (None, "R1 style</think>answer")
    r1 = convert_row({"prompt": "q", "completion": "t</think>\n\na"}, "prompt_completion")  # R1's data
    assert r1["messages"][1] == {"role": "assistant", "content": "a", "reasoning": "t"}
    assert split_reasoning("<think>cut off while thin") == ("cut off while thin", "")
    with pytest.raises(ValueError, match="only assistant turns reason"):
        convert_row({"messages": [{"role": "user", "content": [{"type": "reasoning", "value": "x"}]},
                                  {"role": "assistant", "content": "a"}]}, "openai")


def test_the_public_reasoning_file_reads_every_row_with_its_reasoning_and_calls():
    loaded = data.load(load_recipe(None, []), str(REAL / "reason_tool_use_demo.jsonl"))
    assert loaded.format == "openai" and len(loaded.records) == 20 and not loaded.invalid
    assistant = [m for r in loaded.records for m in r["messages"] if m["role"] == "assistant"]
    assert all(m.get("reasoning") for m in assistant)  # every assistant turn of the file reasons
    calls = sum(len(m.get("tool_calls", [])) for m in assistant)
    raw = (REAL / "reason_tool_use_demo.jsonl").read_text()
    assert calls == raw.count('"type": "tool_call"')
    assert loaded.records[0]["messages"][2]["content"].startswith("I'm sorry, but the available tools")


def _in_loss(tokenizer, record, reasoning):
    row = tokenize_record(tokenizer, record, "assistant", 10**6, None, reasoning)
    return tokenizer.decode([t for t, m in zip(row["input_ids"], row["assistant_masks"], strict=True) if m])


def test_train_reasoning_decides_which_tokens_are_in_the_loss():
    tokenizer = build_char_tokenizer()  # ChatML without reasoning: the <think> fallback
    record = convert_row(ROW, "openai")
    text, _ = answer_spans(tokenizer, record["messages"])
    assert "<|im_start|>assistant\n<think>\ntwo and two\n</think>\n\n4<|im_end|>" in text
    assert _in_loss(tokenizer, record, "train") == "<think>\ntwo and two\n</think>\n\n4<|im_end|>\n"
    assert _in_loss(tokenizer, record, "mask") == "4<|im_end|>\n"
    masked = tokenize_record(tokenizer, record, "assistant", 10**6, None, "mask")
    assert "two and two" in tokenizer.decode(masked["input_ids"])  # in the context, out of the loss
    dropped = tokenize_record(tokenizer, record, "assistant", 10**6, None, "drop")
    assert "two and two" not in tokenizer.decode(dropped["input_ids"])
    assert _in_loss(tokenizer, record, "drop") == "4<|im_end|>\n"


def test_a_template_that_knows_reasoning_gets_reasoning_content():
    tokenizer = build_char_tokenizer()
    tokenizer.chat_template = (  # the shape of Qwen3's: reasoning_content inside <think>
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m.get('reasoning_content') %}"
        "<think>\n{{ m['reasoning_content'] }}\n</think>\n\n{% endif %}{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    record = convert_row(ROW, "openai")
    assert _in_loss(tokenizer, record, "mask") == "4<|im_end|>\n"
    assert _in_loss(tokenizer, record, "train").startswith("<think>\ntwo and two")


@pytest.mark.parametrize("reasoning", ["train", "mask", "drop"])
def test_the_reasoning_file_trains_two_steps(tmp_path, tiny_model_dir, reasoning):
    recipe = load_recipe(None, [f"model.name={tiny_model_dir}",
                                f"data.train={REAL / 'reason_tool_use_demo.jsonl'}", "data.max_rows=6",
                                "data.val_fraction=0", "data.filters.max_tokens=1000000",
                                "train.max_steps=2", "train.batch_size=2", "train.max_length=4096",
                                f"train.reasoning={reasoning}", f"output.dir={tmp_path}", "name=r"])
    result = pipeline.fine_tune(recipe)
    assert result.steps == 2 and result.train_loss is not None


def test_the_stream_splits_reasoning_from_content_at_any_piece_size():
    text = "<think>\nI add two and two.\n</think>\n\nThe answer is 4."
    for size in (1, 2, 3, 7, len(text)):
        stream, out = ReasoningStream(), []
        for i in range(0, len(text), size):
            out += stream.feed(text[i:i + size])
        out += stream.finish()
        assert "".join(t for f, t in out if f == "reasoning_content") == "I add two and two."
        assert "".join(t for f, t in out if f == "content") == "The answer is 4."
    plain = ReasoningStream()
    assert plain.feed("Hello <think>") + plain.finish() == [("content", "Hello <think>")]
    assert split_answer(text) == ("I add two and two.", "The answer is 4.")


def test_a_served_reasoning_run_returns_reasoning_content_apart(tmp_path, tiny_model_dir):
    """A tiny run trained to think (the colour) before it answers (the code): evaluation scores the
    answer without the reasoning, and the server returns the reasoning as reasoning_content."""
    from openai import OpenAI

    from serve_helpers import running
    from tunesmith.rundir import open_run
    from tunesmith.serve.app import create_app
    from tunesmith.serve.state import load_served

    colours = ["red", "blue", "green", "black", "white", "pink"]
    rows = [{"messages": [{"role": "user", "content": f"code for {c} #{i}"},
                          {"role": "assistant", "content": c[:2].upper(), "reasoning_content": c}]}
            for i in range(8) for c in colours]
    test = [{"messages": [{"role": "user", "content": f"code for {c} now"},
                          {"role": "assistant", "content": c[:2].upper()}]} for c in colours]
    train, held_out = write_jsonl(tmp_path / "t.jsonl", rows), write_jsonl(tmp_path / "e.jsonl", test)
    recipe = load_recipe(None, [f"model.name={tiny_model_dir}", f"data.train={train}",
                                f"data.test={held_out}",
                                "train.max_steps=150", "train.method=full",
                                "train.lr=0.01", "train.batch_size=4", "eval.max_new_tokens=24",
                                "eval.forgetting_probe=false", "eval.bias.enabled=false",
                                f"output.dir={tmp_path / 'runs'}", "name=thinks"])
    pipeline.fine_tune(recipe)
    outcome = pipeline.evaluate_run(recipe)
    predictions = [p for p in outcome.predictions if p.set == "test"]
    thought = [p for p in predictions if p.finetuned_reasoning is not None]
    assert thought, [p.finetuned_prediction for p in predictions]  # the run learnt to think first
    assert all("<think>" not in p.finetuned_prediction for p in predictions)  # scored without it
    stats = outcome.summary.sets["test"].reasoning["finetuned"]
    assert stats.answers_with_reasoning == len(thought) and stats.mean_reasoning_tokens > 0

    app = create_app(lambda: load_served(str(open_run(recipe).root)))
    with running(app) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        for row in predictions:
            messages = [{"role": "user", "content": row.prompt}]
            reply = client.chat.completions.create(model="thinks", messages=messages, temperature=0,
                                                   max_tokens=recipe.eval.max_new_tokens)
            message = reply.choices[0].message
            assert message.content == row.finetuned_prediction.strip()
            assert getattr(message, "reasoning_content", None) == row.finetuned_reasoning
            streamed = client.chat.completions.create(model="thinks", messages=messages, temperature=0,
                                                      max_tokens=recipe.eval.max_new_tokens, stream=True)
            pieces = {"content": "", "reasoning_content": ""}
            for chunk in streamed:
                if chunk.choices:
                    delta = chunk.choices[0].delta
                    pieces["content"] += delta.content or ""
                    pieces["reasoning_content"] += getattr(delta, "reasoning_content", None) or ""
            assert pieces["content"].strip() == row.finetuned_prediction.strip()
            assert pieces["reasoning_content"] == (row.finetuned_reasoning or "")
