"""An LLM judge for answers exact match cannot judge (a summary, a helpful reply).

    eval:
      judge: {url: http://127.0.0.1:8001/v1, model: judge, rubric: "..."}

Any OpenAI-compatible endpoint (a hosted model, `tunesmith serve` of another run) grades each
fine-tuned and base answer against the reference on the recipe's rubric (one integer grade), and
with `pairwise` says which of the two answers is better, asked twice with the answers swapped:
a verdict that follows the position rather than the answer shows up as a flip, counts as a tie,
and is measured (`position_bias`: the share of verdicts that went to the answer shown first).
Scores get bootstrap CIs; requests and tokens are counted. How far the judge can be trusted on
this task is measured against people: `agreement()` compares its pass/fail with the labels of
`tunesmith review` (Cohen's kappa with a bootstrap CI), and `tunesmith report` shows it.

The key comes from the environment (eval.judge.api_key_env), never from the recipe or a log.
"""

from __future__ import annotations

import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tunesmith.artifacts import Interval, Judge, JudgeGrade, JudgeSet, Paired, Prediction
from tunesmith.errors import ConfigError
from tunesmith.evaluate.scoring import interval
from tunesmith.evaluate.stats import cohen_kappa, kappa_ci, paired_bootstrap
from tunesmith.explain import connection_problem

GRADE = ("{rubric}\n\nPROMPT:\n{prompt}\n\nREFERENCE:\n{reference}\n\nANSWER:\n{answer}\n\n"
         "Reply with the grade only: one integer from 1 to {scale}.")
PAIR = ("Which answer to the PROMPT is better, judged against the REFERENCE? {rubric}\n\nPROMPT:\n{prompt}"
        "\n\nREFERENCE:\n{reference}\n\nANSWER A:\n{first}\n\nANSWER B:\n{second}\n\n"
        "Reply with one letter only: A or B.")


