"""Shared fixtures: a tiny Llama with a character-level tokenizer, built locally (no downloads)."""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

import pytest


def _real_fixtures() -> Path:
    """../shared/fixtures/real beside the repo (as CI has it), or beside the repository a local
    clone came from (`git clone . $(mktemp -d)`), or where TUNESMITH_SHARED points."""
    import os
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    candidates = [Path(os.environ["TUNESMITH_SHARED"])] if os.environ.get("TUNESMITH_SHARED") else []
    candidates.append(repo.parent / "shared")
    origin = subprocess.run(["git", "-C", str(repo), "remote", "get-url", "origin"], capture_output=True,
                            text=True).stdout.strip()
    if origin and Path(origin).is_dir():
        candidates.append(Path(origin).resolve().parent / "shared")
    found = next((c for c in candidates if (c / "fixtures" / "real").is_dir()), candidates[0])
    return found / "fixtures" / "real"


REAL = _real_fixtures()

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]


def build_char_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = list(string.printable) + [c for c in "éèàüößçñ€£"]
    vocab = {tok: i for i, tok in enumerate(SPECIALS + sorted(set(chars)))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>",
        bos_token="<|im_start|>", eos_token="<|im_end|>",
    )
    tokenizer.chat_template = CHATML
    return tokenizer


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama, hidden size 16, saved as safetensors with its char tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = build_char_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_smol_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama, hidden size 64, with the embedded SmolLM2's real tokenizer (49,152 tokens,
    ChatML): a model whose tokenizer llama.cpp's converter knows, for the GGUF export."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tunesmith.models.loading import embedded_path

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(embedded_path("embedded:smollm2-135m-instruct"))
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
    )
    path = tmp_path_factory.mktemp("tiny-smol")
    LlamaForCausalLM(config).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory) -> Path:
    """A 2-layer BERT, hidden size 16, saved as safetensors with the char tokenizer: the shape of
    a BERT-style checkpoint (an encoder without a head; fine-tuning adds the classifier)."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    tokenizer = build_char_tokenizer()
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=512,
                        pad_token_id=tokenizer.pad_token_id)
    path = tmp_path_factory.mktemp("tiny-bert")
    BertModel(config).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory) -> Path:
    """A T5 with one encoder and one decoder layer, d_model 16, with the char tokenizer."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    tokenizer = build_char_tokenizer()
    config = T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=8, d_ff=32, num_layers=1,
                      num_decoder_layers=1, num_heads=2, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id)
    path = tmp_path_factory.mktemp("tiny-t5")
    T5ForConditionalGeneration(config).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def colour_codes(root: Path) -> dict[str, Path]:
    """Small Alpaca-format train/test files of a trivially learnable task (echo a colour code):
    48 training rows, 6 test prompts."""
    colours = ["red", "blue", "green", "black", "white", "pink"]
    train = [{"instruction": f"code for {c} #{i}", "output": c[:2].upper()}
             for i in range(8) for c in colours]
    test = [{"instruction": f"code for {c} now", "output": c[:2].upper()} for c in colours]
    return {"train": write_jsonl(root / "train.jsonl", train), "test": write_jsonl(root / "test.jsonl", test)}


@pytest.fixture
def chat_files(tmp_path) -> dict[str, Path]:
    return colour_codes(tmp_path)


PG_URL = os.environ.get("TUNESMITH_TEST_PG_URL")
needs_pg = pytest.mark.skipif(not PG_URL and not os.environ.get("CI"),
                              reason="needs PostgreSQL: scripts/postgres.sh starts one (CI runs it)")


@pytest.fixture
def empty_pg_database():
    """A database created for this test alone (no Optuna tables yet), dropped afterwards."""
    assert PG_URL, "CI must start PostgreSQL (scripts/postgres.sh) and export TUNESMITH_TEST_PG_URL"
    import uuid

    import psycopg

    name = f"tunesmith_test_{uuid.uuid4().hex[:10]}"
    admin = PG_URL.replace("postgresql://", "postgresql+psycopg://", 1).rsplit("/", 1)[0]
    with psycopg.connect(PG_URL, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    yield f"{admin}/{name}".replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(PG_URL, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
