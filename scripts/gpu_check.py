"""The GPU check (`make gpu-check`): what tunesmith's GPU defaults rest on, measured on the GPU at
hand, in one table. Self-contained: random-initialised Llama-shaped models built from configs (no
download), and only torch + transformers (+ peft) imported; tunesmith's own pieces (the fused
head, the memory estimator) are loaded by file, so neither pydantic nor TRL is needed. What a
missing package prevents (bitsandbytes: QLoRA; liger_kernel; flash_attn) is skipped and said.

    python scripts/gpu_check.py                # on a CUDA GPU: under 8 minutes on one H100
    python scripts/gpu_check.py --cpu          # the reduced mode CI runs, so that it cannot rot
    python scripts/gpu_check.py --json OUT     # also write the rows as JSON

Rows:
1. environment: torch, CUDA, the GPU, whether it computes bf16 natively (else tunesmith trains in
   fp16 with loss scaling), and which optional kernels are installed;
2. matmul peak: a large bf16 (GPU) / fp32 (CPU) matmul, the peak MFU is measured against;
3. fused head vs plain cross-entropy at a 128k vocabulary (GPU; 8k on the CPU): the loss and the
   gradients equal, time and peak memory of forward + backward; Liger's beside it when installed;
4. an fp16 LoRA step with loss scaling (the T4 / V100 path): finite loss, the scaler stepping
   (on the CPU, fp16 autocast and its GradScaler, so that the code runs in CI);
5. peak memory of an 8B-shaped LoRA step (and QLoRA, with bitsandbytes) against the estimator
   (models/memory.py), batch 1 x 2,048 tokens, activation checkpointing;
6. 40 steps of a 1B-shaped model (Llama-3.2-1B's shape): eager vs compiled, padded vs packed
   (tok/s, MFU against the measured matmul peak);
7. the export's dtype: a model saved as `tunesmith export` saves it reads back in bf16.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import io
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

SRC = Path(__file__).resolve().parents[1] / "src" / "tunesmith"


def _load(name: str, path: Path):
    """A tunesmith module by file, without its package's __init__ (which imports pydantic)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


fast_ops = _load("tunesmith_fast_ops", SRC / "train" / "fast_ops.py")
memory = _load("tunesmith_memory", SRC / "models" / "memory.py")


@dataclass
class Shape:
    """The architecture numbers the estimator reads (a catalog entry's, without pydantic)."""

    params: float
    layers: int
    hidden: int
    kv_dim: int
    intermediate: int
    vocab: int
    heads: int
    tied_embeddings: bool = False
    family: str = "causal_lm"

    @property
    def attention_heads(self) -> int:
        return self.heads


@dataclass
class Row:
    check: str
    result: str
    ok: bool | None = None
    """True / False where the row is a pass-fail check, None where it only measures."""
    data: dict = field(default_factory=dict)


class Check:
    def __init__(self, device: str, cpu_mode: bool) -> None:
        self.device, self.cpu_mode = device, cpu_mode
        self.rows: list[Row] = []
        self.peak_tflops = 0.0

    def add(self, check: str, result: str, ok: bool | None = None, **data) -> None:
        self.rows.append(Row(check, result, ok, data))
        print(f"[{'ok' if ok else 'FAIL' if ok is False else '--'}] {check}: {result}", flush=True)

    # ------------------------------------------------------------------ helpers
    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak(self) -> float | None:
        return torch.cuda.max_memory_allocated() / 2**30 if self.device == "cuda" else None

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.device == "cuda" else torch.float32

    def timed(self, fn, repeats: int) -> float:
        fn()
        self.sync()
        started = time.perf_counter()
        for _ in range(repeats):
            fn()
        self.sync()
        return (time.perf_counter() - started) / repeats