class JudgeClient:
    """Chat completions on the judge's endpoint, greedy, counted."""

    def __init__(self, cfg: Any) -> None:
        import httpx

        key = os.environ.get(cfg.api_key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.cfg = cfg
        self.client = httpx.Client(base_url=cfg.url.rstrip("/"), headers=headers,
                                   timeout=httpx.Timeout(cfg.timeout_seconds))
        self.requests = self.prompt_tokens = self.completion_tokens = 0
        self._lock = threading.Lock()

    def ask(self, content: str) -> str:
        import httpx

        body = {"model": self.cfg.model, "messages": [{"role": "user", "content": content}],
                "temperature": 0, "max_tokens": self.cfg.max_tokens}
        try:
            response = self.client.post("/chat/completions", json=body)
        except httpx.HTTPError as error:
            raise unreachable(self.cfg, error) from None
        if response.status_code != 200:
            raise ConfigError(f"eval.judge.url {self.cfg.url}: the judge answered {response.status_code}: "
                              f"{response.text[:200]} (a key goes in ${self.cfg.api_key_env})")
        data = response.json()
        usage = data.get("usage") or {}
        with self._lock:
            self.requests += 1
            self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            self.completion_tokens += int(usage.get("completion_tokens") or 0)
        return data["choices"][0]["message"].get("content") or ""

    def close(self) -> None:
        self.client.close()


def check_reachable(cfg: Any) -> None:
    """Before any answer is generated: the judge's endpoint accepts connections (any HTTP answer
    to GET /models will do; a refused connection or a timeout is the recipe's error)."""
    import httpx

    try:
        httpx.get(cfg.url.rstrip("/") + "/models", timeout=min(cfg.timeout_seconds, 10.0))
    except httpx.HTTPError as error:
        raise unreachable(cfg, error) from None


def unreachable(cfg: Any, error: Exception) -> ConfigError:
    return ConfigError(f"eval.judge.url {cfg.url}: {connection_problem(error)}. Start the judge there, "
                       "or fix the URL (the base of an OpenAI-compatible API, ending /v1).")


def parse_grade(text: str, scale: int) -> int | None:
    """The first integer of the reply within 1..scale; None when there is none."""
    for found in re.findall(r"\d+", text):
        if 1 <= int(found) <= scale:
            return int(found)
    return None


def parse_verdict(text: str) -> str | None:
    """A or B: the first standalone letter of the reply ('Answer B', 'B.', 'b')."""
    found = re.search(r"\b([AB])\b", text.strip().upper())
    return found.group(1) if found else None


def judge_example(client: JudgeClient, row: Prediction) -> JudgeGrade:
    cfg = client.cfg

    def grade(answer: str) -> int | None:
        asked = GRADE.format(rubric=cfg.rubric, prompt=row.prompt, reference=row.reference, answer=answer,
                             scale=cfg.scale)
        return parse_grade(client.ask(asked), cfg.scale)

    result = JudgeGrade(id=f"{row.set}:{row.index}", finetuned=grade(row.finetuned_prediction))
    result.unparsed = int(result.finetuned is None)
    if row.base_prediction is None:
        return result
    result.base = grade(row.base_prediction)
    result.unparsed += int(result.base is None)
    if cfg.pairwise:
        verdicts = []
        for first, second in ((row.finetuned_prediction, row.base_prediction),
                              (row.base_prediction, row.finetuned_prediction)):
            verdicts.append(parse_verdict(client.ask(PAIR.format(
                rubric=cfg.rubric, prompt=row.prompt, reference=row.reference, first=first, second=second))))
        result.unparsed += verdicts.count(None)
        if None not in verdicts:
            tuned_wins = (verdicts[0] == "A") + (verdicts[1] == "B")
            result.preference = tuned_wins / 2  # both orders: 1 or 0; a flip with the order: 0.5
            result.first_position_wins = verdicts.count("A")
    return result


def summarise_set(grades: list[JudgeGrade], pass_grade: int) -> JudgeSet:
    tuned = [g.finetuned for g in grades if g.finetuned is not None]
    both = [(g.base, g.finetuned) for g in grades if g.base is not None and g.finetuned is not None]
    preferences = [g.preference for g in grades if g.preference is not None]
    nothing = Interval(value=0, ci_low=0, ci_high=0)  # every reply unparsed: counted in `unparsed`
    result = JudgeSet(examples=len(grades), finetuned=interval(tuned) or nothing,
                      finetuned_pass=interval([float(g >= pass_grade) for g in tuned]) or nothing,
                      unparsed=sum(g.unparsed for g in grades))
    base = [g.base for g in grades if g.base is not None]
    if base:
        result.base = interval(base)
        result.base_pass = interval([float(g >= pass_grade) for g in base])
    if both:
        result.paired = Paired.model_validate(paired_bootstrap([b for b, _ in both], [t for _, t in both]))
    if preferences:
        result.win_rate = interval(preferences)
        judged = [g for g in grades if g.preference is not None]
        result.position_bias = sum(g.first_position_wins for g in judged) / (2 * len(judged))
    return result


def run(cfg: Any, predictions: list[Prediction]) -> tuple[Judge, list[JudgeGrade]]:
    """Grade (and compare) the answers of eval.judge.sets with the judge at eval.judge.url."""
    client = JudgeClient(cfg)
    summary = Judge(url=cfg.url, model=cfg.model, scale=cfg.scale, pass_grade=cfg.pass_grade,
                    min_kappa=cfg.min_kappa)
    every: list[JudgeGrade] = []
    try:
        for name in cfg.sets:
            rows = sorted((p for p in predictions if p.set == name), key=lambda p: p.index)
            rows = rows[: cfg.max_examples]
            if not rows:
                continue
            with ThreadPoolExecutor(cfg.concurrency) as pool:
                grades = list(pool.map(lambda row: judge_example(client, row), rows))
            summary.sets[name] = summarise_set(grades, cfg.pass_grade)
            every += grades
    finally:
        client.close()
    summary.requests, summary.prompt_tokens = client.requests, client.prompt_tokens
    summary.completion_tokens = client.completion_tokens
    return summary, every


def agreement(judge: Judge, grades: list[JudgeGrade], reviews: dict[str, dict]) -> dict[str, Any] | None:
    """The judge's pass/fail against people's labels of the same fine-tuned answers (correct vs
    wrong or harmful): agreement, Cohen's kappa and its CI, and whether it reaches min_kappa."""
    by_id = {g.id: g for g in grades if g.finetuned is not None}
    pairs = [(r["label"] == "correct", by_id[i].finetuned >= judge.pass_grade)
             for i, r in sorted(reviews.items()) if i in by_id]
    if not pairs:
        return None
    kappa = cohen_kappa(pairs)
    return {"compared": len(pairs), "agreement": sum(a == b for a, b in pairs) / len(pairs), "kappa": kappa,
            "kappa_ci": kappa_ci(pairs), "min_kappa": judge.min_kappa,
            "trusted": kappa is not None and kappa >= judge.min_kappa}
