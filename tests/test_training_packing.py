"""Padding-free packing (`packing: true`): the same loss and gradients as padded batches, attention confined to
each sample, every sample whole and once, and both training stages running with it.

The references are not the packing code: the padded batch (itself held to transformers' built-in Llava in
`test_model_parity.py`), each sample run alone, and properties that follow from the definition of packing.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import yaml
from hypothesis import given
from hypothesis import strategies as st

from conftest import REPO_ROOT, TINY_IMAGE_TOKEN_ID, tiny_llava_model
from fuzz_strategies import fuzz_settings
from processing.llava_data import load_llava_dataset, to_trl_dataset
from training.arguments import ConfigError
from training.collators import IGNORE_INDEX, stage1_collator, stage2_collator
from training.packing import pack_rows, pack_samples
from training.train import parse_config, run
from training_fixtures import caption_records, save_tiny_model, tiny_processor, write_dataset, write_images


BUDGET = 400  # tokens per packed row: the mixed batch below needs 3 rows for its 8 samples


def mixed_records(image_paths: dict[str, str]) -> list[dict]:
    """Image chats and text-only chats of very different lengths (3 to 250 answer characters, one token each)."""
    specs = [("red", 4), (None, 180), ("green", 90), (None, 3), ("blue", 250), (None, 40), ("white", 12), (None, 120)]
    records = []
    for position, (colour, answer_length) in enumerate(specs):
        answer = "".join("abcdefghij"[(position + i) % 10] for i in range(answer_length))
        question = "What is it?\n<image>" if colour else "Say something."
        record = {
            "id": f"mixed-{position}",
            "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
        }
        if colour:
            record["image"] = image_paths[colour]
        records.append(record)
    return records


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("packing")
    paths = write_images(root / "images")
    write_dataset(root / "mixed.json", mixed_records(paths))
    write_dataset(root / "captions.json", caption_records(paths, repeats=2))
    save_tiny_model(root / "base")
    return root


def examples(workdir, name: str) -> list[dict]:
    dataset = to_trl_dataset(load_llava_dataset(workdir / f"{name}.json", workdir / "images"), workdir / "images")
    return [dataset[index] for index in range(len(dataset))]


def collators(stage: int, budget: int = BUDGET):
    """The stage's padded collator and the same collator packing."""
    processor = tiny_processor("chatml")
    make = stage1_collator if stage == 1 else stage2_collator
    return make(processor, max_length=512), make(processor, max_length=512, packing_max_tokens=budget)


def spans(batch, encoded: list[dict]) -> list[tuple[int, int, int]]:
    """`(row, start, end)` of each encoded sample in a packed batch, found by its tokens where the position ids
    restart, not by the packing code's own layout; asserts that every other block is padding."""
    found: dict[int, tuple[int, int, int]] = {}
    pad_id = tiny_processor().tokenizer.pad_token_id
    for row, positions in enumerate(batch["position_ids"].tolist()):
        starts = [column for column, position in enumerate(positions) if position == 0] + [len(positions)]
        for start, end in itertools.pairwise(starts):
            tokens = batch["input_ids"][row, start:end].tolist()
            matches = [index for index, sample in enumerate(encoded) if sample["input_ids"] == tokens]
            if matches:
                assert matches[0] not in found, f"sample {matches[0]} appears twice"
                found[matches[0]] = (row, start, end)
            else:  # the rest of the row: padding, never supervised
                assert set(tokens) == {pad_id} and (batch["labels"][row, start:end] == IGNORE_INDEX).all()
    assert sorted(found) == list(range(len(encoded))), "a sample is missing or split"
    return [found[index] for index in range(len(encoded))]


def loss_and_gradients(model, batch) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


