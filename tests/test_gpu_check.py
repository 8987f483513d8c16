"""scripts/gpu_check.py (`make gpu-check`) in its reduced CPU mode, as CI runs it: every row is
there, and every pass-fail row passes (the fused head equals plain cross-entropy in loss and
gradients, an fp16 step with loss scaling stays finite, the export reads back in bf16)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


def test_the_gpu_check_runs_in_its_cpu_mode(tmp_path):
    out = tmp_path / "rows.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--cpu", "--json", str(out)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {row["check"]: row for row in json.loads(out.read_text())}
    names = list(rows)
    assert names[:2] == ["environment", "matmul peak"]
    head = next(row for name, row in rows.items() if name.startswith("fused head vs plain CE"))
    assert head["ok"] and head["data"]["loss_err"] < 1e-5 and head["data"]["grad_err"] < 1e-5  # fp32 here
    assert rows["fp16 LoRA step + loss scaling"]["ok"]
    assert rows["export dtype"]["ok"] and rows["export dtype"]["data"]["dtypes"] == ["BF16"]
    expected = {"small LoRA, eager, padded", "small LoRA, eager, packed", "small lora step vs estimate"}
    assert expected <= set(names)
    assert not any(row["ok"] is False for row in rows.values())
    assert "tunesmith GPU check (CPU mode" in done.stdout