def _has(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def llama(shape: Shape, device: str, dtype: torch.dtype, attention: str = "sdpa"):
    """A random-initialised Llama of `shape` on `device`, in `dtype` (built there, not on the CPU)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden,
                         intermediate_size=shape.intermediate,
                         num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                         num_key_value_heads=shape.kv_dim // (shape.hidden // shape.heads),
                         max_position_embeddings=8192, tie_word_embeddings=shape.tied_embeddings,
                         attn_implementation=attention)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    return model


def lora(model, rank: int = 16):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear",
                                            task_type="CAUSAL_LM"))


def fused_step(model, ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """tunesmith's SFT step: hidden states, then the fused chunked head over every next token."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = inner.model(input_ids=ids, position_ids=position_ids, use_cache=False).last_hidden_state
    targets = ids[:, 1:].reshape(-1)
    states = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    loss = fast_ops.linear_cross_entropy(states, inner.lm_head.weight, targets) / targets.numel()
    loss.backward()
    return loss


# ---------------------------------------------------------------------- checks
def environment(check: Check) -> None:
    gpu = "none"
    native = False
    if check.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        gpu = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, sm_{props.major}{props.minor}"
    extras = ", ".join(f"{p} {'yes' if _has(p) else 'no'}"
                       for p in ("flash_attn", "liger_kernel", "bitsandbytes"))
    precision = ("bf16" if native else "fp16 + loss scaling") if check.device == "cuda" else "cpu"
    check.add("environment", f"torch {torch.__version__}, CUDA {torch.version.cuda}, {gpu}; "
              f"training precision {precision}; {extras}; python {platform.python_version()}", None,
              torch=torch.__version__, gpu=gpu, bf16_native=native)


def matmul_peak(check: Check) -> None:
    size = 8192 if check.device == "cuda" else 1024
    a = torch.randn(size, size, device=check.device, dtype=check.dtype)
    b = torch.randn(size, size, device=check.device, dtype=check.dtype)
    seconds = check.timed(lambda: a @ b, 20 if check.device == "cuda" else 3)
    check.peak_tflops = 2 * size**3 / seconds / 1e12
    check.add("matmul peak", f"{check.peak_tflops:.1f} TFLOP/s ({str(check.dtype).removeprefix('torch.')}, "
              f"{size}^3)", None, tflops=check.peak_tflops)


def fused_head(check: Check) -> None:
    vocab, hidden, rows = (128256, 4096, 8192) if check.device == "cuda" else (8192, 256, 512)
    torch.manual_seed(0)
    states = (torch.randn(rows, hidden, device=check.device) * 0.5).to(check.dtype)
    weight = (torch.randn(vocab, hidden, device=check.device) * 0.02).to(check.dtype)
    targets = torch.randint(0, vocab, (rows,), device=check.device)

    def plain():
        h, w = states.clone().requires_grad_(), weight.clone().requires_grad_()
        loss = torch.nn.functional.cross_entropy((h @ w.T).float(), targets, reduction="sum")
        loss.backward()
        return loss.detach(), h.grad, w.grad

    def fused():
        h, w = states.clone().requires_grad_(), weight.clone().requires_grad_()
        loss = fast_ops.linear_cross_entropy(h, w, targets)
        loss.backward()
        return loss.detach(), h.grad, w.grad

    variants = {"plain": plain, "fused": fused}
    if check.device == "cuda" and _has("liger_kernel"):
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        liger_loss = LigerFusedLinearCrossEntropyLoss(reduction="sum")

        def liger():
            h, w = states.clone().requires_grad_(), weight.clone().requires_grad_()
            loss = liger_loss(w, h, targets)
            loss.backward()
            return loss.detach(), h.grad, w.grad

        variants["liger"] = liger
    results = {}
    for name, fn in variants.items():
        check.reset_peak()
        out = fn()
        peak = check.peak()
        seconds = check.timed(fn, 5 if check.device == "cuda" else 2)
        results[name] = (out, seconds, peak)
    (loss0, gh0, gw0), t0, m0 = results["plain"]
    for name in [n for n in results if n != "plain"]:
        (loss, gh, gw), seconds, peak = results[name]
        loss_err = abs(float(loss) - float(loss0)) / abs(float(loss0))
        grad_err = max(float((gh.float() - gh0.float()).norm() / gh0.float().norm()),
                       float((gw.float() - gw0.float()).norm() / gw0.float().norm()))
        ok = loss_err < 1e-3 and grad_err < 2e-2
        memory_note = f", peak {peak:.2f} vs {m0:.2f} GiB" if peak is not None else ""
        chunk = fast_ops.chunk_rows(rows, vocab, hidden, check.device)
        check.add(f"{name} head vs plain CE (vocab {vocab:,}, {rows:,} rows)",
                  f"loss rel. err {loss_err:.1e}, grad rel. err {grad_err:.1e}; {seconds * 1e3:.1f} vs "
                  f"{t0 * 1e3:.1f} ms fwd+bwd{memory_note}; chunk {chunk} rows", ok, loss_err=loss_err,
                  grad_err=grad_err, ms=seconds * 1e3, plain_ms=t0 * 1e3,
                  peak_gib=peak, plain_peak_gib=m0)


def fp16_step(check: Check) -> None:
    device = check.device
    shape = Shape(0, 2, 512, 512, 1376, 32000, 8) if device == "cuda" else Shape(0, 1, 64, 64, 128, 512, 2)
    model = lora(llama(shape, device, torch.float32))  # fp32 master weights, as on a T4
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    scaler = torch.amp.GradScaler(device)
    ids = torch.randint(0, shape.vocab, (4, 256 if device == "cuda" else 32), device=device)
    losses = []
    for _ in range(3):
        with torch.autocast(device, dtype=torch.float16):
            loss = model(input_ids=ids, labels=ids).loss
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        losses.append(float(loss))
    ok = all(torch.isfinite(torch.tensor(losses))) and scaler.get_scale() > 0
    check.add("fp16 LoRA step + loss scaling", f"losses {', '.join(f'{x:.3f}' for x in losses)}, "
              f"scale {scaler.get_scale():.0f}", ok, losses=losses)
    del model, optimizer


def memory_vs_estimate(check: Check) -> None:
    if check.device == "cuda":
        shape = Shape(8.03e9, 32, 4096, 1024, 14336, 128256, 32)  # Llama-3.1-8B
        seq = 2048
    else:
        shape = Shape(0, 4, 256, 128, 688, 8192, 4)
        seq = 256
    methods = ["lora"] + (["qlora"] if _has("bitsandbytes") else [])
    if not _has("bitsandbytes"):
        check.add("QLoRA step vs estimate", "skipped: bitsandbytes is not installed", None)
    for method in methods:
        check.reset_peak()
        model = llama(shape, check.device, check.dtype)
        shape.params = sum(p.numel() for p in model.parameters())
        if method == "qlora":
            model = quantized(model, check.dtype)
        model = lora(model)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        ids = torch.randint(0, shape.vocab, (1, seq), device=check.device)
        for _ in range(2):
            fused_step(model, ids)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        step = memory.Step(method=method, seq=seq, batch=1,
                           precision="bf16" if check.device == "cuda" else "fp32",
                           device=check.device, checkpointing=True, fused_head=True,
                           chunk_elements=fast_ops.chunk_rows(seq, shape.vocab, shape.hidden, check.device)
                           * shape.vocab)
        estimate = memory.training_memory(shape, step)
        runtime = memory.RUNTIME_BYTES[check.device]
        if check.device == "cuda":
            measured = torch.cuda.max_memory_allocated() / 2**30
            ratio = (estimate.total - runtime) / 2**30 / measured
            check.add(f"{'8B' if check.device == 'cuda' else 'small'} {method} step vs estimate",
                      f"measured {measured:.2f} GiB allocated, estimated "
                      f"{(estimate.total - runtime) / 2**30:.2f} GiB (+{runtime / 2**30:.1f} runtime): "
                      f"{ratio:.2f}x", 0.75 <= ratio <= 1.25,
                      measured_gib=measured, estimate_gib=estimate.total / 2**30, ratio=ratio)
        else:
            check.add(f"small {method} step vs estimate",
                      f"estimated {estimate.total / 2**30:.2f} GiB; CPU peaks are measured by "
                      "tests/test_memory_estimate.py", None, estimate_gib=estimate.total / 2**30)
        del model, optimizer
        check.reset_peak()


def quantized(model, compute_dtype: torch.dtype):
    """The blocks' linear layers replaced by bitsandbytes NF4 with double quantization, as QLoRA's
    loading does (the embeddings and the head stay as they are)."""
    import bitsandbytes as bnb

    device = next(model.parameters()).device
    for module in list(model.model.layers.modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is torch.nn.Linear:
                layer = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                          compute_dtype=compute_dtype, quant_type="nf4",
                                          compress_statistics=True, device="meta")
                layer.weight = bnb.nn.Params4bit(child.weight.data.to("cpu", torch.float32),
                                                 requires_grad=False,
                                                 quant_type="nf4", compress_statistics=True)
                setattr(module, child_name, layer.to(device))  # quantized as it moves
    return model


def throughput(check: Check) -> None:
    if check.device == "cuda":
        shape = Shape(0, 16, 2048, 512, 8192, 128256, 32, True)  # Llama-3.2-1B
        steps, batch, longest, packed_length = 40, 8, 1024, 4096
    else:
        shape = Shape(0, 2, 128, 64, 344, 4096, 4, True)
        steps, batch, longest, packed_length = 4, 4, 128, 256
    attention = "flash_attention_2" if check.device == "cuda" and _has("flash_attn") else "sdpa"
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(longest // 8, longest + 1, (steps * batch,), generator=generator).tolist()
    for compiled in ([False, True] if check.device == "cuda" else [False]):
        for packed in (False, True):
            torch.manual_seed(0)
            model = lora(llama(shape, check.device, check.dtype, attention))
            model.train()
            if compiled:
                for layer in model.get_base_model().model.layers:
                    layer.compile(dynamic=True)
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
            batches = list(_batches(lengths, batch, packed, packed_length, shape.vocab, check.device))
            tokens = 0
            started = None
            for index, (ids, positions, real) in enumerate(batches):
                if index == 1:  # the first step compiles and selects kernels: not timed
                    check.sync()
                    started = time.perf_counter()
                fused_step(model, ids, positions)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if index >= 1:
                    tokens += real
            check.sync()
            seconds = time.perf_counter() - started
            rate = tokens / seconds
            params = sum(p.numel() for p in model.parameters())
            mfu = 4 * params * rate / 1e12 / check.peak_tflops if check.peak_tflops else 0.0
            layout = "packed" if packed else "padded"
            check.add(f"1B-shaped LoRA, {'compiled' if compiled else 'eager'}, {layout}"
                      if check.device == "cuda" else f"small LoRA, eager, {layout}",
                      f"{rate:,.0f} real tok/s over {len(batches) - 1} steps ({attention}); "
                      f"MFU {100 * mfu:.1f}%",
                      None, tokens_per_second=rate, mfu=mfu, compiled=compiled, packed=packed)
            del model, optimizer
            check.reset_peak()


def _batches(lengths, batch, packed, packed_length, vocab, device):
    """(input_ids, position_ids or None, real tokens) per step: rows padded to the longest of their
    batch, or packed (first fit) into rows of packed_length with positions restarting per row."""
    for start in range(0, len(lengths), batch):
        group = lengths[start:start + batch]
        if not packed:
            ids = torch.randint(1, vocab, (len(group), max(group)), device=device)
            yield ids, None, sum(group)
            continue
        rows: list[list[int]] = []
        for length in sorted(group, reverse=True):
            slot = next((r for r in rows if sum(r) + length <= packed_length), None)
            if slot is None:
                rows.append([length])
            else:
                slot.append(length)
        positions = [[p for length in row for p in range(length)] for row in rows]
        if importlib.util.find_spec("flash_attn") and device == "cuda":  # varlen: one flat row
            positions = [[p for row in positions for p in row]]
        width = max(len(p) for p in positions)
        ids = torch.randint(1, vocab, (len(positions), width), device=device)
        padded = [p + list(range(p[-1] + 1, p[-1] + 1 + width - len(p))) for p in positions]
        position_ids = torch.tensor(padded, device=device)
        yield ids, position_ids, sum(group)


def export_dtype(check: Check) -> None:
    from safetensors import safe_open

    model = llama(Shape(0, 1, 64, 64, 128, 256, 2), "cpu", torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        model.to(torch.bfloat16).save_pretrained(tmp, safe_serialization=True)  # as export_merged does
        with safe_open(str(Path(tmp) / "model.safetensors"), "pt") as weights:
            dtypes = {str(weights.get_slice(k).get_dtype()) for k in weights.keys()}  # noqa: SIM118
    check.add("export dtype", f"safetensors dtypes {sorted(dtypes)}", dtypes == {"BF16"},
              dtypes=sorted(dtypes))


def table(check: Check, seconds: float) -> str:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        return "\n".join(f"{r.check:50} {r.result}" for r in check.rows)
    mode = "CPU mode" if check.cpu_mode else check.device
    out = Table(title=f"tunesmith GPU check ({mode}, {seconds:.0f} s)")
    for column in ("check", "result", "ok"):
        out.add_column(column)
    for row in check.rows:
        out.add_row(row.check, row.result, {True: "yes", False: "NO", None: ""}[row.ok])
    console = Console(width=180, record=True, file=io.StringIO())
    console.print(out)
    return console.export_text()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="the reduced mode on the CPU (CI)")
    parser.add_argument("--json", help="also write the rows here as JSON")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    if device == "cpu" and not args.cpu:
        print("no CUDA GPU: running the reduced CPU mode (--cpu)")
    check = Check(device, device == "cpu")
    started = time.perf_counter()
    steps = (environment, matmul_peak, fused_head, fp16_step, memory_vs_estimate, throughput, export_dtype)
    for step in steps:
        try:
            step(check)
        except Exception as error:  # one broken check must not hide the others' rows
            check.add(step.__name__, f"error: {type(error).__name__}: {error}"[:300], False)
        with contextlib.suppress(Exception):
            check.reset_peak()
    print(table(check, time.perf_counter() - started))
    if args.json:
        Path(args.json).write_text(json.dumps([vars(r) for r in check.rows], indent=1, default=str))
    return 1 if any(r.ok is False for r in check.rows) else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
