"""Padding-free packing (`train.packing`): training rows concatenated into rows of up to
train.max_length tokens, each keeping its own positions and attention.

A packed row carries `position_ids` that restart at 0 for every original row. transformers reads
them: with flash-attention-2 (and the batch flattened into one row by the collator) its varlen
kernel attends within each original row; with SDPA or eager attention and no attention mask,
`masking_utils` builds the block-diagonal causal mask from the same positions. The loss stays on
the answer tokens only, and the first token of every original row is never a target (nothing of
its own row precedes it), so a packed batch computes the same per-example losses and gradients
as the rows unpacked (tests/test_packing.py).

Rows are placed first-fit in decreasing length order (deterministic): few bins, little padding
left at their ends.
"""

from __future__ import annotations

from typing import Any


def pack_rows(rows: list[dict[str, Any]], max_length: int) -> list[dict[str, Any]]:
    """`rows` (input_ids, assistant_masks, optionally a loss `weight`) packed into rows of at most
    `max_length` tokens: input_ids and assistant_masks concatenated, position_ids restarting per
    row, `token_weights` per token when the rows carry weights."""
    order = sorted(range(len(rows)), key=lambda i: (-len(rows[i]["input_ids"]), i))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        length = len(rows[i]["input_ids"])
        slot = next((b for b, free in enumerate(room) if free >= length), None)
        if slot is None:
            bins.append([i])
            room.append(max_length - length)
        else:
            bins[slot].append(i)
            room[slot] -= length
    weighted = any("weight" in row for row in rows)
    packed = []
    for members in bins:
        ids: list[int] = []
        mask: list[int] = []
        positions: list[int] = []
        weights: list[float] = []
        for i in members:
            row = rows[i]
            ids += row["input_ids"]
            mask += [0, *row["assistant_masks"][1:]]  # a row's first token is never a target
            positions += list(range(len(row["input_ids"])))
            weights += [float(row.get("weight", 1.0))] * len(row["input_ids"])
        packed.append({"input_ids": ids, "assistant_masks": mask, "position_ids": positions,
                       **({"token_weights": weights} if weighted else {})})
    return packed
