"""Collators: what is supervised in each stage, padding, and samples that are too long or have nothing to learn."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_IMAGE_TOKEN_ID, tiny_llava_config, tiny_llava_model
from processing.llava_data import load_llava_dataset, to_trl_dataset
from training.collators import (
    IGNORE_INDEX,
    LlavaDataCollator,
    UnusableSampleError,
    scan_samples,
    stage1_collator,
    stage2_collator,
)
from training_fixtures import caption_records, chat_records, tiny_processor, write_dataset, write_images


IMAGE_TOKENS = tiny_llava_config().image_seq_length


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("collator_data")
    paths = write_images(root / "images")
    captions = write_dataset(root / "captions.json", caption_records(paths, repeats=1))
    chats = write_dataset(root / "chats.json", chat_records(paths, repeats=1))
    load = lambda path: to_trl_dataset(load_llava_dataset(path, root / "images"), root / "images")  # noqa: E731
    return {"captions": load(captions), "chats": load(chats)}


def supervised_text(processor, batch, row: int) -> str:
    ids = batch["input_ids"][row]
    return processor.tokenizer.decode(ids[batch["labels"][row] != IGNORE_INDEX])


def test_stage1_supervises_only_the_caption_and_its_end(data):
    processor = tiny_processor()
    batch = stage1_collator(processor, max_length=512)([data["captions"][0], data["captions"][1]])
    assert supervised_text(processor, batch, 0) == "a red square\n"
    assert supervised_text(processor, batch, 1) == "a green square\n"
    # plain format: <bos>, the image tokens, the caption; the instruction text is not rendered at all
    row = batch["input_ids"][0][batch["attention_mask"][0] == 1]
    assert row[0].item() == processor.tokenizer.bos_token_id
    assert (row[1 : 1 + IMAGE_TOKENS] == TINY_IMAGE_TOKEN_ID).all()
    assert processor.tokenizer.decode(row[1 + IMAGE_TOKENS :]) == "a red square\n"
    assert batch["pixel_values"].shape == (2, 3, 30, 30)


def test_stage2_supervises_every_answer_and_its_stop_but_nothing_else(data):
    processor = tiny_processor("chatml")
    chats = data["chats"]
    text_only = next(i for i in range(len(chats)) if not chats[i]["images"])
    batch = stage2_collator(processor, max_length=512)([chats[0], chats[text_only]])
    assert supervised_text(processor, batch, 0) == "It is red.<|im_end|>Yes.<|im_end|>"
    assert supervised_text(processor, batch, 1) == "hi<|im_end|>"
    # right padding, never supervised; one image in the batch, its tokens in the first row only
    lengths = batch["attention_mask"].sum(1)
    assert lengths[1] < lengths[0]
    assert (batch["input_ids"][1, lengths[1] :] == processor.tokenizer.pad_token_id).all()
    assert (batch["labels"][1, lengths[1] :] == IGNORE_INDEX).all()
    assert (batch["input_ids"] == TINY_IMAGE_TOKEN_ID).sum(1).tolist() == [IMAGE_TOKENS, 0]
    assert batch["pixel_values"].shape[0] == 1
    # image tokens are never supervised
    assert not ((batch["input_ids"] == TINY_IMAGE_TOKEN_ID) & (batch["labels"] != IGNORE_INDEX)).any()


def test_stage2_with_the_papers_template(data):
    processor = tiny_processor("chatml")
    batch = stage2_collator(processor, max_length=1024, chat_template="paper")([data["chats"][0]])
    assert supervised_text(processor, batch, 0) == " It is red.### Yes.###"


def test_text_only_batch_has_no_pixel_values_and_the_model_accepts_it(data):
    processor = tiny_processor("chatml")
    text_only = [row for row in data["chats"] if not row["images"]]
    batch = stage2_collator(processor, max_length=512)(text_only)
    assert "pixel_values" not in batch
    assert torch.isfinite(tiny_llava_model()(**batch).loss)


def test_overlong_sample_is_refused_by_name_never_truncated(data):
    processor = tiny_processor("chatml")
    sample = data["chats"][0]
    length = len(stage2_collator(processor, max_length=None).encode(sample)["input_ids"])
    with pytest.raises(UnusableSampleError, match=rf"chat-red-0.*{length} tokens.*max_length={length - 1}"):
        stage2_collator(processor, max_length=length - 1)([sample])
    # exactly max_length is fine and kept whole
    batch = stage2_collator(processor, max_length=length)([sample])
    assert batch["input_ids"].shape[1] == length


def test_skip_policy_drops_and_reports_the_sample(data):
    processor = tiny_processor("chatml")
    chats = data["chats"]
    text_only = next(i for i in range(len(chats)) if not chats[i]["images"])
    collator = stage2_collator(processor, max_length=40, on_bad_sample="skip")
    batch = collator([chats[0], chats[text_only]])
    assert batch["input_ids"].shape[0] == 1 and "pixel_values" not in batch
    assert [sample.sample_id for sample in collator.skipped] == ["chat-red-0"]
    assert "max_length=40" in collator.skipped[0].reason


def test_sample_with_nothing_to_learn_is_never_silently_fully_masked(data):
    processor = tiny_processor("chatml")
    # the plain template drops user text: a conversation without an assistant turn has no supervised token
    sample = {"id": "no-answer", "images": [], "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    with pytest.raises(UnusableSampleError, match="no-answer.*no supervised token"):
        stage2_collator(processor, max_length=512)([sample])
    collator = stage2_collator(processor, max_length=512, on_bad_sample="skip")
    with pytest.raises(UnusableSampleError, match="Every sample of a batch"):
        collator([sample])
    assert collator.skipped[0].sample_id == "no-answer"


def test_template_without_generation_markers_is_refused():
    processor = tiny_processor("chatml")
    with pytest.raises(ValueError, match="generation"):
        LlavaDataCollator(processor, chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}")


def test_scan_measures_the_same_lengths_as_the_collator_without_decoding_images(data):
    processor = tiny_processor("chatml")
    collator = stage2_collator(processor, max_length=70)
    scans = scan_samples(data["chats"], collator)
    for position, scan in enumerate(scans):
        encoded = collator.encode(data["chats"][position])
        assert scan.length == len(encoded["input_ids"])
        assert scan.num_images == len(encoded["images"])
        assert (scan.problem is None) == (collator.problem(encoded) is None)
    assert any(scan.problem for scan in scans) and any(scan.problem is None for scan in scans)