# ----------------------------------------------------------------------------------------------------------------
# Exactness
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("data", ["stage1", "stage2", "every-token-supervised"])
def test_packed_loss_and_gradients_equal_the_padded_ones(workdir, data, attention):
    padded_collator, packed_collator = collators(1 if data == "stage1" else 2)
    batch_examples = examples(workdir, "captions" if data == "stage1" else "mixed")
    if data == "every-token-supervised":
        # the templates never supervise a sample's first token; here it is, so that nothing may predict it
        encoded = [padded_collator.encode(example) for example in batch_examples]
        for sample in encoded:
            sample["labels"] = [IGNORE_INDEX if t == TINY_IMAGE_TOKEN_ID else t for t in sample["input_ids"]]
        padded, packed = padded_collator.pad(encoded), packed_collator.pack(encoded)
    else:
        padded, packed = padded_collator(batch_examples), packed_collator(batch_examples)
    assert "attention_mask" not in packed
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]  # really packed: rows hold several samples
    assert packed["input_ids"].numel() < padded["input_ids"].numel()
    model = tiny_llava_model()
    model.set_attn_implementation(attention)
    padded_loss, padded_gradients = loss_and_gradients(model, padded)
    packed_loss, packed_gradients = loss_and_gradients(model, packed)
    assert abs(packed_loss - padded_loss) < 1e-5
    assert packed_gradients.keys() == padded_gradients.keys()
    for name, gradient in padded_gradients.items():
        assert (packed_gradients[name] - gradient).abs().max() < 1e-5, name


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_each_packed_sample_sees_only_itself(workdir, attention):
    """Each sample's logits in the packed batch equal its logits run alone; perturbing one sample's tokens and
    image changes its own logits and leaves every other sample's unchanged."""
    _, packed_collator = collators(2)
    batch_examples = examples(workdir, "mixed")
    encoded = [packed_collator.encode(example) for example in batch_examples]
    packed = packed_collator(batch_examples)
    layout = spans(packed, encoded)
    model = tiny_llava_model()
    model.set_attn_implementation(attention)
    with torch.no_grad():
        logits = model(**packed).logits
        for index, sample in enumerate(encoded):
            alone = {"input_ids": torch.tensor([sample["input_ids"]])}
            if sample["pixel_values"] is not None:
                alone["pixel_values"] = sample["pixel_values"]
            row, start, end = layout[index]
            assert (model(**alone).logits[0] - logits[row, start:end]).abs().max() < 1e-5, index

        target = next(index for index, sample in enumerate(encoded) if sample["pixel_values"] is not None)
        row, start, end = layout[target]
        perturbed = {name: value.clone() for name, value in packed.items()}
        text = perturbed["input_ids"][row, start:end] != TINY_IMAGE_TOKEN_ID
        perturbed["input_ids"][row, start:end][text] = 5  # one character everywhere but the image tokens
        # its slot in pixel_values: images come in the order of their tokens in the packed batch, row by row
        image = sum(encoded[i]["pixel_values"] is not None and layout[i][:2] < layout[target][:2] for i in range(len(encoded)))
        perturbed["pixel_values"][image] = torch.randn_like(perturbed["pixel_values"][image])
        changed = model(**perturbed).logits
    assert (changed[row, start:end] - logits[row, start:end]).abs().max() > 1e-3
    for index, (other_row, other_start, other_end) in enumerate(layout):
        if index != target:
            difference = changed[other_row, other_start:other_end] - logits[other_row, other_start:other_end]
            assert difference.abs().max() < 1e-6, index


def reference_flash_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """What flash attention computes, in plain torch: with the position ids of a one-row batch of several samples,
    attention within each sample (the varlen path, transformers' own detection and `cu_seqlens`); otherwise causal
    attention over whole rows, whatever the position ids say."""
    from transformers.modeling_flash_attention_utils import _is_packed_sequence, prepare_fa_kwargs_from_position_ids

    position_ids = kwargs.get("position_ids")
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    attend = torch.nn.functional.scaled_dot_product_attention
    if _is_packed_sequence(position_ids, query.shape[0]):
        (cu_seqlens, _), _ = prepare_fa_kwargs_from_position_ids(position_ids)
        bounds = cu_seqlens.tolist()
        output = torch.cat(
            [attend(query[..., a:b, :], key[..., a:b, :], value[..., a:b, :], is_causal=True, scale=scaling)
             for a, b in itertools.pairwise(bounds)],
            dim=2,
        )
    else:
        output = attend(query, key, value, is_causal=True, scale=scaling)
    return output.transpose(1, 2).contiguous(), None


