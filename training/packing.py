"""Padding-free packing: the samples of one batch laid end to end in as few rows as a token budget allows.

A padded batch costs `rows × longest sample`; in instruction data that mixes 60-token and 1,500-token samples
most of it is padding. A packed batch holds the same samples in rows of at most `budget` tokens (first-fit
decreasing), each sample whole, and computes the same loss:

- `position_ids` restart at 0 at every sample, as in a padded row, so rotary (or learnt) positions are the same;
- no `attention_mask`: with `position_ids` and no mask, transformers' mask builders (`masking_utils`:
  `find_packed_sequence_indices`, `packed_sequence_mask_function`) make sdpa, eager and flex attention
  block-diagonal causal, one block per sample; flash attention finds the blocks from the position ids in a
  one-row batch (`LlavaModel` lays a packed batch's rows end to end for it);
- the first token of every sample is not a target (-100): in a padded row it is never predicted, and in a packed
  row the previous sample's last token would otherwise learn to predict it;
- the rest of a row is padding, one more block of its own (positions from 0 again), never supervised;
- images stay where their tokens are and `pixel_values` follow the order of the image tokens in the packed batch,
  row by row, which is the order the model consumes image features in.

Packing acts within one batch of the sampler, so it composes unchanged with the modality-length sampler, the
stage-1 feature cache (which maps the batch's `pixel_values` in order), LoRA and DDP; the loss is the mean over
the batch's supervised tokens either way (`num_items_in_batch` counts the same tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

IGNORE_INDEX = -100


def pack_rows(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Sample indices per row, first-fit decreasing: each sample, longest first, goes into the first row with room
    for it, or opens a new row. A sample longer than `budget` gets a row of its own (never split). Within a row
    the samples keep their batch order."""
    if budget < 1:
        raise ValueError(f"the packing budget must be a positive number of tokens, got {budget}")
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):  # stable: equal lengths keep batch order
        row = next((r for r, free in enumerate(room) if lengths[index] <= free), None)
        if row is None:
            rows.append([])
            room.append(budget)
            row = len(rows) - 1
        rows[row].append(index)
        room[row] -= lengths[index]
    return [sorted(row) for row in rows]


def pack_samples(
    encoded: list[dict[str, Any]], budget: int, pad_token_id: int, pad_to_multiple_of: int | None = None
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Pack encoded samples (`input_ids`, `labels` lists, `pixel_values` or `None`) into a batch.

    Returns the batch (`input_ids`, `labels`, `position_ids`, and `pixel_values` when there are images) and a
    boolean `(rows, length)` mask of the positions that hold sample tokens (the rest is padding).
    """
    rows = pack_rows([len(sample["input_ids"]) for sample in encoded], budget)
    length = max(sum(len(encoded[index]["input_ids"]) for index in row) for row in rows)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    # The padding after the last sample counts from 0 as well: a block of its own, attending to nothing real.
    position_ids = torch.arange(length).repeat(len(rows), 1)
    real = torch.zeros((len(rows), length), dtype=torch.bool)
    pixel_values = []
    for row, indices in enumerate(rows):
        start = 0
        for index in indices:
            sample = encoded[index]
            end = start + len(sample["input_ids"])
            input_ids[row, start:end] = torch.tensor(sample["input_ids"], dtype=torch.long)
            labels[row, start:end] = torch.tensor(sample["labels"], dtype=torch.long)
            labels[row, start] = IGNORE_INDEX  # predicted by nothing in a padded row; by the previous sample here
            position_ids[row, start:end] = torch.arange(end - start)
            real[row, start:end] = True
            if sample["pixel_values"] is not None:
                pixel_values.append(sample["pixel_values"])
            start = end
        position_ids[row, start:] = torch.arange(length - start)
    batch = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
    if pixel_values:
        batch["pixel_values"] = torch.cat(pixel_values, dim=0)
    return batch, real


__all__ = ["pack_rows", "pack_samples"]
