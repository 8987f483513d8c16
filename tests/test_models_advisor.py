"""The base-model catalog and the advisor: the catalog's facts are complete, LoRA's parameter
count matches PEFT's on a real model, and the ranking picks a defensible first choice in three
stated scenarios (the logic is pinned, not the prose)."""

from __future__ import annotations

from collections import Counter

import pytest

from tunesmith.models.advisor import GB, Hardware, Need, rank
from tunesmith.models.catalog import CatalogEntry, find, load_catalog
from tunesmith.models.memory import lora_parameters, training_memory

LAPTOP = Hardware("cpu", 16, 8 * 35e9)
GPU_24GB = Hardware("cuda", 24, 120e12)


def test_the_catalog_covers_three_families_with_their_terms():
    entries = load_catalog()
    families = Counter(e.family for e in entries)
    assert len(entries) >= 30 and min(families.values()) >= 5 and set(families) == {
        "causal_lm", "encoder", "seq2seq"}
    assert len({e.hub_id for e in entries}) == len(entries)
    for e in entries:
        assert e.license and e.source.startswith("https://huggingface.co/" + e.hub_id)
        assert e.commercial != "conditions" or e.conditions  # conditions are spelled out
    assert find("embedded:smollm2-135m-instruct").hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert find("Qwen/Qwen2.5-3B-Instruct").commercial == "no"


def test_lora_parameters_match_peft_on_a_real_model():
    torch = pytest.importorskip("torch")
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=80, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=4, target_modules="all-linear"))
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    entry = CatalogEntry(hub_id="tiny", family="causal_lm", arch="llama", params=1e5, layers=3, hidden=32,
                         kv_dim=16, intermediate=80, vocab=64, context=128, languages=["en"],
                         license="Apache-2.0", gated=False)
    assert lora_parameters(entry, rank=4) == trained  # q, k, v, o, gate, up, down: r x (in + out)


def test_memory_grows_as_it_should():
    smol = find("HuggingFaceTB/SmolLM2-135M-Instruct")
    lora, full = training_memory(smol, method="lora"), training_memory(smol, method="full")
    assert full.optimizer == pytest.approx(8 * smol.params)
    assert lora.gradients == 4 * 4_884_480  # what PEFT reports for SmolLM2-135M, r=16, all-linear
    assert training_memory(smol, method="lora", batch=16).activations == pytest.approx(2 * lora.activations)
    assert training_memory(smol, method="lora", checkpointing=True).activations < lora.activations / 4


def test_classification_on_a_16gb_laptop():
    first, *rest = rank(Need("classification", memory_gb=16, commercial=True), LAPTOP)
    assert first.entry.family == "encoder" and first.fits and first.hours <= 8
    assert first.entry.commercial == "yes"
    assert all(c.entry.family == "encoder" for c in rest[:5])  # decoders come after every fitting encoder


def test_commercial_chat_assistant_on_one_24gb_gpu():
    choices = rank(Need("generation", memory_gb=24, commercial=True, tokens=5e6), GPU_24GB)
    first = choices[0]
    assert first.entry.family == "causal_lm" and first.fits and first.memory.total <= 24 * GB
    assert first.entry.commercial == "yes" and first.entry.params >= 7e9  # uses the GPU, license clean
    assert all(c.entry.commercial != "no" for c in choices)
    assert "Qwen/Qwen2.5-3B-Instruct" not in [c.entry.hub_id for c in choices]


def test_a_non_commercial_research_model_may_use_research_licenses():
    need = Need("generation", memory_gb=16, commercial=False)
    names = [c.entry.hub_id for c in rank(need, LAPTOP)]
    assert "Qwen/Qwen2.5-3B-Instruct" in names  # research-only licenses are fine for research
    first = rank(need, LAPTOP)[0]
    assert first.fits and first.hours <= 8 and first.entry.family == "causal_lm"


# --- license lineage: the base model's terms against model.intended_use -----------------------

def test_license_terms_come_from_the_catalog_then_the_models_card(tmp_path):
    from tunesmith.models.license import license_terms

    smol = license_terms("embedded:smollm2-135m-instruct")
    assert (smol.base_model, smol.license, smol.commercial) == ("HuggingFaceTB/SmolLM2-135M-Instruct",
                                                                 "Apache-2.0", "yes")
    assert license_terms("Qwen/Qwen2.5-3B-Instruct").commercial == "no"
    llama = license_terms("meta-llama/Llama-3.2-1B-Instruct")
    assert llama.commercial == "conditions" and llama.gated and "700 million" in llama.conditions
    (tmp_path / "README.md").write_text("---\nlicense: cc-by-nc-4.0\n---\n# a local model\n")
    local = license_terms(str(tmp_path))
    assert (local.license, local.commercial) == ("CC-BY-NC-4.0", "no")  # the table's spelling
    assert license_terms(str(tmp_path / "nowhere")).license == "unknown"


def test_commercial_use_of_a_non_commercial_base_stops_unless_accepted():
    from tunesmith.errors import ConfigError
    from tunesmith.models.license import check_use
    from tunesmith.recipe import ModelConfig

    research = "Qwen/Qwen2.5-3B-Instruct"
    with pytest.raises(ConfigError, match="not allow commercial use.*model.accept_license: qwen-research"):
        check_use(ModelConfig(name=research, intended_use="commercial"))
    assert "separate agreement" in check_use(ModelConfig(name=research, intended_use="commercial",
                                                          accept_license="qwen-research"))
    assert check_use(ModelConfig(name=research, intended_use="research")) is None
    assert check_use(ModelConfig(name=research)) is None  # nothing declared, nothing checked
    assert "with conditions" in check_use(ModelConfig(name="meta-llama/Llama-3.2-1B-Instruct",
                                                      intended_use="commercial"))
    assert check_use(ModelConfig(name="embedded:smollm2-135m-instruct", intended_use="commercial")) is None
