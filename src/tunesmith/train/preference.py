"""Preference training (`train.method: dpo | kto`): TRL's DPOTrainer and KTOTrainer, as they are,
on a LoRA adapter. The reference model is the same network with the adapter switched off (TRL
does this for PEFT models), so preference training costs no second copy of the weights.

Records come from the data stage as canonical preference rows: DPO pairs
`{"prompt": [messages], "chosen", "rejected"}` or KTO rows `{"prompt", "completion", "label"}`.
For KTO a DPO pair is two rows (chosen: desirable, rejected: not), as KTO's authors do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunesmith.errors import DataError
from tunesmith.models.chat import with_system
from tunesmith.recipe import Recipe
from tunesmith.train.backend import Fitted, TrainJob
from tunesmith.train.trainer import callbacks, train, trainer_args


def _answer(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def preference_rows(records: list[dict], recipe: Recipe) -> list[dict[str, Any]]:
    """TRL's conversational preference rows for train.method (dpo or kto)."""
    system, rows = recipe.data.system_prompt, []
    for record in records:
        prompt = with_system(record["prompt"], system)
        if recipe.train.method == "dpo":
            if "chosen" not in record:
                where = f"{record['meta'].get('source')}:{record['meta'].get('line')}"
                raise DataError(f"{where}: a KTO row (one labelled answer) cannot train DPO, which needs "
                                "a chosen and a rejected answer. Use train.method: kto.")
            rows.append({"prompt": prompt, "chosen": _answer(record["chosen"]),
                         "rejected": _answer(record["rejected"])})
        elif "chosen" in record:
            rows += [{"prompt": prompt, "completion": _answer(record["chosen"]), "label": True},
                     {"prompt": prompt, "completion": _answer(record["rejected"]), "label": False}]
        else:
            rows.append({"prompt": prompt, "completion": _answer(record["completion"]),
                         "label": bool(record["label"])})
    return rows


def preference_dataset(records: list[dict], recipe: Recipe) -> Any:
    import datasets

    return datasets.Dataset.from_list(preference_rows(records, recipe))


@dataclass
class PreferenceBackend:
    name: str = "trl-preference"

    def fit(self, job: TrainJob) -> Fitted:
        from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

        cfg = job.recipe.train
        config, trainer_class = (DPOConfig, DPOTrainer) if cfg.method == "dpo" else (KTOConfig, KTOTrainer)
        hooks, progress = callbacks(job)
        args = config(**trainer_args(job), max_length=cfg.max_length, beta=cfg.beta)
        trainer = trainer_class(model=job.model, args=args,
                                train_dataset=job.train_set, eval_dataset=job.val_set,
                                processing_class=job.tokenizer, callbacks=hooks)
        result = train(trainer, job, progress)
        if "ref" in getattr(result.model, "peft_config", {}):  # TRL's frozen copy for the reference
            result.model.delete_adapter("ref")
        return result
