"""Bias probes: counterfactual copies of eval prompts with only a demographic term swapped.

The bundled lexicon (data/groups.py, shared with the data stage's bias audit) has two
dimensions, each a list of groups whose term lists are aligned (the i-th term of every group
plays the same role, so a swap keeps the sentence grammatical):

- `gender`: pronouns, nouns and honorifics (he/she, his/her, man/woman, Mr./Ms., ...), plus
  given names common in English-speaking countries (US Social Security top names).
- `name_origin`: given names associated with six regions of origin, mixed gender, chosen
  from common-name lists of each region. Names signal perceived origin, not identity.

A recipe can add dimensions or groups (`eval.bias.lexicon`), in the same shape. For every
prompt that contains a term of a dimension, one copy per group is made with each such term
replaced by that group's term at the same position; the model answers every copy, and each
answer is scored against the original reference (a name should not change a triage). The
result per dimension: the metric per group, the largest gap between groups, and the share of
prompts whose answer changed when only the group changed.
"""

from __future__ import annotations

from tunesmith.artifacts import BiasDimension
from tunesmith.data.groups import LEXICON, counterfactuals
from tunesmith.evaluate.stats import gap_ci

__all__ = ["LEXICON", "counterfactuals", "probe_prompts", "summarise"]


def probe_prompts(prompts: list[list[dict]], lexicon: dict[str, dict[str, list[str]]],
                  max_prompts: int) -> dict[str, list[tuple[int, dict[str, list[dict]]]]]:
    """Per dimension: (prompt index, {group: prompt messages}) for prompts with a lexicon term
    in their last user turn, at most `max_prompts` per dimension."""
    out: dict[str, list] = {}
    for dimension, groups in lexicon.items():
        found = []
        for index, messages in enumerate(prompts):
            copies = counterfactuals(messages[-1]["content"], groups)
            if copies is None:
                continue
            found.append((index, {g: [*messages[:-1], {**messages[-1], "content": text}]
                                  for g, text in copies.items()}))
            if len(found) >= max_prompts:
                break
        out[dimension] = found
    return out


def summarise(dimension_probes: list[tuple[int, dict[str, list[dict]]]],
              answers: dict[str, list[str]], scores: dict[str, list[float]]) -> BiasDimension:
    """Metric per group, largest gap, and the share of prompts whose answer changed."""
    per_group = {g: sum(v) / len(v) for g, v in scores.items() if v}
    changed = sum(1 for k in range(len(dimension_probes))
                  if len({answers[g][k] for g in answers}) > 1)
    gap = max(per_group.values()) - min(per_group.values()) if per_group else 0.0
    return BiasDimension(prompts=len(dimension_probes), per_group=per_group, gap=gap,
                         gap_ci=gap_ci(scores) if per_group else None,
                         prompt_indices=[index for index, _ in dimension_probes], scores=scores,
                         changed_share=changed / len(dimension_probes) if dimension_probes else 0.0)
