"""Length grouping by modality: image samples and text-only samples in separate batches, similar lengths together.

transformers' `LengthGroupedSampler` groups by length only, so a batch can mix image and text-only samples; in
LLaVA's mixed instruction data that means batches whose vision tower runs on a fraction of the rows, and (under
DeepSpeed ZeRO-3) ranks that disagree on whether the tower runs at all, which hangs. This sampler never mixes
the two within a global batch (`batch_size × world_size` consecutive indices), and sorts each "megabatch" of
shuffled samples by length so that padding stays small, like the original LLaVA `group_by_modality_length`.
There a megabatch is one global batch, which balances lengths across ranks but leaves a single process's batches
as padded as random ones; `megabatch_mult` sorts that many global batches at a time, as transformers'
`LengthGroupedSampler` does (`mega_batch_mult`, up to 50), so that each batch holds samples of similar length.
Unlike the original, whose leftover samples of both modalities share a final mixed batch, each modality's
leftover megabatch is completed with samples of the same modality drawn again (at most `global batch - 1` repeats
per modality and epoch), so that every global batch is pure.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


def modality_length_grouped_indices(
    lengths: Sequence[int], batch_size: int, world_size: int, generator: torch.Generator, megabatch_mult: int = 1
) -> list[int]:
    """The indices of `range(len(lengths))`, shuffled and grouped as described in the module docstring.

    Args:
        lengths: token length per sample, positive for samples with images, negative for text-only ones.
        batch_size: per-device batch size.
        world_size: number of processes times gradient-accumulation steps (samples of one optimizer step).
        generator: seeded torch generator (the order depends only on it).
        megabatch_mult: global batches sorted by length together (1: the original LLaVA grouping).
    """
    if any(length == 0 for length in lengths):
        raise ValueError("Sample lengths must be non-zero (positive: with images, negative: text-only).")
    if megabatch_mult < 1:
        raise ValueError(f"megabatch_mult must be a positive number of global batches, got {megabatch_mult}.")
    global_batch = batch_size * world_size
    megabatch = global_batch * megabatch_mult
    image_indices = [index for index, length in enumerate(lengths) if length > 0]
    text_indices = [index for index, length in enumerate(lengths) if length < 0]

    def grouped(indices: list[int]) -> list[list[int]]:
        order = [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]
        batches = []
        for start in range(0, len(order), megabatch):
            group = order[start : start + megabatch]
            if len(group) % global_batch:
                group = _complete(group, order, -(-len(group) // global_batch) * global_batch)
            group = sorted(group, key=lambda index: -abs(lengths[index]))
            batches += [group[i : i + global_batch] for i in range(0, len(group), global_batch)]
        return batches

    batches = grouped(image_indices) + grouped(text_indices)
    batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return [index for batch in batches for index in batch]


def _complete(megabatch: list[int], order: list[int], size: int) -> list[int]:
    """Fill the last megabatch up to `size` (whole global batches) with the modality's samples, in shuffled order,
    cycling."""
    filler = [order[i % len(order)] for i in range(size - len(megabatch))]
    return megabatch + filler


def grouped_length(num_image: int, num_text: int, global_batch: int) -> int:
    """Number of indices `modality_length_grouped_indices` yields (each modality rounded up to whole batches)."""
    return sum(-(-count // global_batch) * global_batch for count in (num_image, num_text))


class ModalityLengthGroupedSampler(Sampler[int]):
    """A `Sampler` yielding `modality_length_grouped_indices`, reshuffled every epoch from `seed + epoch`."""

    def __init__(
        self, lengths: Sequence[int], batch_size: int, world_size: int = 1, seed: int = 0, megabatch_mult: int = 1
    ):
        self.lengths = list(lengths)
        self.megabatch_mult = megabatch_mult
        self.batch_size = batch_size
        self.world_size = world_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        num_image = sum(1 for length in self.lengths if length > 0)
        return grouped_length(num_image, len(self.lengths) - num_image, self.batch_size * self.world_size)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(
            modality_length_grouped_indices(
                self.lengths, self.batch_size, self.world_size, generator, megabatch_mult=self.megabatch_mult
            )
        )
