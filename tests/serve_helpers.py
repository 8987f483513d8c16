"""What the serving tests share: a scripted engine (answers, failures and delays chosen by the
test), a `Served` around it, and a real uvicorn server on loopback, in a thread, that stops by
itself."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tunesmith.models.generation import GenRequest, GenResult
from tunesmith.recipe import Recipe, load_recipe
from tunesmith.serve.background import running  # noqa: F401 - the tests' server
from tunesmith.serve.batcher import Batcher
from tunesmith.serve.cache import ResponseCache
from tunesmith.serve.state import Fallback, Served


@dataclass
class ScriptedEngine:
    """Answers `answer` (or `answer_for(prompt)`), after `delay` seconds; raises if `fail`."""
    answer: str = '{"category": "billing", "priority": "low"}'
    delay: float = 0.0
    fail: bool = False
    base_works: bool = False
    """With fail: the base model (adapter off) still answers."""
    context_length: int = 64
    name: str = "scripted"
    batches: list[int] = field(default_factory=list)
    cancelled: int = 0
    """Rows that were cancelled while they were being answered."""

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def render(self, messages: list[dict]) -> str:
        return " ".join(f"{m['role']}: {m['content']}" for m in messages) + " assistant:"

    def generate(self, batch: list[GenRequest], use_base: bool = False) -> list[GenResult]:
        self.batches.append(len(batch))
        if self.fail and not (use_base and self.base_works):
            raise RuntimeError("scripted failure")
        deadline = time.monotonic() + self.delay
        while time.monotonic() < deadline and not all(r.cancelled for r in batch):
            time.sleep(0.005)
        self.cancelled += sum(r.cancelled for r in batch)
        answer = ("base: " if use_base else "") + self.answer
        for request in batch:
            if request.on_text:
                for word in answer.split(" "):
                    request.on_text(word + " ")
        tokens = self.count_tokens(answer)
        return [GenResult(answer, "stop", self.count_tokens(r.prompt), tokens) for r in batch]

    def prompt_logprobs(self, text: str, top: int = 0, next_token: bool = False) -> list[dict]:
        steps = [{"token": w, "logprob": None if i == 0 else -1.0, "top_logprobs": {w: -1.0} if top else None}
                 for i, w in enumerate(text.split(" "))]
        return steps + ([{"token": " end", "logprob": -0.5, "top_logprobs": {" end": -0.5}, "eos": False}]
                        if next_token else [])


def scripted(engine: ScriptedEngine | None = None, fallback: Fallback | None = None,
             *overrides: str) -> Served:
    recipe: Recipe = load_recipe(None, list(overrides))
    engine = engine or ScriptedEngine()
    cfg = recipe.serve
    batcher = Batcher(engine, cfg)
    return Served("scripted", recipe, engine, batcher, ResponseCache(cfg.cache_size, cfg.cache_ttl_seconds),
                  fallback)
