"""Small parts of the training package: which parameters learn per stage, and modality-grouped batches."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_IMAGE_TOKEN_ID, tiny_llava_config, tiny_llava_model
from training.sampler import ModalityLengthGroupedSampler, modality_length_grouped_indices
from training.trainer import LlavaSFTTrainer, configure_trainable_parameters


def test_stage1_trains_only_the_projector():
    model = tiny_llava_model()
    counts = configure_trainable_parameters(model, stage=1)
    assert counts["projector"] > 0 and counts["vision_tower"] == counts["language_model"] == counts["lm_head"] == 0
    with pytest.raises(ValueError, match="projector only"):
        configure_trainable_parameters(model, stage=1, freeze_language_model=False)


def test_unfrozen_vision_tower_keeps_the_never_run_parameters_frozen_and_all_others_get_gradients():
    # vision_feature_layer -2: the last encoder layer and the final norm never run; DDP would wait for their
    # gradients forever, so they stay frozen while the rest of the tower learns.
    model = tiny_llava_model().train()
    configure_trainable_parameters(model, stage=2, freeze_vision_tower=False)
    last = model.config.vision_config.num_hidden_layers - 1
    trainable = {name for name, p in model.model.vision_tower.named_parameters() if p.requires_grad}
    assert not any(f"layers.{last}." in name or "post_layernorm" in name for name in trainable)
    assert any("layers.0." in name for name in trainable) and any("embeddings" in name for name in trainable)
    seq = tiny_llava_config().image_seq_length
    input_ids = torch.tensor([[1] + [TINY_IMAGE_TOKEN_ID] * seq + [5, 6, 7]])
    model(input_ids=input_ids, pixel_values=torch.randn(1, 3, 30, 30), labels=input_ids).loss.backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert missing == []


def test_modality_grouping_never_mixes_image_and_text_in_a_global_batch():
    lengths = [10, -5, 20, -7, 30, 12, -3, 18, 25, -9, 11, 14, -6, 16]  # negative: text-only
    generator = torch.Generator().manual_seed(0)
    order = modality_length_grouped_indices(lengths, batch_size=2, world_size=2, generator=generator)
    # 9 image samples -> 3 global batches of 4 (3 repeats), 5 text samples -> 2 (3 repeats)
    assert len(order) == len(ModalityLengthGroupedSampler(lengths, batch_size=2, world_size=2)) == 20
    assert set(order) == set(range(len(lengths)))
    batches = [order[i : i + 4] for i in range(0, len(order), 4)]
    assert all(len({lengths[i] > 0 for i in batch}) == 1 for batch in batches)
    for batch in batches:  # longest first inside a megabatch
        assert [abs(lengths[i]) for i in batch] == sorted((abs(lengths[i]) for i in batch), reverse=True)


def test_modality_sampler_is_reproducible_per_epoch_and_reshuffles_between_epochs():
    lengths = list(range(1, 41)) + [-n for n in range(1, 21)]
    sampler = ModalityLengthGroupedSampler(lengths, batch_size=4, seed=3)
    first = list(sampler)
    assert first == list(ModalityLengthGroupedSampler(lengths, batch_size=4, seed=3))
    sampler.set_epoch(1)
    assert list(sampler) != first and sorted(sampler) == sorted(first) == list(range(60))


def test_larger_megabatches_give_batches_of_similar_length():
    lengths = [int(n) for n in torch.randperm(200, generator=torch.Generator().manual_seed(1))[:64] + 1]

    def batches(mult: int) -> list[list[int]]:
        order = modality_length_grouped_indices(lengths, 4, 1, torch.Generator().manual_seed(0), megabatch_mult=mult)
        assert sorted(order) == list(range(64))
        return [order[i : i + 4] for i in range(0, 64, 4)]

    def padded_tokens(mult: int) -> int:
        return sum(4 * max(lengths[i] for i in batch) for batch in batches(mult))

    assert padded_tokens(1) > padded_tokens(4) > padded_tokens(16)
    # one megabatch spanning the data: the batches are consecutive runs of the globally sorted samples
    by_length = sorted(range(64), key=lambda i: -lengths[i])
    assert sorted(batches(16)) == sorted(by_length[i : i + 4] for i in range(0, 64, 4))


def test_megabatch_leftover_is_completed_to_whole_global_batches_of_one_modality():
    lengths = list(range(1, 11)) + [-1, -2, -3]  # 10 image samples, 3 text-only
    order = modality_length_grouped_indices(lengths, 2, 2, torch.Generator().manual_seed(0), megabatch_mult=2)
    # image: 8 + a leftover of 2 completed to 4 -> 12; text: 3 completed to 4
    assert len(order) == len(ModalityLengthGroupedSampler(lengths, 2, 2, megabatch_mult=2)) == 16
    batches = [order[i : i + 4] for i in range(0, 16, 4)]
    assert all(len({lengths[i] > 0 for i in batch}) == 1 for batch in batches)
    assert set(order) == set(range(13))
    with pytest.raises(ValueError, match="megabatch_mult"):
        modality_length_grouped_indices(lengths, 2, 2, torch.Generator(), megabatch_mult=0)
    with pytest.raises(ValueError, match="only applies with group_by_modality_length"):
        LlavaSFTTrainer(length_megabatch_mult=4)  # refused before anything is built
