"""What a report is built from: a run directory's recipe and typed artifacts, read once."""

from __future__ import annotations

from dataclasses import dataclass, field

from tunesmith.artifacts import (
    CurveSummary,
    DataReport,
    EvalSummary,
    JudgeGrade,
    Prediction,
    TrainSummary,
    TuneSummary,
    load_optional,
    load_rows,
)
from tunesmith.recipe import Recipe, load_recipe
from tunesmith.rundir import RunDir


@dataclass
class RunRecord:
    run_dir: RunDir
    recipe: Recipe
    data: DataReport | None
    train: TrainSummary | None
    evaluation: EvalSummary | None
    tune: TuneSummary | None
    _predictions: list[Prediction] | None = field(default=None, repr=False)

    @property
    def shown_dir(self) -> str:
        """The run's own directory (not a transaction's staging view of it)."""
        return str(self.run_dir.home or self.run_dir.root)

    def predictions(self) -> list[Prediction]:
        """eval/predictions.jsonl, read on first use (compare, review and the card share it)."""
        if self._predictions is None:
            path = self.run_dir.predictions
            self._predictions = load_rows(Prediction, path) if path.exists() else []
        return self._predictions

    @property
    def curve(self) -> CurveSummary | None:
        """eval/curve.json: `tunesmith curve`'s result, kept in the full-data run."""
        return load_optional(CurveSummary, self.run_dir.curve)

    def judge_grades(self) -> list[JudgeGrade]:
        """eval/judge.jsonl (eval.judge's grades per example); empty without a judge."""
        path = self.run_dir.judge_grades
        return load_rows(JudgeGrade, path) if path.exists() else []


def read_run(run_dir: RunDir) -> RunRecord:
    return RunRecord(run_dir, load_recipe(run_dir.recipe),
                     load_optional(DataReport, run_dir.data_report),
                     load_optional(TrainSummary, run_dir.train_summary),
                     load_optional(EvalSummary, run_dir.eval_summary),
                     load_optional(TuneSummary, run_dir.tune_summary))