def test_packed_rows_are_laid_end_to_end_for_flash_attention(workdir, monkeypatch):
    """Flash attention sees packed samples only in a one-row batch: the model lays a packed batch's rows end to
    end for it (checked with a stand-in for flash_attention_2 that computes what it does; none runs on CPU)."""
    from transformers import AttentionInterface

    monkeypatch.setitem(AttentionInterface._global_mapping, "flash_attention_2", reference_flash_attention)
    padded_collator, packed_collator = collators(2)
    batch_examples = examples(workdir, "mixed")
    packed = packed_collator(batch_examples)
    assert packed["input_ids"].shape[0] > 1
    model = tiny_llava_model()
    padded_loss, padded_gradients = loss_and_gradients(model, padded_collator(batch_examples))
    # set directly: `set_attn_implementation` would look for the flash-attn package
    model.model.language_model.config._attn_implementation = "flash_attention_2"
    packed_loss, packed_gradients = loss_and_gradients(model, packed)
    assert abs(packed_loss - padded_loss) < 1e-5
    for name, gradient in padded_gradients.items():
        assert (packed_gradients[name] - gradient).abs().max() < 1e-5, name


# ----------------------------------------------------------------------------------------------------------------
# Layout
# ----------------------------------------------------------------------------------------------------------------
def test_packed_batch_holds_every_sample_once_whole_with_its_own_positions_and_images(workdir):
    padded_collator, packed_collator = collators(2)
    batch_examples = examples(workdir, "mixed")
    encoded = [packed_collator.encode(example) for example in batch_examples]
    packed = packed_collator(batch_examples)
    layout = spans(packed, encoded)
    assert packed["input_ids"].shape[1] <= BUDGET
    images_in_order = []
    for index in sorted(range(len(encoded)), key=lambda i: layout[i][:2]):  # row by row, left to right
        row, start, end = layout[index]
        sample = encoded[index]
        assert packed["position_ids"][row, start:end].tolist() == list(range(end - start))
        # the first token is never a target (the previous sample's last token would predict it); the rest as padded
        assert packed["labels"][row, start].item() == IGNORE_INDEX
        assert packed["labels"][row, start + 1 : end].tolist() == sample["labels"][1:]
        if sample["pixel_values"] is not None:
            images_in_order.append(sample["pixel_values"])
    assert torch.equal(packed["pixel_values"], torch.cat(images_in_order))
    # image tokens are never supervised, as in every collated batch
    assert not ((packed["input_ids"] == TINY_IMAGE_TOKEN_ID) & (packed["labels"] != IGNORE_INDEX)).any()
    # the same supervised tokens as the padded batch (the loss's denominator)
    padded = padded_collator(batch_examples)
    assert (packed["labels"][:, 1:] != IGNORE_INDEX).sum() == (padded["labels"][:, 1:] != IGNORE_INDEX).sum()


def test_a_sample_longer_than_the_budget_gets_a_row_of_its_own(workdir):
    _, packed_collator = collators(2, budget=100)
    batch_examples = examples(workdir, "mixed")
    encoded = [packed_collator.encode(example) for example in batch_examples]
    packed = packed_collator(batch_examples)
    layout = spans(packed, encoded)
    for index, sample in enumerate(encoded):
        if len(sample["input_ids"]) > 100:
            row = layout[index][0]
            assert [other for other, (r, _, _) in enumerate(layout) if r == row] == [index]


@fuzz_settings(ci_examples=150)
@given(lengths=st.lists(st.integers(1, 300), min_size=1, max_size=24), budget=st.integers(1, 400))
def test_first_fit_decreasing_rows(lengths, budget):
    rows = pack_rows(lengths, budget)
    assert sorted(index for row in rows for index in row) == list(range(len(lengths)))
    loads = [sum(lengths[index] for index in row) for row in rows]
    for row, load in zip(rows, loads):
        assert load <= budget or len(row) == 1  # only a sample over the budget overflows, alone
        assert row == sorted(row)
    # first fit: no two rows could have been one (the later row's first sample did not fit in the earlier row)
    assert all(loads[i] + loads[j] > budget for i in range(len(rows)) for j in range(i + 1, len(rows)))


@fuzz_settings(ci_examples=60)
@given(
    samples=st.lists(st.tuples(st.integers(1, 40), st.booleans()), min_size=1, max_size=10),
    budget=st.integers(1, 80),
    multiple=st.sampled_from([None, 8]),
)
def test_pack_samples_keeps_every_token_label_and_image(samples, budget, multiple):
    encoded = []
    for index, (length, has_image) in enumerate(samples):
        encoded.append({
            "input_ids": [10 + index] * length,
            "labels": [100 + index] * length,
            "pixel_values": torch.full((1, 3, 2, 2), float(index)) if has_image else None,
        })
    batch, real = pack_samples(encoded, budget, pad_token_id=0, pad_to_multiple_of=multiple)
    if multiple:
        assert batch["input_ids"].shape[1] % multiple == 0
    assert int(real.sum()) == sum(length for length, _ in samples)
    assert (batch["labels"][~real] == IGNORE_INDEX).all() and (batch["input_ids"][~real] == 0).all()
    order = []
    for row in range(batch["input_ids"].shape[0]):
        positions = batch["position_ids"][row]
        starts = (positions == 0).nonzero().flatten().tolist()
        for start in starts:
            if not real[row, start]:
                assert not real[row, start:].any()  # padding only at the end of a row
                break
            index = int(batch["input_ids"][row, start]) - 10
            length = samples[index][0]
            assert batch["input_ids"][row, start : start + length].tolist() == [10 + index] * length
            assert positions[start : start + length].tolist() == list(range(length))
            assert batch["labels"][row, start : start + length].tolist() == [IGNORE_INDEX] + [100 + index] * (length - 1)
            order.append(index)
    assert sorted(order) == list(range(len(samples)))
    with_images = [index for index in order if samples[index][1]]
    if with_images:
        assert batch["pixel_values"][:, 0, 0, 0].tolist() == [float(index) for index in with_images]
    else:
        assert "pixel_values" not in batch


# ----------------------------------------------------------------------------------------------------------------
# Training runs
# ----------------------------------------------------------------------------------------------------------------
def tiny_config(workdir, stage: int, output: str, **overrides) -> dict:
    values = yaml.safe_load((REPO_ROOT / "training" / "configs" / f"tiny_stage{stage}.yaml").read_text())
    values.update(
        model_name_or_path=str(workdir / "base"),
        data_path=str(workdir / ("captions.json" if stage == 1 else "mixed.json")),
        image_root=str(workdir / "images"),
        output_dir=str(workdir / output),
        max_steps=3,
        **overrides,
    )
    return values


@pytest.mark.parametrize(
    ("stage", "options"),
    [
        (1, {}),
        (1, {"feature_cache_dir": "cache"}),
        (2, {"group_by_modality_length": True}),
        # no LoRA dropout: its random masks follow the batch's shape, which packing changes
        (2, {"use_peft": True, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "merge_lora": False}),
    ],
    ids=["stage1", "stage1-feature-cache", "stage2-modality-sampler", "stage2-lora"],
)
def test_training_with_packing_reports_the_losses_of_padded_training(workdir, stage, options):
    if "feature_cache_dir" in options:
        options = {**options, "feature_cache_dir": str(workdir / options["feature_cache_dir"])}
    name = f"stage{stage}-{'-'.join(options) or 'plain'}"
    padded = run(tiny_config(workdir, stage, f"{name}-padded", **options))
    packed = run(tiny_config(workdir, stage, f"{name}-packed", packing=True, packing_max_tokens=BUDGET, **options))
    assert len(packed.losses) == len(padded.losses) == 3
    assert packed.losses == pytest.approx(padded.losses, abs=1e-5)


def test_packing_options_are_checked():
    _, training_args = parse_config({"packing": True, "max_length": 300})
    assert training_args.packing_max_tokens == 300  # the budget defaults to max_length
    for bad, message in [
        ({"packing_max_tokens": 100}, "only applies with packing"),
        ({"packing": True, "packing_strategy": "wrapped"}, "never does"),
        ({"packing": True, "max_length": None}, "token budget"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_config(bad)
